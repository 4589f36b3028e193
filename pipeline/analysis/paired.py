"""Paired comparison of two runs (or two seed groups) on the same test tasks.

Two methods evaluated on the same tasks should be compared task by task: the per-task
difference removes the tasks' shared difficulty, so a small, consistent gain shows where two
overlapping confidence intervals hide it. Runs pair task by task; seed groups pair per seed (the
jobs with the same seed saw the same data) and per task. Runs whose test tasks differ (data
fingerprints, task counts) are refused: their "differences" would mean nothing.
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

from pipeline.analysis import groups
from pipeline.analysis.stats import summarize
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
class PairedResult:
    metric: str
    higher_is_better: bool
    #: One row per (seed, task) pair: seed, task, a, b, diff (= a - b).
    pairs: pd.DataFrame
    mean: float
    ci95: float
    std: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_pvalue: float
    #: Pairs left out because a side diverged there (non-finite).
    dropped: int
    #: B's per-task metric where it differs from A's (a baseline's scope), else None.
    metric_b: str | None = None

    @property
    def verdict(self) -> str:
        if self.mean - self.ci95 > 0 or self.mean + self.ci95 < 0:
            a_better = (self.mean > 0) == self.higher_is_better
            return f"{'A' if a_better else 'B'} is better (95% CI of the difference excludes 0)"
        return "no significant difference (95% CI of the difference includes 0)"


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


def compare(uri: str, run_a: str, run_b: str) -> PairedResult:
    """Per-task paired differences A - B of the main metric, their mean, 95% CI, a paired
    t-test and a Wilcoxon signed-rank test."""
    a, b = side(uri, run_a), side(uri, run_b)
    seeds = _check_pairable(a, b)
    metric, higher = main_metric(next(iter(a.by_seed.values())))
    metric_a = a.scope + metric.removeprefix(keys.TASK)
    metric_b = b.scope + metric.removeprefix(keys.TASK)
    rows = []
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
        rows += [{"seed": seed, "task": t, "a": va[t], "b": vb[t], "diff": va[t] - vb[t]}
                 for t in sorted(va)]
    pairs = pd.DataFrame(rows, columns=["seed", "task", "a", "b", "diff"])
    finite = pairs[np.isfinite(pairs["diff"])]
    if len(finite) < 2:
        raise NotPaired(f"fewer than 2 test tasks have finite {metric} on both sides.")
    d = finite["diff"].to_numpy(np.float64)
    s = summarize(d)
    if np.all(d == 0):
        t_stat, t_p, w_p = 0.0, 1.0, 1.0
    else:
        t_stat, t_p = (float(x) for x in sps.ttest_rel(finite["a"], finite["b"]))
        w_p = float(sps.wilcoxon(d).pvalue)
    if not math.isfinite(t_p):  # constant non-zero differences: t is infinite, p 0
        t_p = 0.0
    return PairedResult(metric_a, higher, pairs, s.mean, s.ci95, s.std, t_stat, t_p, w_p,
                        len(pairs) - len(finite), metric_b)


def describe(result: PairedResult, a: RunRecord, b: RunRecord) -> str:
    """The table a terminal shows."""
    p = result.pairs
    lines = [f"A: {a.name} ({a.run_id})", f"B: {b.name} ({b.run_id})",
             f"metric: {result.metric}"
             + (f" vs {result.metric_b}" if result.metric_b not in (None, result.metric) else "")
             + f" ({'higher' if result.higher_is_better else 'lower'} is "
             f"better), difference = A - B per "
             f"{'(seed, task)' if p['seed'].nunique() > 1 else 'task'}"]
    per_seed = p.groupby("seed")[["a", "b", "diff"]].mean()
    per_seed.insert(0, "tasks", p.groupby("seed").size())
    lines.append(per_seed.rename(columns={"a": "mean A", "b": "mean B",
                                          "diff": "mean A-B"}).to_string(float_format="%.4f"))
    lines += [f"pairs: {len(p) - result.dropped}" + (f" ({result.dropped} left out: diverged)"
                                                      if result.dropped else ""),
              f"mean difference: {result.mean:.4f} ± {result.ci95:.4f} (95% CI), std "
              f"{result.std:.4f}",
              f"paired t-test: t = {result.t_statistic:.3f}, p = {result.t_pvalue:.3g}",
              f"Wilcoxon signed-rank: p = {result.wilcoxon_pvalue:.3g}",
              f"verdict: {result.verdict}"]
    return "\n".join(lines)


def metrics(result: PairedResult) -> dict[str, float]:
    """The comparison's numbers as metrics of a ``--log`` run (``paired/...``)."""
    name = result.metric.removeprefix(keys.TASK)
    return {f"{keys.PAIRED}{name}_diff_mean": result.mean,
            f"{keys.PAIRED}{name}_diff_ci95": result.ci95,
            f"{keys.PAIRED}{name}_diff_std": result.std,
            f"{keys.PAIRED}n_pairs": float(len(result.pairs) - result.dropped),
            f"{keys.PAIRED}t_statistic": result.t_statistic,
            f"{keys.PAIRED}t_pvalue": result.t_pvalue,
            f"{keys.PAIRED}wilcoxon_pvalue": result.wilcoxon_pvalue}


def figure(result: PairedResult, title: str):
    """Per-task differences, sorted, with their mean and 95% CI, and their histogram."""
    from pipeline.analysis import plots

    fig, (ax, hist) = plots.plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[3, 1])
    d = result.pairs["diff"].to_numpy(np.float64)
    d = np.sort(d[np.isfinite(d)])
    ax.plot(np.arange(d.size), d, ".", ms=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(result.mean, color="tab:red", lw=1.2, label=f"mean {result.mean:.4f}")
    ax.axhspan(result.mean - result.ci95, result.mean + result.ci95, color="tab:red",
               alpha=0.2, label="95% CI")
    ax.set_xlabel("test task pair (sorted by difference)")
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
