"""Stage 3, meta-test: adapt to every test task from its support set, score its query set.

A task has *diverged* in a phase (after adaptation, or after one of ``meta_test.eval_steps``)
when its query loss there is not finite, or more than :data:`DIVERGENCE_FACTOR` times its query
loss before adaptation (before adaptation: when it is not finite). All of its metrics of that
phase are then NaN (an accuracy read off NaN logits, or an MSE of 1e27, would be a made-up
number), it is counted, and for algorithms with an inner loop the inner step where it first
diverged is found.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from pipeline.algorithms import Algorithm
from pipeline.data import Episodes, TaskSplit
from pipeline.tracking.keys import AFTER, BEFORE, steps_phase

log = logging.getLogger(__name__)

#: A query loss after adaptation above this many times the same task's loss before adaptation
#: has diverged, as surely as a NaN: adapting on a task's own support set must not make its
#: query loss 1,000 times worse. Meta-SGD's rates, tuned for 1 step, take 10 steps to finite
#: MSEs of 3e4 to 2e36 on sinusoid tasks, while MAML's 10 steps leave no task above
#: 20 times its start (bench/README.md, "Divergence that stays finite"): 1e3 keeps a 50x
#: margin above honest adaptation. A named constant, not a config key: a result's meaning
#: should not depend on a setting.
DIVERGENCE_FACTOR = 1e3


def diverged(loss: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """Which tasks diverged, from their query losses in a phase and before adaptation (None:
    there is no before, or this is it): not finite, or over ``DIVERGENCE_FACTOR`` x before."""
    bad = ~np.isfinite(loss)
    if before is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            bad |= np.isfinite(before) & (loss > DIVERGENCE_FACTOR * before)
    return bad


@dataclass
class Tested:
    """Per-task query metrics of one algorithm on the test tasks."""

    #: ``"<metric>_<phase>" -> [tasks]`` (``acc_after``, ``mse_after_10steps``); NaN where the
    #: task diverged in that phase.
    per_task: dict[str, np.ndarray]
    #: Phase -> which tasks diverged there ([tasks] of bool).
    diverged: dict[str, np.ndarray]
    #: Inner step -> how many tasks first diverged there (:func:`diverged`), for the tasks that
    #: diverged after adaptation (0 = already before it); empty when none did or nothing was
    #: stepped.
    divergence_steps: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_tasks(self) -> int:
        return len(next(iter(self.diverged.values())))


def run(algo: Algorithm, test: Episodes, task_batch_size: int,
        eval_steps: tuple[int, ...] | list[int] = (), quiet: bool = False) -> Tested:
    """Per-task query metrics before and after adaptation: ``{"acc_after": [tasks], ...}``.

    For each ``n`` in ``eval_steps`` also after exactly ``n`` inner steps (``acc_after_5steps``).
    Algorithms without a meaningful pre-adaptation state (``has_before=False``) get no
    ``_before`` entries. ``quiet``: no log line (validation during meta-training).
    """
    start = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {}
    for lo in range(0, test.num_tasks, task_batch_size):
        ids = np.arange(lo, min(lo + task_batch_size, test.num_tasks))
        chunk = test.take(slice(ids[0], ids[-1] + 1))
        sx, sy, qx, qy = (tf.constant(getattr(chunk, f))
                          for f in ("support_x", "support_y", "query_x", "query_y"))
        state = algo.initial_state(ids)
        phases = [(BEFORE, state)] if algo.has_before else []
        states = [*phases, (AFTER, algo.adapt(state, sx, sy))]
        states += [(steps_phase(n), algo.adapt_steps(state, sx, sy, n)) for n in eval_steps]
        for phase, s in states:
            for name, values in algo.evaluate(s, qx, qy).items():
                parts.setdefault(f"{name}_{phase}", []).append(values)
    per_task = {k: np.concatenate(v) for k, v in parts.items()}
    loss = algo.loss.metric_names[0]
    before = per_task.get(f"{loss}_{BEFORE}")
    phases = [k.removeprefix(f"{loss}_") for k in per_task if k.startswith(f"{loss}_")]
    bad_in = {p: diverged(per_task[f"{loss}_{p}"], None if p == BEFORE else before)
              for p in phases}
    for phase, bad in bad_in.items():
        for name in algo.loss.metric_names:
            per_task[f"{name}_{phase}"] = np.where(bad, np.nan, per_task[f"{name}_{phase}"])
    steps = {}
    if bad_in[AFTER].any() and algo.cfg.has_inner_loop:
        steps = divergence_steps(algo, test, np.flatnonzero(bad_in[AFTER]), algo.test_steps)
    seconds = time.perf_counter() - start
    if not quiet:
        log.info("meta-tested %s on %d tasks in %.1f s", algo.name, test.num_tasks, seconds)
    return Tested(per_task, bad_in, steps, seconds)


def divergence_steps(algo: Algorithm, test: Episodes, ids: np.ndarray,
                     max_steps: int) -> dict[int, int]:
    """For tasks ``ids``: how many first diverge (:func:`diverged`) after 0, 1, 2, ... inner
    steps (re-adapting only those tasks)."""
    chunk = test.take(ids)
    sx, sy, qx, qy = (tf.constant(getattr(chunk, f))
                      for f in ("support_x", "support_y", "query_x", "query_y"))
    loss = algo.loss.metric_names[0]
    state = algo.initial_state(ids)
    first = np.full(len(ids), -1)
    before = None
    for n in range(max_steps + 1):
        adapted = state if n == 0 else algo.adapt_steps(state, sx, sy, n)
        values = algo.evaluate(adapted, qx, qy)[loss]
        bad = diverged(values, before)
        before = values if n == 0 else before
        first[(first < 0) & bad] = n
        if (first >= 0).all():
            break
    return dict(sorted(Counter(int(s) for s in first if s >= 0).items()))


def regression_fits(algo: Algorithm, test: TaskSplit, num_tasks: int = 4) -> dict[str, np.ndarray]:
    """For the first test tasks: support points, query inputs and truth, and the model's
    predictions before and after adaptation (for
    :func:`pipeline.analysis.plots.regression_fits`)."""
    chunk = test.take(slice(0, min(num_tasks, test.num_tasks)))
    ids = np.arange(chunk.num_tasks)
    qx = tf.constant(chunk.query_x)
    state = algo.initial_state(ids)
    adapted = algo.adapt(state, tf.constant(chunk.support_x), tf.constant(chunk.support_y))
    return {"support_x": chunk.support_x, "support_y": chunk.support_y,
            "query_x": chunk.query_x, "query_y": chunk.query_y,
            BEFORE: algo.predict(state, qx), AFTER: algo.predict(adapted, qx)}
