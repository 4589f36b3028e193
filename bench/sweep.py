"""Sweeps: parallel launcher speed-up, lost runs, tracking overhead, exact reruns.

    .venv/bin/python -m bench.sweep [--jobs 16] [--skip-sweeps]

1. The same 16-job grid (4 inner step sizes x 4 seeds, synthetic tasks, a tiny budget per job)
   with the basic launcher (jobs one after the other, in-process), with the project's launcher
   (``hydra/launcher=joblib hydra.launcher.n_jobs=2``: warm workers) and, for reference, with
   Hydra's own joblib launcher on the same config (``--launchers`` picks); checks that every
   child run exists once, FINISHED, under its seed group under one parent holding the
   comparison, compares each worker's first job's meta-training time (tracing) with the later
   jobs', and reads from the jobs' logs how long each job took from being assigned to a worker
   to starting meta-training (with the compiled steps reused or traced).
2. Tracking overhead of one run with 1,000 test tasks: the seconds the run waits on MLflow
   (``Tracker.seconds``: fluent calls and the final flush; records go to the store from a
   background thread) against its wall time, and the wall time of the same run untracked.
3. Reruns: three presets run, then ``pipeline.rerun`` each; per-task metrics must be identical.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

from bench.common import machine
from pipeline import PROJECT_ROOT
from pipeline.tracking import keys

JOB = ["data.num_train_tasks=200", "data.num_test_tasks=100", "meta_train.iterations=60",
       "meta_train.meta_batch_size=10", "meta_test.scratch.steps=20", "tracking.log_model=false"]
GRID = ["algorithm.inner_lr=0.05,0.1,0.2,0.4", "seed=0,1,2,3"]
LAUNCHERS = {
    "basic": [],
    "pipeline": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "hydra-joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "hydra.launcher._target_=hydra_plugins.hydra_joblib_launcher."
                     "joblib_launcher.JoblibLauncher"],
}
#: The warm launcher's per-job line: seconds from assignment to meta-training's start.
STARTS = re.compile(r"meta-training starts ([\d.]+) s after the job was assigned to this worker "
                    r"\(compiled steps (reused|traced in this job)\)")


def start_delays(sweep_dir: Path) -> dict[str, list[float]]:
    """Seconds from a job's assignment to its meta-training's start, from the jobs' logs:
    ``reused`` (compiled steps of an earlier job) and ``traced`` (the worker's first job of
    that graph)."""
    out: dict[str, list[float]] = {"reused": [], "traced": []}
    for log in sweep_dir.glob("*/__main__.log"):
        found = STARTS.search(log.read_text())
        if found:
            out["reused" if found.group(2) == "reused" else "traced"].append(
                float(found.group(1)))
    return out


def sweep(root: Path, *launcher: str, workers: int = 1) -> tuple[float, dict]:
    """One multirun in a fresh store under ``root``; wall seconds and what the store holds."""
    from mlflow import MlflowClient

    args = [sys.executable, "-m", "pipeline", "-m", *JOB, *GRID, f"paths.data_dir={root}/data",
            f"paths.mlruns_dir={root}/mlruns", f"hydra.sweep.dir={root}/multirun", *launcher]
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sweep and its reaped workers
    if out.returncode != 0:
        raise SystemExit(f"sweep failed:\n{out.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id])
    parents = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    groups = {r.info.run_id: r for r in runs
              if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP}
    children = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_CHILD]
    jobs = sorted(int(r.data.tags[keys.SWEEP_JOB]) for r in children)
    files = {a.path for p in parents
             for a in client.list_artifacts(p.info.run_id, keys.COMPARISON_DIR)}
    # meta-training time of each worker's first job (tracing, first-call costs) vs the others
    by_start = sorted(children, key=lambda r: r.info.start_time)
    first = [r.data.metrics[keys.TIME_META_TRAIN] for r in by_start[:workers]]
    later = [r.data.metrics[keys.TIME_META_TRAIN] for r in by_start[workers:]]
    delays = start_delays(root / "multirun")
    return wall, {
        **({f"start_s_{k}": (f"n={len(v)} median {statistics.median(v):.2f} max {max(v):.2f}"
                             if v else "-") for k, v in delays.items()}
           if any(delays.values()) else {}),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "parents": len(parents), "groups": len(groups), "children": len(children),
        "finished": sum(r.info.status == keys.FINISHED for r in children),
        "jobs_once": jobs == list(range(16)),
        "linked": bool(parents) and all(
            groups.get(r.data.tags.get(keys.PARENT_RUN)) is not None and groups[
                r.data.tags[keys.PARENT_RUN]].data.tags.get(keys.PARENT_RUN)
            == parents[0].info.run_id for r in children),
        "comparison": "comparison/comparison.csv" in files,
        "meta_train_s_first_job_per_worker": round(sum(first) / len(first), 2),
        "meta_train_s_other_jobs": round(sum(later) / max(len(later), 1), 2),
    }


def overhead(root: Path, *extra: str) -> tuple[float, float, float]:
    """One 1,000-task run: its wall time, the time it waited on MLflow calls (records are
    delivered by a background thread; this is what the run itself waits for: fluent calls and
    the final flush), and the wall time of the same run untracked."""
    from bench.common import config
    from pipeline.run.runner import execute

    cfg = config("data.num_test_tasks=1000", "meta_train.iterations=300",
                 f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns", *extra)
    start = time.perf_counter()
    untracked = execute(cfg, None, [], track=False)
    bare = time.perf_counter() - start
    start = time.perf_counter()
    result = execute(cfg, None, [])
    wall = time.perf_counter() - start
    assert untracked.per_task["acc_after"].tolist() == result.per_task["acc_after"].tolist()
    return wall, result.timings["tracking_s"], bare


def reruns(root: Path) -> list[tuple[str, str]]:
    from bench.common import raw_config
    from pipeline.config import validate
    from pipeline.replay import rerun
    from pipeline.run.runner import execute

    presets = {
        "maml (second order)": ["meta_train.iterations=100"],
        "fomaml, 1-shot": ["algorithm.first_order=true", "data.k_shot=1",
                           "meta_train.iterations=100"],
        "experiment=notebook": ["experiment=notebook", "algorithm.epochs=2"],
    }
    out = []
    for name, extra in presets.items():
        overrides = [f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
                     "tracking.log_model=false", *extra]
        raw = raw_config(*overrides)
        cfg = validate(raw)
        result = execute(cfg, raw, overrides)
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = rerun.main([result.run_id, "--tracking-uri", cfg.tracking.uri])
        verdict = buf.getvalue().strip().splitlines()[-1]
        out.append((name, f"exit {code}: {verdict}"))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-sweeps", action="store_true")
    p.add_argument("--launchers", default="basic,pipeline",
                   help=f"comma-separated, of {', '.join(LAUNCHERS)}")
    p.add_argument("--sweeps-only", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}, load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_sweeps:
            walls = {}
            for name in args.launchers.split(","):
                workers = 1 if name == "basic" else 2
                walls[name], store = sweep(root / name, *LAUNCHERS[name], workers=workers)
                print(f"{name} launcher{'' if workers == 1 else ', 2 workers'}, 16 jobs: "
                      f"{walls[name]:.1f} s, store: {store}, load {os.getloadavg()[0]:.1f}",
                      flush=True)
            for name, wall in walls.items():
                if name != "basic" and "basic" in walls:
                    print(f"speed-up of {name} over basic: {walls['basic'] / wall:.2f}x "
                          f"(goal >= 1.85x)")
        if args.sweeps_only:
            return
        for extra in ([], ["tracking.log_model=false"]):
            wall, tracked, bare = overhead(root / "overhead", *extra)
            print(f"1,000 test tasks {' '.join(extra)}: wall {wall:.1f} s, waiting on MLflow "
                  f"{tracked:.2f} s ({100 * tracked / wall:.1f}%, goal < 5%); untracked "
                  f"{bare:.1f} s (difference {100 * (wall - bare) / wall:.1f}%), load "
                  f"{os.getloadavg()[0]:.1f}")
        for name, verdict in reruns(root / "rerun"):
            print(f"rerun {name}: {verdict}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
