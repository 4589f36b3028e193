"""The sinusoid benchmark: speed and quality of every algorithm, in one process.

1. Speed: ms per meta-iteration of each algorithm on the same step (25 tasks per meta-batch,
   K=10, 1 inner step at 0.01, Adam 1e-3 outer; Reptile: 1 inner SGD step, interpolation),
   timed through ``Algorithm.meta_train`` (task sampling, compiled chunks, metric transfer).
2. Quality at a fixed wall-clock budget: each ``experiment=sinusoid_<algo>`` preset trained for
   ``--budget-s`` seconds (MAML at every K in ``--ks``) or ``--other-budget-s`` (the others, at
   K=10), then scored on the 600 fixed test tasks after 1 and 10 inner steps, with 95% CIs.
   Every ``--eval-every`` iterations the 1-step MSE is measured (outside the budget) to find
   the meta-iterations needed to reach MSE 0.5. Peak resident memory is reported at the end.

    .venv/bin/python -m bench.sinusoid                          # the full run (~12 min)
    .venv/bin/python -m bench.sinusoid --budget-s 10 --other-budget-s 5 --ks 10   # quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import config, machine, peak_rss_mib, tasks_of
from pipeline.analysis.stats import summarize
from pipeline.data import SEED_STREAMS
from pipeline.run import runtime
from pipeline.run.runner import build
from pipeline.stages import meta_test

ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "reptile")
#: Published MAML MSE (Meta-SGD paper, Table 1; 1 step) and learn2learn's anchors.
PUBLISHED = {5: "1.13 ± 0.18", 10: "0.85 ± 0.14", 20: "0.71 ± 0.12"}
COMMON = ["paths.data_dir=/tmp/bench/data", "tracking.log_model=false"]


def speed(name: str, iterations: int, common: bool = True) -> float:
    """ms per meta-iteration on the common step settings (or the preset's with ``common=False``)."""
    inner = (["algorithm.inner_steps=1", "algorithm.inner_lr=0.01"] +
             (["algorithm.inner_optimizer=sgd"] if name == "reptile" else [])) if common else []
    cfg = config(f"experiment=sinusoid_{name}", *COMMON, *inner,
                 f"meta_train.iterations={iterations + 100}", "meta_train.steps_per_call=100")
    tasks = tasks_of(cfg)
    algo = build(cfg, tasks)
    it = algo.meta_train(tasks.train, cfg.meta_train, np.random.default_rng(0))
    next(it)  # the first chunk of 100: trace, compile and warm up
    start = time.perf_counter()
    for _ in it:
        pass
    return 1000 * (time.perf_counter() - start) / iterations


def quality(name: str, k: int, budget_s: float, eval_every: int) -> dict:
    """Train for ``budget_s`` seconds of meta-training; score the fixed test tasks."""
    # Generous iteration count: the wall-clock budget stops training (Reptile anneals over it).
    probe = speed(name, 300, common=False) if name == "reptile" else None
    iterations = int(budget_s * 1000 / probe) if probe else 10**7
    cfg = config(f"experiment=sinusoid_{name}", *COMMON, f"data.k_shot={k}",
                 f"meta_train.iterations={iterations}", f"meta_train.steps_per_call={100}")
    runtime.setup(cfg.runtime, cfg.seed)
    tasks = tasks_of(cfg)
    algo = build(cfg, tasks)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed,
                                                       spawn_key=(SEED_STREAMS["sampling"],)))
    probe_tasks = tasks.test.take(slice(0, 200))
    trained, reached, done = 0.0, None, 0
    start = time.perf_counter()
    for lo, metrics in algo.meta_train(tasks.train, cfg.meta_train, rng):
        done = lo + len(next(iter(metrics.values())))
        if done % eval_every == 0:
            trained += time.perf_counter() - start
            if reached is None:
                probe = meta_test.run(algo, probe_tasks, 200, (1,))
                reached = done if np.nanmean(probe.per_task["mse_after_1step"]) <= 0.5 else None
            if trained >= budget_s:
                break
            start = time.perf_counter()
    else:
        trained += time.perf_counter() - start
    res = meta_test.run(algo, tasks.test, 600, (1, 10))
    finite = {n: v[np.isfinite(v)] for n, v in res.per_task.items()}
    return {"name": name, "k": k, "seconds": trained, "iterations": done, "reached": reached,
            "1": summarize(finite["mse_after_1step"]), "10": summarize(finite["mse_after_10steps"]),
            "diverged": {p: int(bad.sum()) for p, bad in res.diverged.items() if bad.any()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=60, help="MAML training budget per K")
    p.add_argument("--other-budget-s", type=float, default=30, help="budget of the others, K=10")
    p.add_argument("--ks", default="5,10,20", help="K values for MAML")
    p.add_argument("--speed-iters", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = p.parse_args()
    names = args.algorithms.split(",")
    runtime.setup(config(*COMMON).runtime, 0)

    rates = {n: speed(n, args.speed_iters) for n in names}
    rows = []
    for k in (int(k) for k in args.ks.split(",")):
        rows.append(quality("maml", k, args.budget_s, args.eval_every))
    for n in names:
        if n != "maml":
            rows.append(quality(n, 10, args.other_budget_s, args.eval_every))

    print(f"machine: {machine()}; peak RSS {peak_rss_mib():.0f} MiB")
    print("\n| algorithm | ms / meta-iteration |\n| --- | --- |")
    for n, ms in rates.items():
        print(f"| {n} | {ms:.3f} |")
    print("\n| algorithm | K | budget (s) | meta-iterations | iterations to MSE 0.5 (1 step) "
          "| MSE after 1 step | MSE after 10 steps | diverged tasks | published MAML (1 step) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pub = PUBLISHED.get(r["k"], "") if r["name"] == "maml" else ""
        reached = r["reached"] if r["reached"] is not None else "not reached"
        print(f"| {r['name']} | {r['k']} | {r['seconds']:.0f} | {r['iterations']} | {reached} "
              f"| {r['1']} | {r['10']} | {r['diverged'] or 'none'} | {pub} |")


if __name__ == "__main__":
    main()
