"""Which jobs a sweep has and what a resumed sweep does with each: the swept keys, readable job
names, the grid in job order, and the run that stands for each job."""

from __future__ import annotations

import json
import logging
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from pipeline.analysis import groups
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

log = logging.getLogger(__name__)

#: In the sweep folder: the parent and group run ids, for the jobs.
PARENT_FILE = "mlflow_parent.json"
#: What a job of a resumed sweep does: nothing ran yet / FINISHED / continue / run again.
NEW, SKIP, RESUME, RERUN = "new", "skipped", "resumed", "rerun"


def swept_keys(overrides: list[str], sweeper_params: dict[str, Any] | None = None) -> list[str]:
    """Keys that vary across the sweep: comma/range/interval overrides plus an Optuna space."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return keys + [k for k in (sweeper_params or {}) if k not in keys]


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def run_name(base: str, job_overrides: list[str], swept: list[str]) -> str:
    """A readable child name: the base name and the swept values, ``maml inner_lr=0.1 seed=1``."""
    values = dict(_split(o) for o in job_overrides)
    parts = [f"{k.rsplit('.', 1)[-1].rsplit('/', 1)[-1]}={values[k]}" for k in swept
             if k in values]
    return " ".join([base, *parts])


def without_resume(overrides: list[str]) -> list[str]:
    """The command's overrides minus ``sweep.resume`` (a resumed sweep is the same command)."""
    return [o for o in overrides if _split(o)[0] != "sweep.resume"]


def grid(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides in job-number order, as Hydra's basic sweeper expands the grid;
    None for other sweepers (an Optuna search decides its trials as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if not str(config.hydra.sweeper._target_).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args),
                                            None)[0]
    except Exception as e:  # a sweep syntax only the launcher's config loader resolves
        log.warning("Could not expand the sweep's grid (%s): no seed groups.", e)
        return None



def group_map(uri: str, parent_run_id: str) -> dict[int, str]:
    """Job number -> group run id, from the store (for jobs without the sweep folder)."""
    out = {}
    for r in store.search_runs(uri, parent_run_id=parent_run_id,
                               filter_string=f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_GROUP}'"):
        out |= {int(n): r.run_id for n in json.loads(r.tags.get(keys.GROUP_JOBS, "[]"))}
    return out


def job_runs(uri: str, parent_run_id: str, group_ids: set[str]) -> dict[int, RunRecord]:
    """The run standing for each job of a sweep (the latest not replaced), through its groups."""
    runs = []
    for container in [parent_run_id, *sorted(group_ids)]:
        runs += [r for r in store.search_runs(uri, parent_run_id=container)
                 if r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_CHILD]
    return groups.effective(runs)


def action(uri: str, run: RunRecord | None) -> str:
    """What a resumed sweep does with a job whose standing run is ``run``."""
    if run is None:
        return NEW
    if run.status == keys.FINISHED or keys.is_pruned(run.tags):
        return SKIP  # a pruned search trial is done (KILLED in stores written before)
    if run.status in (keys.KILLED, keys.RUNNING) and store.has_artifact(uri, run.run_id,
                                                                        keys.CHECKPOINT_DIR):
        return RESUME
    return RERUN
