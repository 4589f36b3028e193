"""Seed groups: the jobs of a sweep that differ only in ``sweep.group_by`` (the seed) form one
group, an MLflow run between the sweep's parent and those jobs.

A single seed says little; what a researcher reports is the mean over seeds with a confidence
interval. A group run holds its jobs' shared params, ``seeds/n_seeds`` and, for every headline
aggregate of its jobs (``test/query_acc_after_mean``, ``gain/query_acc``, ...), the across-seed
mean, standard deviation and 95% Student-t CI half-width, named ``seeds/<metric>_<stat>``
(:func:`pipeline.tracking.keys.seeds`), beside them for the main mean and the gain a two-level
bootstrap interval (seeds, then each seed's test units: :func:`seed_bootstrap`), plus a plot
and a table of the seeds' values.

Groups are planned from the sweep's grid before any job starts (:func:`plan`) and written when
the last of their jobs ends (:func:`write_if_complete`), so a partial sweep already shows its
complete groups.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.analysis.results import objective_metric
from pipeline.analysis.stats import summarize, two_level_bootstrap_ci, unit_means
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

#: The aggregates a group summarises across seeds: post/pre-adaptation means (also after n
#: steps), the baselines', and the paired gains over them.
HEADLINE = re.compile(r"^((test|scratch|finetune|linear_probe)/query_[a-z]+_"
                      r"(before|after(_\d+steps?)?)_mean|gain(_vs_[a-z_]+)?/query_[a-z]+)$")


@dataclass(frozen=True)
class GroupPlan:
    """One group of a planned grid: a name, the overrides its jobs share, their job numbers."""

    name: str
    shared: list[str]
    jobs: list[int]


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def plan(jobs: list[list[str]], swept: list[str], group_by: list[str],
         base_name: str) -> list[GroupPlan]:
    """Group a grid's jobs (each a list of overrides, in job-number order) by every swept key
    outside ``group_by``. No groups when no ``group_by`` key is swept."""
    varying = [k for k in swept if k in group_by]
    if not varying:
        return []
    kept = [k for k in swept if k not in group_by]
    groups: dict[tuple[str, ...], list[int]] = {}
    for num, overrides in enumerate(jobs):
        shared = tuple(o for o in overrides if _key(o) in kept)
        groups.setdefault(shared, []).append(num)
    out = []
    for shared, nums in groups.items():
        parts = [f"{_key(o).rsplit('.', 1)[-1].rsplit('/', 1)[-1]}={o.partition('=')[2]}"
                 for o in shared]
        size = (f"{len(nums)} seeds" if varying == [keys.SEED]
                else f"{len(nums)} runs over {', '.join(varying)}")
        name = " ".join([base_name, *parts, f"({size})"])
        out.append(GroupPlan(name, list(shared), nums))
    return out


def headline(runs: list[RunRecord]) -> list[str]:
    """Headline aggregates every finished run of the group has."""
    done = [r for r in runs if r.status == keys.FINISHED]
    if not done:
        return []
    common = set.intersection(*(set(r.metrics) for r in done))
    return sorted(m for m in common if HEADLINE.match(m))


def seed_statistics(runs: list[RunRecord]) -> dict[str, float]:
    """``seeds/n_seeds`` and the across-seed mean, std and 95% CI of each headline aggregate,
    over the finished runs (std and CI need 2 seeds; non-finite values are left out)."""
    done = [r for r in runs if r.status == keys.FINISHED]
    out: dict[str, float] = {keys.N_SEEDS: float(len(done))}
    for name in headline(done):
        values = np.array([r.metrics[name] for r in done], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        out[keys.seeds(name, "mean")] = float(values.mean())
        if values.size >= 2:
            s = summarize(values)
            out[keys.seeds(name, "std")] = s.std
            out[keys.seeds(name, "ci95")] = s.ci95
    return out


def _unit_values(uri: str, run: RunRecord, source: np.ndarray | None, metric: str,
                 baseline: str | None, sign: float) -> np.ndarray:
    """A run's per-unit means of a per-episode metric (minus the baseline's, times ``sign``:
    the gain), over its declared unit (``source``: each episode's; None: the episodes)."""
    a = store.metric_history(uri, run.run_id, metric)
    values = np.array([a[t] for t in sorted(a)], dtype=np.float64)
    if baseline is not None:
        b = store.metric_history(uri, run.run_id, baseline)
        values = sign * (values - np.array([b.get(t, math.nan) for t in sorted(a)]))
    if source is None:
        return values[np.isfinite(values)]
    return unit_means(values, source)[1]


def seed_bootstrap(uri: str, runs: list[RunRecord]) -> dict[str, float]:
    """Beside the across-seed t-interval: the two-level bootstrap 95% interval (seeds, then
    units within seeds) of the main post-adaptation mean and of the gain over scratch, as
    ``seeds/<metric>_boot_low`` / ``_boot_high``. Needs 2 finished seeds; a run whose units
    cannot be read (no episodes table) leaves it out."""
    from pipeline.analysis import episodes

    done = [r for r in runs if r.status == keys.FINISHED]
    if len(done) < 2:
        return {}
    try:
        sources = [episodes.source(uri, r) for r in done]
    except episodes.MissingTable:
        return {}
    out: dict[str, float] = {}
    for m, higher in (("acc", True), ("mse", False)):
        after = keys.query(keys.TEST, m, stat="mean")
        if not all(after in r.metrics for r in done):
            continue
        targets = [(after, keys.query(keys.TASK, m), None)]
        if all(f"{keys.GAIN}query_{m}" in r.metrics for r in done):
            targets.append((f"{keys.GAIN}query_{m}", keys.query(keys.TASK, m),
                            keys.query(keys.SCRATCH_TASK, m)))
        for name, metric, baseline in targets:
            groups = [_unit_values(uri, r, source, metric, baseline, 1.0 if higher else -1.0)
                      for r, source in zip(done, sources, strict=True)]
            if any(g.size == 0 for g in groups):
                continue
            low, high = two_level_bootstrap_ci(groups)
            out[keys.seeds(name, keys.BOOT_LOW)] = low
            out[keys.seeds(name, keys.BOOT_HIGH)] = high
    return out


def shared_params(runs: list[RunRecord]) -> dict[str, str]:
    """Params every run of the group has with one value (everything but the grouped keys)."""
    with_params = [r for r in runs if r.params]
    if not with_params:
        return {}
    first = with_params[0].params
    return {k: v for k, v in first.items() if all(r.params.get(k) == v for r in with_params)}


def effective(members: list[RunRecord]) -> dict[int, RunRecord]:
    """The run that stands for each sweep job: the latest one not replaced by another."""
    out: dict[int, RunRecord] = {}
    replaced = {r.tags[keys.REPLACES] for r in members if keys.REPLACES in r.tags}
    for r in sorted(members, key=lambda r: r.start_time):
        if r.run_id in replaced or keys.REPLACED_BY in r.tags or keys.SWEEP_JOB not in r.tags:
            continue
        out[int(r.tags[keys.SWEEP_JOB])] = r
    return out


def _digest(runs: dict[int, RunRecord]) -> str:
    text = json.dumps(sorted((n, r.run_id, r.status) for n, r in runs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _figure(runs: list[RunRecord], metric: str | None, group_by: list[str], title: str):
    """Each seed's value of the objective (with its own 95% CI over test tasks), the
    across-seed mean and its 95% CI."""
    from pipeline.analysis import plots

    fig, ax = plots.plt.subplots(figsize=(6, 3.6))
    done = [r for r in runs if r.status == keys.FINISHED and metric in r.metrics]
    if metric is None or not done:
        ax.text(0.5, 0.5, "no finished job with an objective", ha="center")
        return fig
    label_key = group_by[0] if group_by else keys.SEED
    labels = [str(r.params.get(label_key, r.tags.get(keys.SEED, "?"))) for r in done]
    y = np.array([r.metrics[metric] for r in done])
    ci_name = metric.removesuffix("_mean") + "_ci95"
    yerr = [r.metrics.get(ci_name, 0.0) for r in done]
    x = np.arange(len(done))
    ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=3, label="each seed (95% CI over test tasks)")
    ax.axhline(y.mean(), color="tab:red", lw=1.2, label=f"mean over {len(done)} seeds")
    if len(done) >= 2:
        half = summarize(y).ci95
        ax.axhspan(y.mean() - half, y.mean() + half, color="tab:red", alpha=0.15,
                   label="95% CI over seeds")
    ax.set_xticks(x, labels)
    ax.set_xlabel(label_key)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


@contextlib.contextmanager
def _lock(sweep_dir: Path | None, group_run_id: str) -> Iterator[None]:
    """One writer at a time per group on a machine that has the sweep folder (jobs elsewhere
    write without it; the sweep's end rewrites every group once more if it changed)."""
    if sweep_dir is None or not sweep_dir.is_dir():
        yield
        return
    with open(sweep_dir / f".group-{group_run_id}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_if_complete(uri: str, group_run_id: str, sweep_dir: Path | None = None,
                      final: bool = False) -> bool:
    """Write the group's statistics when every one of its jobs has ended (or, ``final``, at the
    sweep's end, whatever has ended); end the group run FINISHED if every job FINISHED, else
    FAILED with the jobs that did not. Idempotent: a group is rewritten only if its jobs' runs
    or statuses changed. Return whether it was written now."""
    with _lock(sweep_dir, group_run_id):
        group = store.get_run(uri, group_run_id)
        jobs = json.loads(group.tags.get(keys.GROUP_JOBS, "[]"))
        members = effective(store.search_runs(uri, parent_run_id=group_run_id))
        ended = {n: r for n, r in members.items() if r.status != keys.RUNNING}
        if len(ended) < len(jobs) and not final:
            return False
        if not ended:
            return False
        digest = _digest(ended)
        if group.tags.get(keys.GROUP_WRITTEN) == digest:
            return False
        _write(uri, group, [ended[n] for n in sorted(ended)], jobs, digest)
        return True


def _write(uri: str, group: RunRecord, runs: list[RunRecord], jobs: list[int],
           digest: str) -> None:
    from pipeline.analysis import plots

    group_by = json.loads(group.tags.get(keys.GROUP_BY, '["seed"]'))
    stats = seed_statistics(runs) | seed_bootstrap(uri, runs)
    params = {k: v for k, v in shared_params(runs).items() if k not in group.params}
    names = headline(runs)
    import pandas as pd  # here: its import costs every CLI start (and refusal) 0.3 s

    table = pd.DataFrame([{"run_name": r.name, "run_id": r.run_id, "status": r.status,
                           **{k: r.params.get(k) for k in group_by},
                           **{m: r.metrics.get(m, math.nan) for m in names}} for r in runs])
    objective, _ = objective_metric(set(names))
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / Path(keys.SEEDS_TABLE).name
        table.to_csv(csv, index=False)
        fig = _figure(runs, objective, group_by, group.name)
        store.log_values(uri, group.run_id, params=params, metrics=stats)
        store.log_files(uri, group.run_id, {str(Path(keys.SEEDS_TABLE).parent): csv},
                        {keys.SEEDS_PLOT: fig})
        plots.close(fig)
    missing = [n for n in jobs if n not in {int(r.tags[keys.SWEEP_JOB]) for r in runs}]
    bad = [f"{r.name} {r.status}" for r in runs if r.status != keys.FINISHED]
    bad += [f"job {n} never ran" for n in missing]
    tags = {keys.GROUP_WRITTEN: digest}
    if bad:
        tags[keys.ERROR] = f"{len(bad)} of {len(jobs)} jobs did not finish: " + "; ".join(bad)
    store.set_tags(uri, group.run_id, tags)
    if not bad:
        store.delete_tag(uri, group.run_id, keys.ERROR)
    statuses = {r.status for r in runs}
    status = keys.FINISHED if not bad else (keys.KILLED if keys.KILLED in statuses
                                            and keys.FAILED not in statuses else keys.FAILED)
    store.set_status(uri, group.run_id, status)
