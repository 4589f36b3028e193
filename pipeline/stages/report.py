"""Stage 4, report: summarise the meta-test honestly and record it.

Per-episode metrics, their aggregates over the test split's independent unit (mean, std, 95% CI over
source tasks or episodes, :func:`pipeline.analysis.stats.summarize_units`; the unit is the
``ci_unit`` tag, their count ``test/ci_units``), the same for each baseline (scratch, finetune,
linear_probe: same episodes) and the paired gain over it (per-unit differences), the test episodes
table (:mod:`pipeline.analysis.episodes`), the adaptation curve over inner steps, timings, plots and
the model, named as in :mod:`pipeline.tracking.keys`. Tasks that diverged
(:func:`pipeline.stages.meta_test.diverged`: not finite, or 1e3 x worse than before adaptation) are
counted beside every aggregate (``test/diverged_tasks``...) and left out of it; if every test task
diverged, the run fails with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.algorithms import Algorithm
from pipeline.analysis import episodes, plots
from pipeline.analysis.stats import Summary, Units, paired_unit_gain, summarize_units
from pipeline.data import REGRESSION, TaskSet
from pipeline.errors import DivergenceError
from pipeline.models import portable
from pipeline.serving import publish
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


def units_of(tasks: TaskSet) -> Units:
    """The test split's independent unit, as the family declared it."""
    return Units(tasks.ci_unit, tasks.test_source, tasks.unit_names, tasks.test_classes,
                 tasks.splits.get("test") if tasks.test_classes is not None else None)


def summaries(tested: Tested, scope: str, units: Units | None = None) -> dict[str, Summary]:
    """Each per-episode metric's summary over the test unit (its finite values; at least 2
    episodes, as ever; one unit: a mean without interval)."""
    out = {}
    for name, values in tested.per_task.items():
        if np.isfinite(values).sum() >= 2:
            out[f"{scope}query_{name}"] = summarize_units(values, units)
    return out


def aggregate_metrics(summaries: dict[str, Summary]) -> dict[str, float]:
    """``<name>_{mean,std,ci95}`` (no interval, no ``std``/``ci95``: never a made-up number), and
    ``<name>_class_ci_{low,high}`` where the classes were resampled."""
    out = {f"{name}_{stat}": getattr(s, stat) for name, s in summaries.items()
           for stat in keys.STATS if stat == "mean" or s.has_ci}
    for name, s in summaries.items():
        if s.class_ci is not None:
            out |= {f"{name}_{keys.CLASS_CI_LOW}": s.class_ci[0],
                    f"{name}_{keys.CLASS_CI_HIGH}": s.class_ci[1]}
    return out


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
        for stat in ("mean", "ci95") if all(summaries[n].has_ci for n in names) else ("mean",):
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


def _gain(tested: Tested, baseline: Tested, main: str, higher_is_better: bool,
          units: Units) -> Summary | None:
    """The method's paired gain over a baseline, per unit, on the episodes where both are finite
    (sign: better is positive, also for MSE)."""
    a, b = tested.per_task[f"{main}_{keys.AFTER}"], baseline.per_task[f"{main}_{keys.AFTER}"]
    if (np.isfinite(a) & np.isfinite(b)).sum() < 2:
        return None
    gain = paired_unit_gain(a, b, units)
    return gain if higher_is_better else Summary(-gain.mean, gain.std, gain.ci95, gain.n,
                                                 gain.unit, gain.episodes)


def run(algo: Algorithm, tasks: TaskSet, tested: Tested, baselines: dict[str, Tested],
        trained: Trained, eval_steps: tuple[int, ...], tracker: Tracker | None,
        log_model: bool = True) -> Report:
    """Summarise, log and plot the meta-test and every baseline's (``scratch``, ``finetune``,
    ``linear_probe``: same episodes, same order); return what was logged."""
    loss, main = algo.loss, algo.loss.main_metric
    units = units_of(tasks)
    found = summaries(tested, keys.TEST, units)
    counts = {keys.diverged(keys.TEST, p): int(bad.sum()) for p, bad in tested.diverged.items()}
    per_task_series = per_task(tested)
    gains: dict[str, Summary] = {}
    baseline_notes = []
    for name, result in baselines.items():
        found |= summaries(result, keys.baseline(name), units)
        counts |= {keys.diverged(keys.baseline(name), p): int(bad.sum())
                   for p, bad in result.diverged.items()}
        per_task_series |= per_task(result, keys.baseline_task(name))
        g = _gain(tested, result, main, loss.higher_is_better, units)
        if g is not None:
            gains[name] = found[f"{keys.gain_vs(name)}query_{main}"] = g
        baseline_note = _divergence_note(name, result, loss.metric_names[0])
        if baseline_note:
            baseline_notes.append((name, baseline_note))
    gain = gains.get(keys.SCRATCH_NAME)

    note = _divergence_note(algo.name, tested, loss.metric_names[0])
    after_key = keys.query(keys.TEST, main)
    no_gain = gain is not None and gain.has_ci and gain.low <= 0
    beats = [name for name, g in gains.items() if g.has_ci and g.low > 0]
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
        tags = {keys.NO_GAIN: "none" if no_gain else ("positive" if gain and gain.has_ci
                                                      else "n/a"), keys.CI_UNIT: units.kind}
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
    if tracker is not None:
        tracker.log_metrics({keys.CI_UNITS: after.n, keys.TEST_EPISODES: after.episodes})
        tracker.log_text(episodes.table(units, per_task_series).to_csv(index=False),
                         keys.EPISODES_TABLE)
    if not after.has_ci:
        log.warning("The test split has one %s (%d episodes): no confidence interval is given "
                    "(it would need 2 independent %ss).", units.kind, after.episodes, units.kind)
    diverged_note = (f"; {tested.num_tasks - after.episodes} of {tested.num_tasks} episodes "
                     f"diverged" if after.episodes != tested.num_tasks else "")
    log.info("%s query %s after adaptation: %s%s", algo.name, main, after,
             f" (95% CI over {after.over()}{diverged_note})" if after.has_ci else diverged_note)
    if after.class_ci is not None:
        log.info("%s query %s after adaptation, 95%% CI resampling the test classes (cluster "
                 "bootstrap): [%.4f, %.4f]", algo.name, main, *after.class_ci)
    for name in baselines:
        score, g = found.get(keys.query(keys.baseline(name), main)), gains.get(name)
        log.info("%s query %s: %s; gain %s%s", name, main, score or "n/a", g or "n/a",
                 f" (95% CI over {g.over()}, paired per {units.kind})" if g and g.has_ci else "")
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
            publish.log_few_shot(tracker, algo, tasks)
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
