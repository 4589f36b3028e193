"""Paired comparison of two runs (or two seed groups) on the same test tasks.

Two methods evaluated on the same tasks should be compared task by task: the per-task
difference removes the tasks' shared difficulty, so a small, consistent gain shows where two
overlapping confidence intervals hide it. Runs pair episode by episode, grouped into the run's
independent unit (``ci_unit``: a source task's episodes are averaged into one difference); seed
groups pair per seed (the jobs with the same seed saw the same data) and per unit. Runs whose
test tasks differ (data fingerprints, task counts) are refused: their "differences" would mean
nothing.

A claim about two methods must hold over training randomness, so the verdict is taken at seed
level (:func:`seed_level`): each seed's mean difference over its units, then a t-interval over
seeds. With fewer than :data:`MIN_SEEDS` seeds it is inconclusive, whatever the pooled test over
(seed, unit) pairs says: that test only speaks for these seeds' training runs.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from pipeline.analysis import episodes, groups
from pipeline.analysis.stats import summarize, two_level_bootstrap_ci
from pipeline.config.fields import BASELINES
from pipeline.errors import PipelineError
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord


class NotPaired(PipelineError, ValueError):
    """The two runs (or groups) were not evaluated on the same test tasks."""


def parse_side(spec: str) -> tuple[str, str | None]:
    """``RUN_ID`` (the run's method) or ``RUN_ID:BASELINE`` (a baseline the run scored on the
    same test tasks, e.g. ``RUN_ID:linear_probe``)."""
    run_id, _, baseline = spec.partition(":")
    if not baseline:
        return run_id, None
    if baseline not in BASELINES:
        raise NotPaired(f"{spec!r} names no baseline: after the run id and ':' give one of "
                        f"{', '.join(BASELINES)}.")
    return run_id, baseline


def record(uri: str, spec: str) -> RunRecord:
    """The run a side names, its name marked with the baseline where it is one."""
    run_id, baseline = parse_side(spec)
    run = store.get_run(uri, run_id)
    return dataclasses.replace(run, name=f"{run.name} [{baseline}]") if baseline else run


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a run, or a group's runs keyed by seed."""

    run: RunRecord
    by_seed: dict[str, RunRecord]
    #: The per-task scope compared: the method's (``task/``) or a baseline's.
    scope: str = keys.TASK

    @property
    def is_group(self) -> bool:
        return self.run.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP


@dataclass(frozen=True)
class SeedLevel:
    """The comparison at the level of a method claim: each seed's mean paired difference over
    its units, then across seeds."""

    seeds: int
    #: Per seed (sorted): the mean over its units of A, of B and of A - B.
    per_seed: pd.DataFrame
    mean: float
    #: Student-t 95% half-width over seeds, and the paired t-test over the per-seed means
    #: (SciPy's ``ttest_rel``); NaN with one seed.
    ci95: float
    t_pvalue: float
    #: Two-level bootstrap 95% interval: seeds, then units within seeds.
    boot_low: float
    boot_high: float
    #: P(A better than B) as rliable defines it, seeds as runs (the benchmark one task).
    prob_improvement: float

    @property
    def excludes_zero(self) -> bool:
        return math.isfinite(self.ci95) and (self.mean - self.ci95 > 0 or self.mean + self.ci95 < 0)


#: Fewer seeds than this say nothing about training randomness: no method verdict.
MIN_SEEDS = 3


