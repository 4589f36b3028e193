"""Model selection during meta-training: score the algorithm on the data's fixed validation
tasks every ``meta_train.validate_every`` meta-iterations (and after the last), log the ``val/``
curves, keep the weights that scored best, and put them back when meta-training ends, so
meta-test and the logged model use them (early stopping, as the field's protocol does).

The score is the validation tasks' mean main metric after adaptation (accuracy; MSE, lower is
better, for regression), a diverged task counting as the worst value (accuracy 0, MSE infinite);
a later iteration is chosen only if it scores strictly better. Validation adapts copies of the
weights and touches neither them nor the sampling RNG, so training runs exactly as without it.
The selection state (every score so far, the best iteration and its weights) travels in
checkpoints: a resumed run scores, selects and logs exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.algorithms import Algorithm
from pipeline.data import Episodes
from pipeline.run.checkpoint import Checkpoint
from pipeline.stages import meta_test
from pipeline.tracking import Tracker, keys

log = logging.getLogger(__name__)

#: Checkpoint key of the selection state.
STATE = "validation"


@dataclass(frozen=True)
class Validation:
    """What model selection needs: the fixed validation tasks and how often to score them."""

    tasks: Episodes
    every: int
    task_batch_size: int
    #: Called with (iterations done, the ``val/`` values) after each validation, once they are
    #: logged: a search's trial reports them to its pruner (and may stop the run by raising).
    on_score: Callable[[int, dict[str, float]], None] | None = None


class Selection:
    """Scores, the best iteration and its weights (in ``algo.model_state`` order)."""

    def __init__(self, algo: Algorithm, validation: Validation, tracker: Tracker | None,
                 resume: Checkpoint | None = None):
        self.algo, self.validation, self.tracker = algo, validation, tracker
        state = resume.extra.get(STATE, {}) if resume is not None else {}
        #: ``"step"`` -> iterations done at each validation; metric name -> its values.
        self.history: dict[str, list[float]] = {k: list(v) for k, v in
                                                state.get("history", {}).items()}
        self.best_iteration: int | None = state.get("best_iteration")
        self.best_score: float | None = state.get("best_score")
        self.best: list[np.ndarray] = list(resume.best) if resume is not None else []
        self.seconds = 0.0
        loss = algo.loss
        self.higher_is_better = loss.higher_is_better
        self.metric = keys.query(keys.VAL, loss.main_metric, keys.AFTER, "mean")

    def due(self, done: int, total: int) -> bool:
        return done % self.validation.every == 0 or done == total

    def score(self, done: int) -> None:
        """Score the current weights after ``done`` iterations; keep them if they are the best."""
        start = time.perf_counter()
        v = self.validation
        tested = meta_test.run(self.algo, v.tasks, v.task_batch_size, quiet=True)
        main = self.algo.loss.main_metric
        record: dict[str, float] = {}
        for name in self.algo.loss.metric_names:
            values = tested.per_task[f"{name}_{keys.AFTER}"]
            finite = values[np.isfinite(values)]
            record[keys.query(keys.VAL, name, keys.AFTER, "mean")] = (
                float(finite.mean()) if finite.size else float("nan"))
        diverged = tested.diverged[keys.AFTER]
        record[keys.diverged(keys.VAL)] = float(diverged.sum())
        worst = 0.0 if self.higher_is_better else np.inf
        score = float(np.where(diverged, worst, tested.per_task[f"{main}_{keys.AFTER}"]).mean())
        better = self.best_score is None or (score > self.best_score if self.higher_is_better
                                             else score < self.best_score)
        if better:
            self.best_iteration, self.best_score = done, score
            self.best = [np.array(w.numpy()) for w in self.algo.model_state]
        self.history.setdefault("step", []).append(done)
        for k, value in record.items():
            self.history.setdefault(k, []).append(value)
        if self.tracker is not None:
            self.tracker.log_metrics({k: [value] for k, value in record.items()}, steps=[done])
        self.seconds += time.perf_counter() - start
        log.info("validation after %d iterations: %s %.4f on %d tasks%s", done, self.metric,
                 record[self.metric], v.tasks.num_tasks, " (best so far)" if better else "")
        if v.on_score is not None:
            v.on_score(done, record)

    def state(self) -> dict:
        """The JSON part of the selection state, for checkpoints."""
        return {"history": self.history, "best_iteration": self.best_iteration,
                "best_score": self.best_score}

    def curves(self) -> dict[str, tuple[list[int], list[float]]]:
        """The validation curves for the meta-training plot: the main metric and the loss."""
        names = [keys.query(keys.VAL, m, keys.AFTER, "mean")
                 for m in self.algo.loss.metric_names]
        steps = [int(s) for s in self.history.get("step", [])]
        return {n: (steps, self.history[n]) for n in names if n in self.history}

    def restore(self) -> int | None:
        """Put the best weights back into the model; tag and return their iteration."""
        if self.best_iteration is None:
            return None
        for var, value in zip(self.algo.model_state, self.best, strict=True):
            var.assign(value)
        if self.tracker is not None:
            self.tracker.set_tags({keys.SELECTED_ITERATION: self.best_iteration,
                                   keys.SELECTION_METRIC: self.metric})
            self.tracker.log_metrics({keys.TIME_VALIDATION: self.seconds})
        log.info("model selection: meta-testing the weights after %d iterations (%s %.4f, best "
                 "of %d validations)", self.best_iteration, self.metric, self.best_score,
                 len(self.history.get("step", [])))
        return self.best_iteration
