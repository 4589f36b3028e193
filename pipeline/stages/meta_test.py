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


def run(algo: Algorithm, test: TaskSplit, task_batch_size: int) -> dict[str, np.ndarray]:
    """Per-task query metrics before and after adaptation: ``{"acc_after": [tasks], ...}``.

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
        phases = ((BEFORE, state),) if algo.has_before else ()
        for when, s in (*phases, (AFTER, algo.adapt(state, sx, sy))):
            for name, values in algo.evaluate(s, qx, qy).items():
                parts.setdefault(f"{name}_{when}", []).append(values)
    results = {k: np.concatenate(v) for k, v in parts.items()}
    log.info("meta-tested %s on %d tasks in %.1f s", algo.name, test.num_tasks,
             time.perf_counter() - start)
    return results
