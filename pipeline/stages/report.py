"""Stage 4, report: summarise the meta-test honestly and record it.

Per-task metrics, their aggregates over test tasks (mean, std, 95% CI), the same for each
baseline and the paired gain over it, the adaptation curve over inner steps,
timings, plots and the model, named as in :mod:`pipeline.tracking.keys`. Tasks that diverged
(:func:`pipeline.stages.meta_test.diverged`: not finite, or 1e3 x worse than before adaptation)
are counted beside every aggregate (``test/diverged_tasks``...) and left out of it; if every test
task diverged, the run fails with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.algorithms import Algorithm
from pipeline.analysis import plots
from pipeline.analysis.stats import Summary, paired_gain, summarize
from pipeline.data import REGRESSION, TaskSet
from pipeline.errors import DivergenceError
from pipeline.models import portable
from pipeline.stages import meta_test
from pipeline.stages.meta_test import Tested
from pipeline.stages.meta_train import Trained
from pipeline.tracking import Tracker, keys

log = logging.getLogger(__name__)


@dataclass
class Report:
    """A run's results, as logged."""

    per_task: dict[str, np.ndarray]
    baseline: dict[str, np.ndarray] | None
    #: ``test/query_acc_after`` -> its summary over the tasks that did not diverge.
    summaries: dict[str, Summary]
    gain: Summary | None
    #: Main post-adaptation metric (accuracy, or MSE for regression): a sweep's objective.
    objective: float
    no_gain: bool
    #: Tasks that diverged after adaptation (0 = none).
    diverged: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    #: Each baseline's per-task metrics (``scratch``, ``finetune``, ``linear_probe``) and the
    #: method's paired gain over it (``gain`` is the one over scratch).
    baselines: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    gains: dict[str, Summary] = field(default_factory=dict)


def summaries(tested: Tested, scope: str) -> dict[str, Summary]:
    """Each per-task metric's summary over its finite values (at least 2 needed)."""
    out = {}
    for name, values in tested.per_task.items():
        finite = values[np.isfinite(values)]
        if finite.size >= 2:
            out[f"{scope}query_{name}"] = summarize(finite)
    return out


def aggregate_metrics(summaries: dict[str, Summary]) -> dict[str, float]:
    return {f"{name}_{stat}": getattr(s, stat) for name, s in summaries.items()
            for stat in keys.STATS}


