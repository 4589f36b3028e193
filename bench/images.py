"""Episode throughput on 84x84x3 images (``--size``): ProtoNets and MAML with conv4 and
ResNet-12, to size real miniImageNet runs on this machine.

Each case builds the algorithm as a run would (``runner.build``, one intra-op thread) on a
generated 84x84 collection (``scripts/make_fake_fewshot.py``: real PNG files through
``data=images``), then times meta-training iterations and meta-test episodes after a warm-up
that traces the compiled functions (its time is reported apart). Prints one Markdown row per
case.

    PYTHONPATH=$PWD .venv/bin/python -m bench.images [CASE ...] [--iterations 5]
        [--test-episodes 20] [--size 84] [--threads 1] [--json results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import config, machine, tasks_of
from pipeline import PROJECT_ROOT
from pipeline.run import runtime
from pipeline.run.runner import build
from pipeline.stages import meta_test

#: name -> (what, overrides). Test episodes: 5-way 1-shot, 15 queries per class (80 images).
CASES = {
    "protonet-conv4-30way": (
        "ProtoNets, conv4 64, training on the preset's 30-way 1-shot 15-query episodes",
        ["algorithm=protonet", "model=conv4", "model.batch_norm=running",
         "data.train_num_classes=30", "meta_train.meta_batch_size=1"]),
    "protonet-conv4": (
        "ProtoNets, conv4 64, 5-way 1-shot 15-query training episodes",
        ["algorithm=protonet", "model=conv4", "model.batch_norm=running",
         "meta_train.meta_batch_size=1"]),
    "protonet-resnet12": (
        "ProtoNets, ResNet-12, 5-way 1-shot 15-query training episodes",
        ["algorithm=protonet", "model=resnet12", "model.batch_norm=running",
         "meta_train.meta_batch_size=1"]),
    "maml-conv4": (
        "MAML (the preset): conv4 32, second order, 5 inner steps (10 at test), meta-batch 4",
        ["algorithm=maml", "model=conv4", "model.filters=32", "algorithm.inner_lr=0.01",
         "algorithm.inner_steps=5", "algorithm.test_inner_steps=10",
         "meta_train.meta_batch_size=4"]),
    "maml-resnet12": (
        "MAML, ResNet-12, second order, 1 inner step (1 at test), meta-batch 1",
        ["algorithm=maml", "model=resnet12", "algorithm.inner_lr=0.01", "algorithm.inner_steps=1",
         "algorithm.test_inner_steps=1", "meta_train.meta_batch_size=1"]),
    "fomaml-resnet12": (
        "FOMAML, ResNet-12, 1 inner step (1 at test), meta-batch 1",
        ["algorithm=fomaml", "model=resnet12", "algorithm.inner_lr=0.01",
         "algorithm.inner_steps=1", "algorithm.test_inner_steps=1",
         "meta_train.meta_batch_size=1"]),
}


def collection(root: Path, size: int = 84) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_fake_fewshot", PROJECT_ROOT / "scripts" / "make_fake_fewshot.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    return fake.write(root, "folders", classes=(30, 5, 5), per_class=20, size=size)


def run(name: str, root: Path, iterations: int, test_episodes: int, batch: int,
        threads: int = 1, size: int = 84) -> dict:
    what, overrides = CASES[name]
    cfg = config("data=images", f"data.root={root}", f"paths.data_dir={root}/data",
                 f"data.image_size={size}",
                 f"runtime.intra_op_threads={threads}",
                 "data.num_val_tasks=0", f"data.num_test_tasks={test_episodes}",
                 f"meta_train.iterations={1 + iterations}", *overrides)
    runtime.setup(cfg.runtime, cfg.seed)
    tasks = tasks_of(cfg)
    algo = build(cfg, tasks)
    rng = np.random.default_rng(0)
    times = []
    start = time.perf_counter()
    for _ in algo.meta_train(tasks.train, cfg.meta_train, rng):  # one iteration per item
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    warm = tasks.test.take(slice(0, batch))
    start = time.perf_counter()
    meta_test.run(algo, warm, batch, quiet=True)  # traces adaptation and scoring
    test_trace = time.perf_counter() - start
    start = time.perf_counter()
    meta_test.run(algo, tasks.test, batch, quiet=True)
    test_s = time.perf_counter() - start
    episodes = cfg.meta_train.meta_batch_size
    train_s = float(np.mean(times[1:]))
    return {"name": name, "what": what, "train_trace_s": times[0], "train_s_per_it": train_s,
            "train_episodes_per_s": episodes / train_s, "meta_batch": episodes,
            "test_trace_s": test_trace, "test_episodes_per_s": test_episodes / test_s,
            "test_episodes": test_episodes, "params": algo.model.count_params(),
            "threads": threads, "size": size, "load": os.getloadavg()}


def row(r: dict) -> str:
    return (f"| {r['what']} | {r['params'] / 1e6:.2f} M | {1000 * r['train_s_per_it']:,.0f} | "
            f"{r['train_episodes_per_s']:.2f} | {r['test_episodes_per_s']:.2f} | "
            f"{r['train_trace_s']:.0f} / {r['test_trace_s']:.0f} | "
            f"{r['load'][0]:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="*", default=list(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--iterations", type=int, default=5, help="timed meta-iterations a case")
    p.add_argument("--test-episodes", type=int, default=20)
    p.add_argument("--batch", type=int, default=10, help="test episodes a compiled call")
    p.add_argument("--size", type=int, default=84, help="image side (84: miniImageNet)")
    p.add_argument("--threads", type=int, default=1,
                   help="runtime.intra_op_threads (a run's default: 1)")
    p.add_argument("--json", help="append each result as a JSON line to this file")
    a = p.parse_args()
    unknown = set(a.cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases {sorted(unknown)}: choose from {', '.join(CASES)}")
    print(f"machine: {machine()}", flush=True)
    print("| case | weights | train ms / iteration | train episodes/s | test episodes/s | "
          "first call s (train / test) | load |\n| --- | --- | --- | --- | --- | --- | --- |",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = collection(Path(tmp) / "collection", a.size)
        for name in a.cases:
            r = run(name, root, a.iterations, a.test_episodes, a.batch, a.threads, a.size)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
            print(row(r), flush=True)


if __name__ == "__main__":
    main()
