"""Stage 3, meta-test: adapt to every test task from its support set, score its query set."""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from pipeline.algorithms import Algorithm
from pipeline.data import TaskSplit

log = logging.getLogger(__name__)

BEFORE, AFTER = "before", "after"


def steps_key(steps: int) -> str:
    """Metric suffix after exactly ``steps`` inner steps: ``after_1step``, ``after_10steps``."""
    return f"{AFTER}_{steps}step{'s' if steps != 1 else ''}"


def run(algo: Algorithm, test: TaskSplit, task_batch_size: int,
        eval_steps: tuple[int, ...] | list[int] = ()) -> dict[str, np.ndarray]:
    """Per-task query metrics before and after adaptation: ``{"acc_after": [tasks], ...}``.

    For each ``n`` in ``eval_steps`` also after exactly ``n`` inner steps (``acc_after_5steps``).
    Algorithms without a meaningful pre-adaptation state (``has_before=False``) get no
    ``_before`` entries.
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
        states += [(steps_key(n), algo.adapt_steps(state, sx, sy, n)) for n in eval_steps]
        for when, s in states:
            for name, values in algo.evaluate(s, qx, qy).items():
                parts.setdefault(f"{name}_{when}", []).append(values)
    results = {k: np.concatenate(v) for k, v in parts.items()}
    log.info("meta-tested %s on %d tasks in %.1f s", algo.name, test.num_tasks,
             time.perf_counter() - start)
    return results


def regression_fits(algo: Algorithm, test: TaskSplit, num_tasks: int = 4) -> dict[str, np.ndarray]:
    """For the first test tasks: support points, query inputs and truth, and the model's
    predictions before and after adaptation (for :func:`pipeline.plots.regression_fits`)."""
    chunk = test.take(slice(0, min(num_tasks, test.num_tasks)))
    ids = np.arange(chunk.num_tasks)
    qx = tf.constant(chunk.query_x)
    state = algo.initial_state(ids)
    adapted = algo.adapt(state, tf.constant(chunk.support_x), tf.constant(chunk.support_y))
    return {"support_x": chunk.support_x, "support_y": chunk.support_y,
            "query_x": chunk.query_x, "query_y": chunk.query_y,
            BEFORE: algo.predict(state, qx), AFTER: algo.predict(adapted, qx)}
