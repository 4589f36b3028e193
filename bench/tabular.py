"""Tabular tasks from disk (``data=tabular``): what meta-learning gains on them, and
what reading them costs.

``gain``: writes the synthetic family's tasks to disk (``scripts/make_fake_tabular.py``, 300
tasks by default, the family ``data=synthetic`` draws with the same seed), runs
``experiment=tabular_maml`` on them (80% training / 20% test tasks by the seed) with one fixed
episode per training task (as ``data=synthetic`` trains) and ``experiment=synthetic_maml`` with
the same generator settings and task counts, then ``tabular_maml`` as preset (fresh training
episodes), and prints each run's query accuracy, the scratch baseline's and the paired gain
with its 95% CI.

``load``: writes 1,000 per-task CSV files of 200 rows x 20 features and times, in a fresh
process, the generate stage on them (hashing, reading, checking, preprocessing, drawing the
fixed episodes, writing the task file) and drawing 1,000 meta-batches of training episodes;
then (``--run``) a 1,000-iteration ``tabular_maml`` run on the same files, to put the loading
in proportion.

    python -m bench.tabular gain [--tasks 300] [--iterations 1000] [--seed 0]
    python -m bench.tabular load [--files 1000] [--rows 200] [--features 20] [--run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, raw_config
from pipeline import PROJECT_ROOT
from pipeline.config import validate
from pipeline.run.runner import execute

SCRIPT = PROJECT_ROOT / "scripts" / "make_fake_tabular.py"


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def make(out: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), str(out), *args], check=True,
                   stdout=subprocess.DEVNULL)


def run(overrides: list[str]) -> dict:
    raw = raw_config(*overrides)
    cfg = validate(raw)
    start = time.perf_counter()
    result = execute(cfg, raw, overrides)
    acc = result.summaries["test/query_acc_after"]
    base = result.summaries.get("scratch/query_acc_after")
    return {"run_id": result.run_id, "acc": acc.mean, "acc_ci95": acc.ci95, "n": acc.n,
            "scratch": base.mean if base else None,
            "gain": result.gain.mean, "gain_ci95": result.gain.ci95,
            "meta_train_s": result.timings.get("meta_train_s"),
            "total_s": time.perf_counter() - start}


def gain(args: argparse.Namespace, root: Path) -> dict:
    make(root / "set", "--tasks", str(args.tasks), "--seed", str(args.seed), "--layouts", "long")
    test = round(0.2 * args.tasks)
    common = [f"seed={args.seed}", f"meta_train.iterations={args.iterations}",
              f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
              f"paths.output_dir={root}/out"]
    tabular = ["experiment=tabular_maml", f"data.root={root}/set/long.csv",
               "data.task_split=[0.8,0,0.2]", "data.num_val_tasks=0",
               f"data.num_test_tasks={test}", *common]
    # As data=synthetic trains: one fixed support/query split per training task.
    fixed = run([*tabular, f"data.num_train_tasks={args.tasks - test}"])
    syn = run(["experiment=synthetic_maml", f"data.num_train_tasks={args.tasks - test}",
               f"data.num_test_tasks={test}", *common])
    fresh = run(tabular)  # the preset's default: fresh episodes from the training tasks
    lo, hi = syn["gain"] - syn["gain_ci95"], syn["gain"] + syn["gain_ci95"]
    return {"tabular_fixed": fixed, "synthetic": syn, "tabular_fresh": fresh,
            "tabular_gain_ci_above_0": fixed["gain"] - fixed["gain_ci95"] > 0,
            "tabular_gain_within_synthetic_ci": lo <= fixed["gain"] <= hi,
            "fresh_gain_ci_above_0": fresh["gain"] - fresh["gain_ci95"] > 0}


_TIME_LOAD = """
import json, sys, time
t0 = time.perf_counter()
from pipeline.config import compose, validate
from pipeline.data import stream_rng
from pipeline.stages import generate
t1 = time.perf_counter()
cfg = validate(compose(sys.argv[1:]))
t2 = time.perf_counter()
tasks = generate.run(cfg.data, cfg.seed, cfg.paths.data_dir, None)
t3 = time.perf_counter()
rng = stream_rng(cfg.seed, "sampling")
for _ in range(1000):
    tasks.train.sample(rng, cfg.meta_train.meta_batch_size)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "generate_s": t3 - t2, "sample_1000_batches_s": t4 - t3,
                  "train_tasks": tasks.train.num_tasks, "test_episodes": tasks.test.num_tasks}))
"""


def load(args: argparse.Namespace, root: Path) -> dict:
    make(root / "set", "--tasks", str(args.files), "--samples-per-task", str(args.rows),
         "--features", str(args.features), "--layouts", "per_task")
    overrides = ["experiment=tabular_maml", "data.layout=per_task",
                 f"data.root={root}/set/per_task", f"paths.data_dir={root}/data",
                 f"paths.mlruns_dir={root}/mlruns", f"paths.output_dir={root}/out"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    before = load_avg()
    out = subprocess.run([sys.executable, "-c", _TIME_LOAD, *overrides], check=True,
                         capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    timing |= {"load_before": before, "load_after": load_avg()}
    if args.run:
        timing["run"] = run([*overrides, "meta_train.iterations=1000", "data.cache=false"])
        timing["prep_share_of_run"] = ((timing["generate_s"] + timing["sample_1000_batches_s"])
                                       / timing["run"]["total_s"])
    return timing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("gain", "load"))
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--run", action="store_true", help="load: also a 1,000-iteration run")
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tabular-") as tmp:
        root = args.dir or Path(tmp)
        print(f"# {machine()}; load average {load_avg()}", flush=True)
        result = gain(args, root) if args.what == "gain" else load(args, root)
        print(f"# load average after: {load_avg()}")
        print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