@dataclass(frozen=True)
class PairedResult:
    metric: str
    higher_is_better: bool
    #: One row per (seed, episode): seed, episode, unit (its source task; the episode itself
    #: where every episode is its own task), a, b, diff (= a - b).
    pairs: pd.DataFrame
    #: What a unit is (``task``, ``episode``) and one row per (seed, unit): its episodes and
    #: the mean of a, b and diff over those where both are finite.
    unit: str
    units: pd.DataFrame
    #: Pooled over every (seed, unit) pair: within these seeds' training runs only.
    mean: float
    ci95: float
    std: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_pvalue: float
    #: Pairs left out because a side diverged there (non-finite).
    dropped: int
    seed_level: SeedLevel
    #: B's per-task metric where it differs from A's (a baseline's scope), else None.
    metric_b: str | None = None

    def _better(self, mean: float) -> str:
        return "A" if (mean > 0) == self.higher_is_better else "B"

    @property
    def pooled_excludes_zero(self) -> bool:
        return self.mean - self.ci95 > 0 or self.mean + self.ci95 < 0

    @property
    def verdict(self) -> str:
        n = self.seed_level.seeds
        if n == 1:
            units = f"{len(self.units)} {self.unit}s"
            if self.pooled_excludes_zero:
                return (f"{self._better(self.mean)} is better on this training run only (95% CI "
                        f"over {units} excludes 0; one seed each says nothing about training "
                        f"randomness)")
            return (f"no significant difference on this training run (95% CI over {units} "
                    f"includes 0)")
        if n < MIN_SEEDS:
            within = (f"{self._better(self.mean)} better" if self.pooled_excludes_zero
                      else "no difference")
            return (f"inconclusive: {n} seeds (a claim about the methods needs at least "
                    f"{MIN_SEEDS} seeds; within these seeds' training runs: {within})")
        if self.seed_level.excludes_zero:
            return (f"{self._better(self.seed_level.mean)} is better (95% CI over {n} seeds of "
                    f"the per-seed mean difference excludes 0)")
        return (f"no significant difference (95% CI over {n} seeds of the per-seed mean "
                f"difference includes 0)")


def side(uri: str, spec: str) -> Side:
    """A run, or a group run with its finished jobs keyed by seed (``RUN_ID:BASELINE``: that
    baseline's per-task values in the same run or jobs)."""
    run_id, baseline = parse_side(spec)
    scope = keys.baseline_task(baseline) if baseline else keys.TASK
    run = store.get_run(uri, run_id)
    if run.tags.get(keys.SWEEP_ROLE) != keys.ROLE_GROUP:
        return Side(run, {run.tags.get(keys.SEED, run.params.get("seed", "?")): run}, scope)
    members = groups.effective(store.search_runs(uri, parent_run_id=run_id))
    done = {r.tags.get(keys.SEED, r.params.get("seed", "?")): r for r in members.values()
            if r.status == keys.FINISHED}
    if not done:
        raise NotPaired(f"group {run_id} ({run.name}) has no FINISHED job to compare.")
    return Side(run, done, scope)


def main_metric(run: RunRecord) -> tuple[str, bool]:
    """The per-task main metric (``task/query_acc_after``; MSE for regression) and its sense."""
    if keys.query(keys.TEST, "acc", stat="mean") in run.metrics:
        return keys.query(keys.TASK, "acc"), True
    if keys.query(keys.TEST, "mse", stat="mean") in run.metrics:
        return keys.query(keys.TASK, "mse"), False
    raise NotPaired(f"run {run.run_id} ({run.name}) has no test metrics: it did not finish "
                    f"meta-testing.")


def _check_pairable(a: Side, b: Side) -> list[str]:
    if a.is_group != b.is_group:
        raise NotPaired(f"compare a run with a run, or a group with a group: {a.run.run_id} is "
                        f"{'a group' if a.is_group else 'a run'}, {b.run.run_id} is "
                        f"{'a group' if b.is_group else 'a run'}.")
    seeds = sorted(a.by_seed)
    if a.is_group and set(a.by_seed) != set(b.by_seed):
        raise NotPaired(f"groups {a.run.run_id} and {b.run.run_id} have different finished "
                        f"seeds ({sorted(a.by_seed)} vs {sorted(b.by_seed)}): groups pair per "
                        f"seed.")
    if not a.is_group:
        seeds = [next(iter(a.by_seed))]
    for seed in seeds:
        ra = a.by_seed[seed]
        rb = b.by_seed[seed] if b.is_group else next(iter(b.by_seed.values()))
        fa, fb = ra.tags.get(keys.DATA_FINGERPRINT), rb.tags.get(keys.DATA_FINGERPRINT)
        if not fa or fa != fb:
            raise NotPaired(f"runs {ra.run_id} and {rb.run_id} were tested on different tasks "
                            f"(data fingerprints {str(fa)[:12]} vs {str(fb)[:12]}): a paired "
                            f"comparison needs the same test tasks (same data settings and "
                            f"seed).")
    return seeds


