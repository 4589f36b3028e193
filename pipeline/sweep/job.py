"""Inside a multirun job: its parent or group run, its name, what a resumed sweep does with it,
the group written when its last job ends, and the value returned to an Optuna sweeper."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from pipeline.analysis import groups
from pipeline.analysis.results import objective_metric
from pipeline.config import TrackingConfig
from pipeline.sweep.plan import (
    NEW,
    RERUN,
    action,
    group_map,
    job_runs,
    run_name,
    swept_keys,
    without_resume,
)
from pipeline.sweep.session import ParentFile, sweep_dir_of
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a sweep job adds to its run (parent or group link, a name from its overrides), and
    what a resumed sweep does with it (``action``, the job's earlier run ``previous``)."""

    run_name: str
    tags: dict[str, str]
    uri: str
    num: int
    group_run_id: str | None = None
    action: str = NEW
    previous: RunRecord | None = None
    sweep_dir: Path | None = None


def _parent_from_store(cfg: TrackingConfig, sweep_dir: Path) -> ParentFile | None:
    runs = store.search_runs(cfg.uri, [cfg.experiment_name],
                             f"tags.{keys.SWEEP_DIR} = '{sweep_dir}'", include_parents=True)
    parents = [r for r in runs if r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    if not parents:
        return None
    run_id = parents[-1].run_id
    return ParentFile(run_id, cfg.uri, json.loads(parents[-1].tags[keys.SWEEP_PARAMS]),
                      {str(n): g for n, g in group_map(cfg.uri, run_id).items()},
                      keys.RESUMED_SWEEP in parents[-1].tags)


def job_context(cfg: TrackingConfig, base_name: str) -> JobContext | None:
    """Inside a multirun job: the parent or group run, the child name and, in a resumed sweep,
    what to do; None for a single run."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = sweep_dir_of(hc)
    parent = ParentFile.load(sweep_dir)
    if parent is None:  # another machine without the sweep dir: ask the shared store
        parent = _parent_from_store(cfg, sweep_dir)
    overrides = without_resume(list(hc.overrides.task))
    swept = parent.swept if parent else swept_keys(overrides)
    num = int(hc.job.num)
    tags = {keys.SWEEP_ID: f"{sweep_dir.parent.name}/{sweep_dir.name}",
            keys.SWEEP_JOB: str(num), keys.SWEEP_ROLE: keys.ROLE_CHILD}
    group_id = None
    what, previous = NEW, None
    if parent:
        group_id = parent.groups.get(str(num))
        tags[keys.PARENT_RUN] = group_id or parent.run_id
        if group_id:
            tags[keys.GROUP_RUN] = group_id
        if parent.resume:
            previous = job_runs(cfg.uri, parent.run_id,
                                {group_id} if group_id else set()).get(num)
            what = action(cfg.uri, previous)
            if what == RERUN and previous is not None:
                tags[keys.REPLACES] = previous.run_id
    else:
        log.warning("No parent run found for sweep %s: this job is logged on its own.", sweep_dir)
    return JobContext(run_name(base_name, overrides, swept or overrides), tags, cfg.uri, num,
                      group_id, what, previous, sweep_dir)


def stored_objective(job: JobContext) -> tuple[float, bool]:
    """A skipped (FINISHED) job's objective, as the run logged it, and whether higher is
    better."""
    assert job.previous is not None
    name, higher = objective_metric(set(job.previous.metrics))
    return (job.previous.metrics[name] if name else float("nan")), higher


def job_ended(job: JobContext) -> None:
    """After a job's run ended (FINISHED or FAILED): link a replaced run to its replacement, and
    write the job's group if this was its last job. Never fails the job."""
    try:
        if job.action == RERUN and job.previous is not None:
            new = store.search_runs(job.uri, parent_run_id=job.tags[keys.PARENT_RUN],
                                    filter_string=f"tags.{keys.REPLACES} = "
                                                  f"'{job.previous.run_id}'")
            if new:
                store.set_tags(job.uri, job.previous.run_id, {keys.REPLACED_BY: new[-1].run_id})
        if job.group_run_id:
            groups.write_if_complete(job.uri, job.group_run_id, job.sweep_dir)
    except Exception as e:
        log.warning("Could not update the sweep's group run after job %d: %s", job.num, e)


def objective(value: float, higher_is_better: bool) -> float:
    """The job's return value, checked against an Optuna sweeper's ``direction``.

    A search that maximises an error (or minimises an accuracy) would silently find the worst
    configuration; refuse it with the key to change.
    """
    if not HydraConfig.initialized():
        return value
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=None)
    if direction is None:
        return value
    want = "maximize" if higher_is_better else "minimize"
    if str(direction).rsplit(".", 1)[-1].lower() != want:
        from pipeline.errors import ConfigError

        raise ConfigError(
            f"hydra.sweeper.direction={direction} does not fit the objective, which is better "
            f"when {'higher' if higher_is_better else 'lower'}: set "
            f"hydra.sweeper.direction={want}.")
    return value