def step_curve(summaries: dict[str, Summary], metrics: tuple[str, ...],
               eval_steps: tuple[int, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """``test/query_<m>_after_steps_{mean,ci95}`` with the inner-step count as step (0 = before)."""
    if not eval_steps:
        return {}
    steps = sorted({0, *eval_steps})
    out = {}
    for m in metrics:
        names = [keys.query(keys.TEST, m, keys.BEFORE if n == 0 else keys.steps_phase(n))
                 for n in steps]
        if not all(n in summaries for n in names):
            continue
        for stat in ("mean", "ci95"):
            out[keys.query(keys.TEST, m, "after_steps", stat)] = (
                steps, [getattr(summaries[n], stat) for n in names])
    return out


def _divergence_note(name: str, tested: Tested, metric: str) -> str | None:
    """One line on the tasks that diverged after adaptation, or None."""
    bad = int(tested.diverged[keys.AFTER].sum())
    if not bad:
        return None
    where = ", ".join(f"step {s}: {n}" for s, n in tested.divergence_steps.items())
    why = (f"query {metric} not finite or over {meta_test.DIVERGENCE_FACTOR:g} x its value "
           f"before adaptation" if keys.BEFORE in tested.diverged else f"non-finite query {metric}")
    return (f"{name}: {bad} of {tested.num_tasks} test tasks diverged after adaptation ({why})"
            + (f", first diverged at inner {where}" if where else ""))


def per_task(tested: Tested, scope: str = keys.TASK) -> dict[str, np.ndarray]:
    """Each test task's query metrics as series (step = task index)."""
    return {f"{scope}query_{k}": v for k, v in tested.per_task.items()}


def _gain(tested: Tested, baseline: Tested, main: str, higher_is_better: bool) -> Summary | None:
    """The method's paired gain over a baseline on the tasks where both are finite (sign: better
    is positive, also for MSE)."""
    a, b = tested.per_task[f"{main}_{keys.AFTER}"], baseline.per_task[f"{main}_{keys.AFTER}"]
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 2:
        return None
    gain = paired_gain(a[both], b[both])
    return gain if higher_is_better else Summary(-gain.mean, gain.std, gain.ci95, gain.n)


def run(algo: Algorithm, tasks: TaskSet, tested: Tested, baselines: dict[str, Tested],
        trained: Trained, eval_steps: tuple[int, ...], tracker: Tracker | None,
        log_model: bool = True) -> Report:
    """Summarise, log and plot the meta-test and every baseline's (``scratch``, ``finetune``,
    ``linear_probe``: same tasks, same order); return what was logged."""
    loss, main = algo.loss, algo.loss.main_metric
    found = summaries(tested, keys.TEST)
    counts = {keys.diverged(keys.TEST, p): int(bad.sum()) for p, bad in tested.diverged.items()}
    per_task_series = per_task(tested)
    gains: dict[str, Summary] = {}
    baseline_notes = []
    for name, result in baselines.items():
        found |= summaries(result, keys.baseline(name))
        counts |= {keys.diverged(keys.baseline(name), p): int(bad.sum())
                   for p, bad in result.diverged.items()}
        per_task_series |= per_task(result, keys.baseline_task(name))
        gain = _gain(tested, result, main, loss.higher_is_better)
        if gain is not None:
            gains[name] = found[f"{keys.gain_vs(name)}query_{main}"] = gain
        note = _divergence_note(name, result, loss.metric_names[0])
        if note:
            baseline_notes.append((name, note))
    gain = gains.get(keys.SCRATCH_NAME)

    note = _divergence_note(algo.name, tested, loss.metric_names[0])
    after_key = keys.query(keys.TEST, main)
    no_gain = gain is not None and gain.low <= 0
    beats = [name for name, g in gains.items() if g.low > 0]
    aggregates = aggregate_metrics(found) | counts
    for name, g in gains.items():  # the headline columns: gain/query_acc and its interval
        aggregates[f"{keys.gain_vs(name)}query_{main}"] = g.mean
    aggregates[keys.TIME_META_TRAIN] = trained.seconds
    aggregates[keys.TIME_META_TEST] = tested.seconds
    if trained.iterations:
        aggregates[keys.TIME_META_TRAIN_MS] = 1000 * trained.seconds / trained.iterations
    curve = step_curve(found, loss.metric_names, eval_steps)

    if tracker is not None:
        tracker.log_metrics(per_task_series)
        tracker.log_metrics(aggregates)
        if curve:  # one series per statistic, all at the same inner-step counts
            steps = next(iter(curve.values()))[0]
            tracker.log_metrics({k: v for k, (_, v) in curve.items()}, steps=steps)
        notes = [n for n in (note, *(n for _, n in baseline_notes)) if n]
        tags = {keys.NO_GAIN: "none" if no_gain else ("positive" if gain else "n/a")}
        if gains:
            tags[keys.BEATS_BASELINES] = ",".join(beats) or "none"
        tracker.set_tags(tags | ({keys.DIVERGED: "; ".join(notes)} if notes else {}))

    if note:
        log.warning("%s. Aggregates are over the other tasks; the count is logged as %s.", note,
                    keys.diverged(keys.TEST))
    for name, baseline_note in baseline_notes:
        log.warning("%s (logged as %s).", baseline_note, keys.diverged(keys.baseline(name)))
    if after_key not in found:
        raise DivergenceError(f"meta-test diverged: {note or 'no test task has a finite score'}."
                              f" Lower the inner learning rate or the test-time inner steps.")
    after = found[after_key]
    log.info("%s query %s after adaptation: %s (95%% CI, %d tasks%s)", algo.name, main, after,
             after.n, f" of {tested.num_tasks}" if after.n != tested.num_tasks else "")
    for name in baselines:
        score = found.get(keys.query(keys.baseline(name), main))
        log.info("%s query %s: %s; gain %s", name, main, score or "n/a", gains.get(name) or "n/a")
    if gains:
        best = min(gains, key=lambda n: gains[n].mean)  # the strongest: least gain over it
        log.info("gain over the best baseline (%s): %+.3f ± %.3f", best, gains[best].mean,
                 gains[best].ci95)
    if no_gain:
        log.warning("Meta-learning shows no gain: %s's gain over scratch on the same test tasks "
                    "is %s (95%% CI includes or is below 0).", algo.name, gain)

    if tracker is not None:
        _log_figures(tracker, algo, tasks, tested, baselines, trained, main)
        if log_model:
            tracker.log_keras_model(portable(algo.model), tasks.test.take(slice(0, 1)).query_x[0])
    scratch = baselines.get(keys.SCRATCH_NAME)
    return Report(tested.per_task, scratch.per_task if scratch else None, found, gain,
                  after.mean, no_gain, int(tested.diverged[keys.AFTER].sum()),
                  {"meta_train_s": trained.seconds, "meta_test_s": tested.seconds,
                   "meta_train_iterations": trained.iterations},
                  {name: r.per_task for name, r in baselines.items()}, gains)


def _log_figures(tracker: Tracker, algo: Algorithm, tasks: TaskSet, tested: Tested,
                 baselines: dict[str, Tested], trained: Trained, main: str) -> None:
    figures = []
    if trained.curves:
        figures.append((plots.curves(trained.curves), keys.CURVES_PLOT))
    figures.append((plots.per_task(tested.per_task,
                                   {name: r.per_task for name, r in baselines.items()},
                                   main, algo.name), keys.per_task_plot(main)))
    if tasks.task_type == REGRESSION:
        figures.append((plots.regression_fits(meta_test.regression_fits(algo, tasks.test),
                                              algo.name), keys.REGRESSION_PLOT))
    for fig, name in figures:
        tracker.log_figure(fig, name)
        plots.close(fig)