def _units_of(uri: str, ra: RunRecord, rb: RunRecord, n: int) -> tuple[str, np.ndarray]:
    """The unit of the two runs' test episodes and each episode's unit (its source task's
    name, or the episode itself)."""
    for run in (ra, rb):
        try:
            names = episodes.source(uri, run)
        except episodes.MissingTable as e:
            raise NotPaired(str(e)) from e
        if names is not None:
            if len(names) != n:
                raise NotPaired(f"run {run.run_id} ({run.name}) has {len(names)} rows in "
                                f"{keys.EPISODES_TABLE} but {n} test episodes.")
            return keys.UNIT_TASK, names
    return keys.UNIT_EPISODE, np.arange(n).astype(str)


def seed_level(units: pd.DataFrame, higher_is_better: bool) -> SeedLevel:
    """Each seed's mean over its units of A, B and A - B; across seeds their mean, t-interval,
    paired t-test (``ttest_rel`` over the per-seed means), the two-level bootstrap interval and
    rliable's probability of improvement."""
    from rliable.metrics import probability_of_improvement

    per_seed = units.groupby("seed", sort=True)[["a", "b", "diff"]].mean()
    per_seed.insert(0, "units", units.groupby("seed", sort=True).size())
    d = per_seed["diff"].to_numpy(np.float64)
    mean, ci95, p = float(d.mean()), math.nan, math.nan
    if d.size >= 2:
        ci95 = summarize(d).ci95
        if np.all(d == 0):
            p = 1.0
        else:
            p = float(sps.ttest_rel(per_seed["a"], per_seed["b"]).pvalue)
            p = 0.0 if not math.isfinite(p) else p  # constant non-zero differences
    low, high = two_level_bootstrap_ci([g["diff"].to_numpy(np.float64)
                                        for _, g in units.groupby("seed", sort=True)])
    sign = 1.0 if higher_is_better else -1.0  # "improvement": higher accuracy, lower MSE
    prob = float(probability_of_improvement(sign * per_seed[["a"]].to_numpy(np.float64),
                                            sign * per_seed[["b"]].to_numpy(np.float64)))
    return SeedLevel(int(d.size), per_seed, mean, ci95, p, low, high, prob)


def compare(uri: str, run_a: str, run_b: str) -> PairedResult:
    """Paired differences A - B of the main metric per unit (source task, or episode) within
    each seed; pooled over (seed, unit) pairs (mean, 95% CI, paired t-test, Wilcoxon test:
    within these seeds' training runs) and at seed level (:func:`seed_level`), which decides
    the verdict."""
    a, b = side(uri, run_a), side(uri, run_b)
    seeds = _check_pairable(a, b)
    metric, higher = main_metric(next(iter(a.by_seed.values())))
    metric_a = a.scope + metric.removeprefix(keys.TASK)
    metric_b = b.scope + metric.removeprefix(keys.TASK)
    rows, unit = [], keys.UNIT_EPISODE
    for seed in seeds:
        ra = a.by_seed[seed]
        rb = b.by_seed[seed] if b.is_group else next(iter(b.by_seed.values()))
        va, vb = store.metric_history(uri, ra.run_id, metric_a), \
            store.metric_history(uri, rb.run_id, metric_b)
        for run, values, name in ((ra, va, metric_a), (rb, vb, metric_b)):
            if not values and not name.startswith(keys.TASK):
                raise NotPaired(f"run {run.run_id} ({run.name}) has no {name}: it was not "
                                f"scored against that baseline (meta_test.baselines).")
            if not values:
                raise NotPaired(f"run {run.run_id} ({run.name}) is {run.status} and has no test "
                                f"tasks ({name} was never logged): compare runs that finished "
                                f"meta-testing.")
        if set(va) != set(vb):
            raise NotPaired(f"runs {ra.run_id} and {rb.run_id} have different test task counts "
                            f"({len(va)} values of {metric_a} vs {len(vb)} of {metric_b}).")
        unit, names = _units_of(uri, ra, rb, len(va))
        rows += [{"seed": seed, "episode": t, "unit": names[i], "a": va[t], "b": vb[t],
                  "diff": va[t] - vb[t]} for i, t in enumerate(sorted(va))]
    pairs = pd.DataFrame(rows, columns=["seed", "episode", "unit", "a", "b", "diff"])
    finite = pairs[np.isfinite(pairs["diff"])]
    grouped = finite.groupby(["seed", "unit"], sort=True)
    units = grouped[["a", "b", "diff"]].mean()
    units.insert(0, "episodes", grouped.size())
    units = units.reset_index()
    if len(units) < 2:
        raise NotPaired(f"fewer than 2 test {unit}s have finite {metric} on both sides.")
    d = units["diff"].to_numpy(np.float64)
    s = summarize(d)
    if np.all(d == 0):
        t_stat, t_p, w_p = 0.0, 1.0, 1.0
    else:
        t_stat, t_p = (float(x) for x in sps.ttest_rel(units["a"], units["b"]))
        w_p = float(sps.wilcoxon(d).pvalue)
    if not math.isfinite(t_p):  # constant non-zero differences: t is infinite, p 0
        t_p = 0.0
    return PairedResult(metric_a, higher, pairs, unit, units, s.mean, s.ci95, s.std, t_stat,
                        t_p, w_p, len(pairs) - len(finite), seed_level(units, higher), metric_b)


