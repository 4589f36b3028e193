"""Stage 2, meta-train: run the algorithm's meta-training, logging curves in batches."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import checkpoint
from pipeline.algorithms import Algorithm
from pipeline.config import Config
from pipeline.data import SEED_STREAMS, TaskSplit
from pipeline.errors import DivergenceError
from pipeline.optimizers import schedule_of
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

PREFIX = "train/"
#: Longest wait before buffered training-curve values go to MLflow.
FLUSH_SECONDS = 30.0


CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_TAG = "checkpoint_iteration"


def _save_checkpoint(algo: Algorithm, cfg: Config, tracker: Tracker | None) -> None:
    """On Ctrl-C/SIGTERM: keep the state at the last finished chunk, locally and in MLflow."""
    if algo.progress is None:
        return
    directory = checkpoint.save(checkpoint.capture(algo.state_variables, algo.progress),
                                Path(cfg.paths.output_dir) / CHECKPOINT_DIR)
    where = str(directory)
    if tracker is not None:
        tracker.log_artifacts(directory, CHECKPOINT_DIR)
        tracker.set_tags({CHECKPOINT_TAG: algo.progress.iteration})
        where = f"{directory} and run {tracker.run_id}; continue it with: python -m " \
                f"pipeline.resume {tracker.run_id}"
    log.warning("Interrupted: checkpoint after %d meta-iterations saved to %s",
                algo.progress.iteration, where)


def run(algo: Algorithm, train: TaskSplit, cfg: Config, tracker: Tracker | None,
        resume: checkpoint.Checkpoint | None = None) -> dict:
    """Meta-train ``algo`` (from ``resume`` if given); returns the curves and timing."""
    if not algo.meta_learns:
        return {"seconds": 0.0, "iterations": 0, "curves": {}}
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed,
                                                       spawn_key=(SEED_STREAMS["sampling"],)))
    every = cfg.meta_train.log_every
    window: dict[str, list[float]] = {}
    curves: dict[str, tuple[list[int], list[float]]] = {}
    pending: dict[str, list] = {}
    pending_steps: list[int] = []
    total = getattr(algo.cfg, "epochs", None) or cfg.meta_train.iterations
    bar = tqdm(total=total, desc=f"meta-train {algo.name}", unit="it", file=sys.stderr,
               disable=None, dynamic_ncols=True, mininterval=0.5)
    tenth = max(total // 10, 1)
    first = done = resume.progress.iteration if resume else 0
    start = time.perf_counter()
    bar.update(first)

    last_flush = start
    schedule = schedule_of(algo.ctx.optimizer)

    def flush() -> None:
        nonlocal last_flush
        if tracker is not None and pending_steps:
            tracker.log_metrics({PREFIX + k: v for k, v in pending.items()}, steps=pending_steps)
        pending.clear()
        pending_steps.clear()
        last_flush = time.perf_counter()

    try:
        for it, metrics in algo.meta_train(train, cfg.meta_train, rng, resume):
            done = it + 1
            for k, v in metrics.items():
                value = float(v)
                if not math.isfinite(value):
                    raise DivergenceError(f"meta-training diverged: {PREFIX}{k}={value} at "
                                          f"iteration {it}. Lower optimizer.learning_rate or "
                                          f"the inner learning rate.")
                window.setdefault(k, []).append(value)
            bar.update(1)
            if bar.disable and done % tenth == 0:  # no terminal: progress goes to the log
                log.info("meta-train %s: iteration %d/%d", algo.name, done, total)
            if done % every == 0 or done == total:
                means = {k: float(np.mean(v)) for k, v in window.items()}
                window.clear()
                if schedule is not None:
                    means["learning_rate"] = float(schedule(it))
                bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()}, refresh=False)
                pending_steps.append(it)
                for k, v in means.items():
                    pending.setdefault(k, []).append(v)
                    steps, values = curves.setdefault(k, ([], []))
                    steps.append(it)
                    values.append(v)
                # One batched write per 1,000 values, or per FLUSH_SECONDS on long runs, so
                # the MLflow UI shows live curves.
                if (len(pending_steps) * max(len(pending), 1) >= 1000
                        or time.perf_counter() - last_flush >= FLUSH_SECONDS):
                    flush()
    except KeyboardInterrupt:
        _save_checkpoint(algo, cfg, tracker)
        raise
    finally:
        bar.close()
        flush()  # what was trained so far stays on record, even on failure
    seconds = time.perf_counter() - start
    log.info("meta-trained %s: %d iterations in %.1f s (%.2f ms/it)", algo.name, done - first,
             seconds, 1000 * seconds / max(done - first, 1))
    return {"seconds": seconds, "iterations": done - first, "curves": curves}
