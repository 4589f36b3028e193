"""Pruning pays: the same Optuna search with and without a successive-halving pruner.

    .venv/bin/python -m bench.search [--trials 24] [--iterations 40] [--validate-every 5]
        [--workers 2] [--pruned-only]

A search of ``algorithm.inner_lr`` x ``optimizer.learning_rate`` on ``omniglot_5w1s_maml`` with
short budgets (validation every ``--validate-every`` meta-iterations on ``--val-tasks`` episodes
of the 172 validation characters), run twice with the same sampler and seed: unpruned, then with
``optuna.pruners.SuccessiveHalvingPruner`` (min_resource = one validation interval, reduction
factor 3). The sampler is a seeded RandomSampler, so both searches try the same configurations
and differ only by what pruning stopped. Reported: the meta-iterations each search spent (a
complete trial: all of them; a pruned one: up to its pruning step), their ratio (goal <= 40%),
and the best trial's validation accuracy of each (goal: the pruned search within 0.5 points).
No re-evaluation (``reevaluate.top_k=0``): the figure is about the search itself.

``--workers N`` runs the searches on the project's launcher with ``N`` warm workers
(``hydra/launcher=joblib``: trials in flight, a new one asked as soon as one ends) and reports
the worker utilisation the search logs on its parent run (``search/worker_utilisation``: the
workers' time in trials over workers x the trials' wall time; goal >= 90% with 2 workers and
pruning on). ``--pruned-only`` skips the unpruned search.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine
from pipeline import PROJECT_ROOT

OMNIGLOT = PROJECT_ROOT.parent / "shared" / "data" / "omniglot"
PRUNER = ["+hydra.sweeper.pruner._target_=optuna.pruners.SuccessiveHalvingPruner",
          "+hydra.sweeper.pruner.reduction_factor=3"]


def run_search(root: Path, name: str, args: argparse.Namespace, *extra: str) -> dict:
    import optuna
    from mlflow import MlflowClient

    from pipeline.tracking import keys

    data_root = args.data_root or (OMNIGLOT if OMNIGLOT.is_dir() else None)
    command = [
        sys.executable, "-m", "pipeline", "-m", "experiment=omniglot_5w1s_maml",
        "hparams_search=omniglot_optuna", f"hydra.sweeper.n_trials={args.trials}",
        f"meta_train.iterations={args.iterations}",
        f"meta_train.validate_every={args.validate_every}",
        f"meta_train.meta_batch_size={args.meta_batch}", f"data.num_val_tasks={args.val_tasks}",
        f"meta_test.task_batch_size={args.val_tasks}",
        "data.num_test_tasks=20", "tracking.log_model=false",
        "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
        "~hydra.sweeper.sampler.n_startup_trials", f"seed={args.seed}",
        "hydra.sweeper.params=null", "algorithm.inner_lr=tag(log, interval(0.01, 2.0))",
        "optimizer.learning_rate=tag(log, interval(0.00003, 0.03))",
        "hydra.sweeper.reevaluate.top_k=0", "hydra.sweeper.max_failure_rate=1.0",
        f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
        f"hydra.sweep.dir={root}/{name}",
        *([f"data.root={data_root}"] if data_root else []),
        *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.workers}"] if args.workers
          else []), *extra]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"search {name} failed:\n{out.stderr[-3000:]}")
    storage = f"sqlite:///{root}/mlruns/optuna.db"
    summary = max(optuna.get_all_study_summaries(storage), key=lambda s: s.datetime_start)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    spent = 0
    for t in study.trials:
        if t.state.name == "COMPLETE":
            spent += args.iterations
        elif t.state.name == "PRUNED":
            spent += int(t.user_attrs.get("pruned_at_step", t.last_step or 0))
    states = [t.state.name for t in study.trials]
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("meta-learning").experiment_id
    [parent] = client.search_runs([experiment], f"tags.{keys.SWEEP_ROLE} = "
                                                f"'{keys.ROLE_PARENT}' and tags.{keys.SWEEP_ID}"
                                                f" LIKE '%/{name}'")
    return {"utilisation": parent.data.metrics.get(keys.SEARCH_WORKER_UTILISATION),
            "wall_s": wall, "iterations": spent, "best": study.best_value,
            "best_trial": study.best_trial.number, "best_params": study.best_params,
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--validate-every", type=int, default=5)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--val-tasks", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--workers", type=int, default=0,
                   help="warm workers of the project's launcher (0: the basic launcher)")
    p.add_argument("--pruned-only", action="store_true")
    args = p.parse_args(argv)
    print(f"{machine()}, load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = None if args.pruned_only else run_search(root, "unpruned", args)
        pruned = run_search(root, "pruned", args, *PRUNER,
                            f"+hydra.sweeper.pruner.min_resource={args.validate_every}")
    print(f"{args.trials} trials x {args.iterations} meta-iterations, validation every "
          f"{args.validate_every} (omniglot_5w1s_maml, meta-batch {args.meta_batch}, seed "
          f"{args.seed}), {f'{args.workers} warm workers' if args.workers else 'basic launcher'}"
          f", load average at end {os.getloadavg()[0]:.1f}")
    for name, r in (("unpruned", full), ("successive halving", pruned)):
        if r is None:
            continue
        used = (f", workers in trials {100 * r['utilisation']:.1f}% of the time"
                if r["utilisation"] is not None else "")
        print(f"  {name:>18}: {r['iterations']:5d} meta-iterations, best validation accuracy "
              f"{100 * r['best']:.2f}% (trial {r['best_trial']}), {r['complete']} complete / "
              f"{r['pruned']} pruned / {r['failed']} failed, {r['wall_s']:.0f} s{used}")
    if args.workers and pruned["utilisation"] is not None:
        ok = pruned["utilisation"] >= 0.9
        print(f"  worker utilisation, pruned search on {args.workers} workers: "
              f"{100 * pruned['utilisation']:.1f}% (goal >= 90%: {'met' if ok else 'NOT met'})")
    if full is None:
        return 0
    ratio = pruned["iterations"] / full["iterations"]
    gap = 100 * (full["best"] - pruned["best"])
    print(f"  meta-iterations pruned/unpruned: {100 * ratio:.1f}% (goal <= 40%: "
          f"{'met' if ratio <= 0.40 else 'NOT met'})")
    print(f"  best validation accuracy, unpruned - pruned: {gap:.2f} points (goal <= 0.5: "
          f"{'met' if gap <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