def by_task(result: PairedResult) -> pd.DataFrame:
    """One row per (seed, source task): its episodes and the mean of A, B and A - B."""
    out = result.units.rename(columns={"unit": result.unit, "a": "mean A", "b": "mean B",
                                       "diff": "mean A-B"})
    return out if result.seed_level.seeds > 1 else out.drop(columns="seed")


def describe(result: PairedResult, a: RunRecord, b: RunRecord, tasks: bool = False) -> str:
    """The table a terminal shows (``tasks``: also one row per source task)."""
    p, sl, unit = result.pairs, result.seed_level, result.unit
    lines = [f"A: {a.name} ({a.run_id})", f"B: {b.name} ({b.run_id})",
             f"metric: {result.metric}"
             + (f" vs {result.metric_b}" if result.metric_b not in (None, result.metric) else "")
             + f" ({'higher' if result.higher_is_better else 'lower'} is better), "
             f"difference = A - B per {unit} "
             + ("(the mean over its episodes) " if unit == keys.UNIT_TASK else "")
             + "within each seed"]
    if tasks:
        lines.append(by_task(result).to_string(index=False, float_format="%.4f"))
    per_seed = sl.per_seed.rename(columns={"units": f"{unit}s", "a": "mean A", "b": "mean B",
                                           "diff": "mean A-B"})
    lines.append(per_seed.to_string(float_format="%.4f"))
    episodes_note = (f" from {len(p) - result.dropped} episodes" if unit == keys.UNIT_TASK
                     else "")
    lines += [f"pooled within these seeds' training runs: pairs: {len(result.units)} (seed, "
              f"{unit}){episodes_note}"
              + (f" ({result.dropped} episodes left out: diverged)" if result.dropped else ""),
              f"  mean difference: {result.mean:.4f} ± {result.ci95:.4f} (95% CI), std "
              f"{result.std:.4f}",
              f"  paired t-test: t = {result.t_statistic:.3f}, p = {result.t_pvalue:.3g}",
              f"  Wilcoxon signed-rank: p = {result.wilcoxon_pvalue:.3g}",
              f"across {sl.seeds} seed{'s' if sl.seeds != 1 else ''} (the unit of a claim "
              f"about the methods):"]
    if sl.seeds >= 2:
        lines.append(f"  per-seed mean difference: {sl.mean:.4f} ± {sl.ci95:.4f} (95% t-interval"
                     f" over seeds), paired t-test over the per-seed means: p = "
                     f"{sl.t_pvalue:.3g}")
    else:
        lines.append(f"  per-seed mean difference: {sl.mean:.4f} (one seed: no interval)")
    lines += [f"  two-level bootstrap 95% CI (seeds, then {unit}s within seeds): "
              f"[{sl.boot_low:.4f}, {sl.boot_high:.4f}]",
              f"  probability of improvement P(A better than B) (rliable, seeds as runs): "
              f"{sl.prob_improvement:.3f}",
              f"verdict: {result.verdict}"]
    return "\n".join(lines)


