"""Multirun tracking: one MLflow parent run per sweep, one child run per job.

:class:`SweepCallback` (``hydra.callbacks.sweep`` in ``conf/config.yaml``) runs in the process
that launches the sweep. Before any job starts it creates the tracking store (parallel jobs that
open a fresh SQLite store at once corrupt its schema) and the parent run, and writes the parent's
id to ``<sweep dir>/mlflow_parent.json``. Each job, in whatever process or machine the launcher
puts it, finds its parent through that file or, without a shared file system, by the sweep dir
tag in the tracking store (:func:`job_context`). When the sweep ends, the parent gets the
comparison of its children (:mod:`pipeline.compare`) and the best child is tagged.

Single runs never touch any of this: the callback only acts on multirun events.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config import TrackingConfig
from pipeline.tracking import keys, store

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"


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


def _tracking_cfg(config: DictConfig) -> TrackingConfig:
    obj = OmegaConf.to_object(config.tracking)
    assert isinstance(obj, TrackingConfig)
    return obj


class SweepCallback(Callback):
    """Creates the sweep's parent run before the jobs and its comparison after them."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = _tracking_cfg(config)
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        overrides = list(config.hydra.overrides.task)
        sweeper_params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        swept = swept_keys(overrides, OmegaConf.to_container(sweeper_params)
                           if sweeper_params is not None else None)
        sweep_id = f"{sweep_dir.parent.name}/{sweep_dir.name}"
        tags = {keys.SWEEP_ROLE: keys.ROLE_PARENT, keys.SWEEP_ID: sweep_id,
                keys.SWEEP_DIR: str(sweep_dir), keys.SWEEP_OVERRIDES: json.dumps(overrides),
                keys.SWEEP_PARAMS: json.dumps(swept),
                keys.SWEEP_LAUNCHER: config.hydra.launcher._target_.rsplit(".", 1)[-1],
                keys.SWEEP_SWEEPER: config.hydra.sweeper._target_.rsplit(".", 1)[-1]}
        name = " ".join(["sweep", sweep_id, *([cfg.run_name] if cfg.run_name else [])])
        self.uri = cfg.uri
        self.parent_run_id = store.start_parent_run(cfg, name, tags)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps(
            {"run_id": self.parent_run_id, "tracking_uri": cfg.uri, "swept": swept}))
        _warn_oversubscription(config)
        atexit.register(self._abandon)
        log.info("Sweep %s: MLflow parent run %s", sweep_id, self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self.uri is None:
            return
        from pipeline import compare

        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        run_id, self.parent_run_id = self.parent_run_id, None
        try:
            summary = compare.summarize_sweep(self.uri, run_id, sweep_dir,
                                              str(direction) if direction is not None else None)
        except Exception as e:  # the jobs' runs stand; say why the parent lacks its comparison
            log.exception("Could not log the sweep's comparison on parent run %s", run_id)
            store.set_tags(self.uri, run_id, {keys.ERROR: f"comparison failed: {e}"})
            store.end_run(self.uri, run_id, keys.FAILED)
            return
        store.end_run(self.uri, run_id, keys.FINISHED if summary.finished else keys.FAILED)
        log.info("Sweep parent run %s: %d child runs, best %s", run_id, len(summary.table),
                 summary.best_run_id)

    def _abandon(self) -> None:
        """The sweep raised before ``on_multirun_end``: mark the parent FAILED, not RUNNING."""
        if self.parent_run_id is not None and self.uri is not None:
            with contextlib.suppress(Exception):
                store.set_tags(self.uri, self.parent_run_id,
                               {keys.ERROR: "the sweep stopped before its end"})
                store.end_run(self.uri, self.parent_run_id, keys.FAILED)


def _warn_oversubscription(config: DictConfig) -> None:
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    threads = OmegaConf.select(config, "runtime.intra_op_threads", default=1)
    cores = os.cpu_count() or 1
    if isinstance(n_jobs, int) and n_jobs > 1 and (threads == 0 or n_jobs * threads > cores):
        log.warning("hydra.launcher.n_jobs=%d with runtime.intra_op_threads=%s oversubscribes "
                    "%d cores: jobs will fight for them. Lower n_jobs or set "
                    "runtime.intra_op_threads=1.", n_jobs, threads, cores)


@dataclass(frozen=True)
class JobContext:
    """What a sweep job adds to its run: the parent link and a name from its overrides."""

    run_name: str
    tags: dict[str, str]


def _parent_from_store(cfg: TrackingConfig, sweep_dir: Path) -> dict[str, Any] | None:
    runs = store.search_runs(cfg.uri, [cfg.experiment_name],
                             f"tags.{keys.SWEEP_DIR} = '{sweep_dir}'", include_parents=True)
    parents = [r for r in runs if r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    if not parents:
        return None
    return {"run_id": parents[-1].run_id,
            "swept": json.loads(parents[-1].tags[keys.SWEEP_PARAMS])}


def job_context(cfg: TrackingConfig, base_name: str) -> JobContext | None:
    """Inside a multirun job: the parent run and child name; None for a single run."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hc.sweep.dir)).absolute()
    parent_file = sweep_dir / PARENT_FILE
    parent = json.loads(parent_file.read_text()) if parent_file.is_file() else None
    if parent is None:  # another machine without the sweep dir: ask the shared store
        parent = _parent_from_store(cfg, sweep_dir)
    overrides = list(hc.overrides.task)
    swept = parent["swept"] if parent else swept_keys(overrides)
    tags = {keys.SWEEP_ID: f"{sweep_dir.parent.name}/{sweep_dir.name}",
            keys.SWEEP_JOB: str(hc.job.num), keys.SWEEP_ROLE: keys.ROLE_CHILD}
    if parent:
        tags[keys.PARENT_RUN] = parent["run_id"]
    else:
        log.warning("No parent run found for sweep %s: this job is logged on its own.", sweep_dir)
    return JobContext(run_name(base_name, overrides, swept or overrides), tags)


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
