"""Write a made-up set of tabular tasks with shared structure, in both layouts ``data=tabular``
reads, so the tabular presets can be tried (and benchmarked) before pointing them at real data.

The tasks are the synthetic family's (``pipeline/data/synthetic.py``, the same functions and
settings): a shared nonlinear map ``phi`` and prior rule ``W0``, each task its own rule
``W_t = W0 + task_diversity * E_t`` and balanced classes. ``--seed S`` draws ``phi`` and ``W0``
as ``data=synthetic`` does with ``seed=S`` (the same family, not just the same settings; the
first tasks are its first training tasks), so a meta-learner should gain on these files what it
gains on ``data=synthetic``. ``--task-type regression`` writes
``target = phi(x) . w_t`` (first column of the task's rule) plus ``--noise`` Gaussian noise.

    python scripts/make_fake_tabular.py OUT [--tasks 300] [--samples-per-task 60]
        [--features 20] [--classes 3] [--latent-dim 8] [--map-scale 1.5]
        [--task-diversity 1.0] [--label-noise 0] [--format csv|parquet] [--seed 0]
        [--task-type classification|regression] [--noise 0.1] [--layouts long per_task]

Writes ``OUT/long.<format>`` (columns ``task, x00.., target``) and ``OUT/per_task/<task>.<format>``
(columns ``x00.., target``). Then, e.g.:

    python -m pipeline experiment=tabular_maml data.root=OUT/long.csv
    python -m pipeline experiment=tabular_maml data.layout=per_task data.root=OUT/per_task
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import stream_rng, synthetic

TASK, TARGET = "task", "target"


def make_tasks(args: argparse.Namespace) -> list[pd.DataFrame]:
    """One frame per task (features ``x00..``, ``target``), drawn from ``args.seed``."""
    cfg = {"samples_per_task": args.samples_per_task, "num_features": args.features,
           "num_classes": args.classes, "latent_dim": args.latent_dim,
           "map_scale": args.map_scale, "task_diversity": args.task_diversity,
           "label_noise": args.label_noise}
    rng = stream_rng(args.seed, "data")  # data=synthetic's stream: the same phi and W0
    phi, w0 = synthetic.draw_family(cfg, rng)
    columns = [f"x{i:02d}" for i in range(args.features)]
    if args.task_type == "classification":
        xs, ys = synthetic.draw_tasks(cfg, rng, phi, w0, args.tasks)
    else:
        xs = rng.standard_normal((args.tasks, args.samples_per_task, args.features))
        w = w0[:, 0] + args.task_diversity * rng.standard_normal((args.tasks, args.latent_dim))
        ys = np.einsum("tnl,tl->tn", phi(xs), w)
        ys = ys + args.noise * rng.standard_normal(ys.shape)
    frames = []
    for x, y in zip(xs, ys, strict=True):
        frame = pd.DataFrame(np.round(x, 6), columns=columns)
        frame[TARGET] = y if args.task_type == "classification" else np.round(y, 6)
        frames.append(frame)
    return frames


def write(frames: list[pd.DataFrame], out: Path, fmt: str, layouts: list[str]) -> list[Path]:
    names = [f"task_{i:04d}" for i in range(len(frames))]
    save = (lambda f, p: f.to_csv(p, index=False)) if fmt == "csv" else (
        lambda f, p: f.to_parquet(p, index=False))
    written = []
    if "long" in layouts:
        long = pd.concat([f.assign(**{TASK: n}) for f, n in zip(frames, names, strict=True)],
                         ignore_index=True)
        long = long[[TASK, *frames[0].columns]]
        path = out / f"long.{fmt}"
        out.mkdir(parents=True, exist_ok=True)
        save(long, path)
        written.append(path)
    if "per_task" in layouts:
        folder = out / "per_task"
        folder.mkdir(parents=True, exist_ok=True)
        for f, n in zip(frames, names, strict=True):
            save(f, folder / f"{n}.{fmt}")
        written.append(folder)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--samples-per-task", type=int, default=60)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--map-scale", type=float, default=1.5)
    p.add_argument("--task-diversity", type=float, default=1.0)
    p.add_argument("--label-noise", type=float, default=0.0)
    p.add_argument("--task-type", choices=("classification", "regression"),
                   default="classification")
    p.add_argument("--noise", type=float, default=0.1, help="regression target noise")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--layouts", nargs="+", choices=("long", "per_task"),
                   default=["long", "per_task"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tasks < 1 or args.samples_per_task < 2 * args.classes:
        p.error("--tasks must be >= 1 and --samples-per-task >= 2 * --classes")
    for path in write(make_tasks(args), args.out, args.format, args.layouts):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