def metrics(result: PairedResult) -> dict[str, float]:
    """The comparison's numbers as metrics of a ``--log`` run (``paired/...``): pooled over
    (seed, unit) pairs, and at seed level."""
    name = result.metric.removeprefix(keys.TASK)
    sl = result.seed_level
    seed = {keys.PAIRED_SEED_DIFF_MEAN: sl.mean, keys.PAIRED_SEEDS: float(sl.seeds),
            keys.PAIRED_BOOT_LOW: sl.boot_low, keys.PAIRED_BOOT_HIGH: sl.boot_high,
            keys.PAIRED_PROB_IMPROVEMENT: sl.prob_improvement}
    if sl.seeds >= 2:
        seed |= {keys.PAIRED_SEED_DIFF_CI95: sl.ci95, keys.PAIRED_SEED_T_PVALUE: sl.t_pvalue}
    return {f"{keys.PAIRED}{name}_diff_mean": result.mean,
            f"{keys.PAIRED}{name}_diff_ci95": result.ci95,
            f"{keys.PAIRED}{name}_diff_std": result.std,
            f"{keys.PAIRED}n_pairs": float(len(result.units)),
            keys.PAIRED_UNITS: float(result.units["unit"].nunique()),
            f"{keys.PAIRED}t_statistic": result.t_statistic,
            f"{keys.PAIRED}t_pvalue": result.t_pvalue,
            f"{keys.PAIRED}wilcoxon_pvalue": result.wilcoxon_pvalue} | seed


def figure(result: PairedResult, title: str):
    """Per-unit differences, sorted, with their pooled mean and 95% CI, and their histogram."""
    from pipeline.analysis import plots

    fig, (ax, hist) = plots.plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[3, 1])
    d = np.sort(result.units["diff"].to_numpy(np.float64))
    ax.plot(np.arange(d.size), d, ".", ms=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(result.mean, color="tab:red", lw=1.2, label=f"mean {result.mean:.4f}")
    ax.axhspan(result.mean - result.ci95, result.mean + result.ci95, color="tab:red",
               alpha=0.2, label="95% CI")
    ax.set_xlabel(f"(seed, test {result.unit}) pair (sorted by difference)")
    ax.set_ylabel(f"{result.metric}: A - B")
    ax.legend(fontsize=8)
    hist.hist(d, bins=30, orientation="horizontal", color="tab:blue", alpha=0.7)
    hist.set_xlabel("pairs")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def log(uri: str, result: PairedResult, a: RunRecord, b: RunRecord) -> str:
    """The paired comparison as a new MLflow run in A's experiment: the numbers as
    ``paired/...`` metrics, each pair's difference at its step, a table and a plot."""
    from pipeline.analysis import plots

    run_id = store.create_run(uri, a.experiment_id, f"paired {a.name} vs {b.name}", {
        keys.SWEEP_ROLE: keys.ROLE_PAIRED, keys.PAIRED_A: a.run_id, keys.PAIRED_B: b.run_id,
        keys.PAIRED_METRIC: result.metric})
    name = result.metric.removeprefix(keys.TASK)
    store.log_values(uri, run_id, metrics=metrics(result))
    store.log_series(uri, run_id, f"{keys.PAIRED}{name}_diff", list(result.pairs["diff"]))
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / Path(keys.PAIRED_TABLE).name
        result.pairs.to_csv(csv, index=False)
        fig = figure(result, f"{a.name} - {b.name}: {result.verdict}")
        store.log_files(uri, run_id, {str(Path(keys.PAIRED_TABLE).parent): csv},
                        {keys.PAIRED_PLOT: fig})
        plots.close(fig)
    store.end_run(uri, run_id, keys.FINISHED)
    return run_id
