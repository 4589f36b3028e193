"""Stage 2, meta-train: run the algorithm's meta-training, logging curves in batches.

Signals (Ctrl-C, SIGTERM) are held back while a chunk of meta-iterations runs and its metrics
are recorded; one arriving meanwhile stops the run right after, with a checkpoint that agrees
with every curve point logged (the open window of the curves is saved in it too, and the model
selection's state), so a resumed run logs exactly the curves of an uninterrupted one. When
meta-training ends a checkpoint is written as well: a run stopped during meta-test resumes
straight at meta-test. Validation (model selection) runs inside the same held-back block, right
after the chunk that ends at its iteration.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.algorithms import Algorithm
from pipeline.algorithms.optimizers import schedule_of
from pipeline.config import MetaTrainConfig
from pipeline.data import SEED_STREAMS, TaskSplit
from pipeline.data.episodes import EpisodeSampler, TaskRowSampler
from pipeline.errors import DivergenceError
from pipeline.run import checkpoint, warm
from pipeline.run.checkpoint import deferred_interrupts
from pipeline.stages.validation import STATE, Selection, Validation
from pipeline.tracking import Tracker, keys

log = logging.getLogger(__name__)

#: Longest wait before buffered training-curve values go to MLflow.
FLUSH_SECONDS = 30.0
#: Checkpoint key of the curves' open window.
_WINDOW = "window"


@dataclass
class Trained:
    """What meta-training leaves for the later stages."""

    seconds: float = 0.0
    #: Meta-iterations run by this process (a resumed run counts only its own).
    iterations: int = 0
    #: ``name -> (steps, window means)`` logged as ``train/<name>``.
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    #: The checkpoint written when meta-training ended (None without meta-learning).
    checkpoint: Path | None = None
    total: int = 0
    #: Model selection: the iteration whose weights the model holds now (None: the last).
    selected_iteration: int | None = None


class _Curves:
    """Window means every ``log_every`` iterations, sent to MLflow in batches."""

    def __init__(self, every: int, total: int, tracker: Tracker | None, schedule, window=None):
        self.every, self.total, self.tracker, self.schedule = every, total, tracker, schedule
        self.window: dict[str, list[float]] = {k: list(v) for k, v in (window or {}).items()}
        self.curves: dict[str, tuple[list[int], list[float]]] = {}
        self.pending: dict[str, list[float]] = {}
        self.pending_steps: list[int] = []
        self.last_flush = time.perf_counter()

    def add(self, it: int, metrics: dict[str, float]) -> dict[str, float] | None:
        """Record iteration ``it``; return the window means when a curve point closes."""
        for k, value in metrics.items():
            if not math.isfinite(value):
                raise DivergenceError(f"meta-training diverged: {keys.TRAIN}{k}={value} at "
                                      f"iteration {it}. Lower optimizer.learning_rate or the "
                                      f"inner learning rate.")
            self.window.setdefault(k, []).append(value)
        done = it + 1
        if done % self.every and done != self.total:
            return None
        means = {k: float(np.mean(v)) for k, v in self.window.items()}
        self.window.clear()
        if self.schedule is not None:
            means["learning_rate"] = float(self.schedule(it))
        self.pending_steps.append(it)
        for k, v in means.items():
            self.pending.setdefault(k, []).append(v)
            steps, values = self.curves.setdefault(k, ([], []))
            steps.append(it)
            values.append(v)
        # One batched write per 1,000 values, or per FLUSH_SECONDS on long runs, so the MLflow
        # UI shows live curves.
        if (len(self.pending_steps) * max(len(self.pending), 1) >= 1000
                or time.perf_counter() - self.last_flush >= FLUSH_SECONDS):
            self.flush()
        return means

    def flush(self) -> None:
        if self.tracker is not None and self.pending_steps:
            self.tracker.log_metrics({keys.TRAIN + k: v for k, v in self.pending.items()},
                                     steps=self.pending_steps)
        self.pending.clear()
        self.pending_steps.clear()
        self.last_flush = time.perf_counter()


def save_checkpoint(algo: Algorithm, output_dir: Path, extra: dict | None = None,
                    selection: Selection | None = None) -> Path:
    """The algorithm's state at its last recorded chunk (and the model selection's), in
    ``<output_dir>/checkpoint/``."""
    assert algo.progress is not None
    extra = {**(extra or {}), **({STATE: selection.state()} if selection else {})}
    best = selection.best if selection else None
    return checkpoint.save(checkpoint.capture(algo.state_variables, algo.progress, extra, best),
                           Path(output_dir) / keys.CHECKPOINT_DIR)


def log_checkpoint(tracker: Tracker | None, directory: Path, iteration: int) -> str:
    """Log a checkpoint as the run's ``checkpoint/`` artifact; say where it is and how to
    continue from it."""
    if tracker is None:
        return str(directory)
    tracker.log_artifacts(directory, keys.CHECKPOINT_DIR)
    tracker.set_tags({keys.CHECKPOINT_ITERATION: iteration})
    return (f"{directory} and run {tracker.run_id}; continue it with: python -m pipeline.resume "
            f"{tracker.run_id}")


def run(algo: Algorithm, train: TaskSplit | EpisodeSampler | TaskRowSampler, cfg: MetaTrainConfig,
        seed: int, output_dir: Path, tracker: Tracker | None,
        resume: checkpoint.Checkpoint | None = None,
        validation: Validation | None = None) -> Trained:
    """Meta-train ``algo`` (from ``resume`` if given); return the curves and timing.

    With ``validation``, the algorithm is scored on its tasks at every ``validation.every``
    iterations (each right after the chunk that ends there) and, when training ends, holds the
    weights that scored best (:mod:`pipeline.stages.validation`).
    """
    total = algo.total_iterations(cfg)
    if not algo.meta_learns:
        return Trained()
    selection = Selection(algo, validation, tracker, resume) if validation else None
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAMS["sampling"],)))
    curves = _Curves(cfg.log_every, total, tracker, schedule_of(algo.ctx.optimizer),
                     resume.extra.get(_WINDOW) if resume else None)
    first = resume.progress.iteration if resume else 0
    bar = tqdm(total=total, initial=first, desc=f"meta-train {algo.name}", unit="it",
               file=sys.stderr, disable=None, dynamic_ncols=True, mininterval=0.5)
    tenth = max(total // 10, 1)
    done, start = first, time.perf_counter()
    if warm.assigned_at is not None:  # a warm worker: how long the job took to get here
        log.info("meta-training starts %.2f s after the job was assigned to this worker "
                 "(compiled steps %s)", time.time() - warm.assigned_at,
                 "reused" if warm.reused.get(algo.name) else "traced in this job")
    chunks = algo.meta_train(train, cfg, rng, resume)
    try:
        while True:
            with deferred_interrupts():  # a chunk and its record change together
                item = next(chunks, None)
                if item is None:
                    break
                lo, metrics = item
                if lo == first and warm.assigned_at is not None:
                    log.info("first compiled chunk (%d iterations) done %.2f s after the job "
                             "was assigned", len(next(iter(metrics.values()))),
                             time.time() - warm.assigned_at)
                for i in range(len(next(iter(metrics.values())))):
                    means = curves.add(lo + i, {k: float(v[i]) for k, v in metrics.items()})
                    done = lo + i + 1
                    bar.update(1)
                    if means is not None:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()}, refresh=False)
                    if bar.disable and done % tenth == 0:  # no terminal: progress to the log
                        log.info("meta-train %s: iteration %d/%d", algo.name, done, total)
                if selection is not None and selection.due(done, total):
                    selection.score(done)  # chunks end at validation points
    except KeyboardInterrupt:
        if algo.progress is not None:
            directory = save_checkpoint(algo, output_dir, {_WINDOW: curves.window}, selection)
            where = log_checkpoint(tracker, directory, algo.progress.iteration)
            log.warning("Interrupted: checkpoint after %d meta-iterations saved to %s",
                        algo.progress.iteration, where)
        raise
    finally:
        bar.close()
        curves.flush()  # what was trained so far stays on record, even on failure
    seconds = time.perf_counter() - start
    ran = done - first
    if ran:
        log.info("meta-trained %s: %d iterations in %.1f s (%.2f ms/it)", algo.name, ran, seconds,
                 1000 * seconds / ran)
    else:
        log.info("meta-training of %s skipped: no iterations left to run (%d of %d done)",
                 algo.name, done, total)
    saved = (save_checkpoint(algo, output_dir, None, selection) if algo.progress is not None
             else None)
    selected = selection.restore() if selection is not None else None
    plotted = curves.curves | (selection.curves() if selection is not None else {})
    return Trained(seconds, ran, plotted, saved, total, selected)
