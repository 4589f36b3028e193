"""Blow-ups that stay finite: each sinusoid preset trained for a fixed number of
meta-iterations, then every one of the 600 test tasks' raw query MSE before and after 1 and 10
inner steps, and what the old rule (diverged = not finite) and the pipeline's
(:func:`pipeline.stages.meta_test.diverged`: not finite, or over ``DIVERGENCE_FACTOR`` x the
MSE before adaptation) report of them.

    .venv/bin/python -m bench.divergence metasgd:10:21000 maml:10:20000   # algorithm:K:iterations
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf

from bench.common import config, tasks_of
from pipeline.analysis.stats import summarize
from pipeline.data import FIELDS, SEED_STREAMS
from pipeline.run import runtime
from pipeline.run.runner import build
from pipeline.stages.meta_test import DIVERGENCE_FACTOR

COMMON = ["paths.data_dir=/tmp/bench/data", "tracking.log_model=false"]


def probe(name: str, k: int, iterations: int) -> None:
    cfg = config(f"experiment=sinusoid_{name}", *COMMON, f"data.k_shot={k}",
                 f"meta_train.iterations={iterations}")
    runtime.setup(cfg.runtime, cfg.seed)
    tasks = tasks_of(cfg)
    algo = build(cfg, tasks)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed,
                                                       spawn_key=(SEED_STREAMS["sampling"],)))
    start = time.perf_counter()
    for _ in algo.meta_train(tasks.train, cfg.meta_train, rng):
        pass
    print(f"## {name} K={k}, {iterations} iterations ({time.perf_counter() - start:.0f} s)")
    test = tasks.test
    sx, sy, qx, qy = (tf.constant(getattr(test, f)) for f in FIELDS)
    state = algo.initial_state(np.arange(test.num_tasks))
    before = algo.evaluate(state, qx, qy)["mse"]
    for steps in (1, 10):
        after = algo.evaluate(algo.adapt_steps(state, sx, sy, steps), qx, qy)["mse"]
        nonfinite = ~np.isfinite(after)
        ratio = after / before
        blown = np.isfinite(after) & (ratio > DIVERGENCE_FACTOR)
        kept = ~(nonfinite | blown)
        span = f"{after[blown].min():.3g}..{after[blown].max():.3g}" if blown.any() else "-"
        print(f"{steps} steps: {nonfinite.sum()} not finite, {blown.sum()} finite but over "
              f"{DIVERGENCE_FACTOR:g} x before (MSE {span}); old rule: mean "
              f"{summarize(after[~nonfinite])} over {(~nonfinite).sum()}; now: mean "
              f"{summarize(after[kept])} over {kept.sum()}; kept tasks' after/before: max "
              f"{ratio[kept].max():.3g}, {(ratio[kept] > 1).sum()} above 1, "
              f"{(ratio[kept] > 10).sum()} above 10, {(ratio[kept] > 100).sum()} above 100",
              flush=True)


def main() -> None:
    runtime.setup(config(*COMMON).runtime, 0)
    for spec in sys.argv[1:] or ["metasgd:10:21000", "maml:10:20000"]:
        name, k, iterations = spec.split(":")
        probe(name, int(k), int(iterations))


if __name__ == "__main__":
    main()
