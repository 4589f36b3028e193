"""Checks of the world a valid config points at, before anything is written: folders that must
be creatable, a tracking store that must answer and take writes, source files that must be
there (Omniglot's zips; an image collection's layout, splits and class sizes), memory enough
for the run's largest step (:mod:`pipeline.run.memory`). Each failure is
one line naming the key and what to do (exit status 2 at the CLI). Each check is made once: the
run that follows (:func:`pipeline.run.runner.execute` with ``checked=True``) does not repeat the
store's or the memory's (the images' size a config fixes is :mod:`pipeline.config.validate`'s).

:class:`OutputDirCheck` (``hydra.callbacks.preflight`` in ``conf/config.yaml``) checks Hydra's
own run and sweep folders, which Hydra creates before the pipeline's code runs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.config import (
    Config,
    ImagesDataConfig,
    OmniglotDataConfig,
    TabularDataConfig,
    TrackingConfig,
)
from pipeline.errors import ConfigError, PipelineError, Refusal
from pipeline.process import CANNOT_START
from pipeline.run import memory
from pipeline.tracking import store


def check_folder(key: str, value: str) -> None:
    """``value`` must be a folder this process can create files in, or one it can create: the
    nearest existing ancestor takes a probe folder (made and removed at once). Permission bits
    are not enough: as root they pass on read-only mounts and in /proc."""
    existing = Path(value).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={value!r} cannot be used: {existing} exists and is not a "
                          f"folder. Point {key} at a folder (it is created if missing).")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".preflight-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{key}={value!r} cannot be used: no folder can be created in "
                          f"{existing} ({e.strerror}). Point {key} at a folder you can "
                          f"write.") from e


def check_names(cfg: TrackingConfig) -> None:
    """Names MLflow's store cannot hold whole are refused, not cut (a run name is also part of
    the overrides a rerun reads back)."""
    for key, value, limit in (("tracking.experiment_name", cfg.experiment_name,
                               store.MAX_EXPERIMENT_NAME_LEN),
                              ("tracking.run_name", cfg.run_name or "", store.MAX_RUN_NAME_LEN)):
        if len(value) > limit:
            raise ConfigError(f"{key}={value[:24]!r}... is {len(value)} characters long: MLflow "
                              f"stores at most {limit}. Give a shorter {key}.")


def check(cfg: Config) -> None:
    """Everything a run needs from its surroundings, in the order it would need it."""
    check_names(cfg.tracking)
    check_folder("paths.data_dir", cfg.paths.data_dir)
    check_folder("paths.output_dir", cfg.paths.output_dir)
    db = store.sqlite_path(cfg.tracking.uri)
    if db is not None:
        check_folder("tracking.uri", str(db.parent))
        if cfg.tracking.artifact_location:
            check_folder("tracking.artifact_location", cfg.tracking.artifact_location)
    store.configure_http(cfg.tracking.http_timeout_s, cfg.tracking.http_max_retries)
    store.check_reachable(cfg.tracking.uri)
    store.check_writable(cfg.tracking.uri)
    if isinstance(cfg.data, OmniglotDataConfig) and not cfg.data.download:
        from pipeline.data.omniglot import check_sources

        check_sources(dataclasses.asdict(cfg.data))
    if isinstance(cfg.data, ImagesDataConfig):
        from pipeline.data import images, stream_rng

        images.check_sources(dataclasses.asdict(cfg.data), stream_rng(cfg.seed, "data"))
    if isinstance(cfg.data, TabularDataConfig):
        from pipeline.data import stream_rng, tabular

        tabular.check_sources(dataclasses.asdict(cfg.data), stream_rng(cfg.seed, "data"))
    memory.check(cfg)


class OutputDirCheck(Callback):
    """Refuse, in one line, a ``hydra.run.dir`` / ``hydra.sweep.dir`` that cannot be created
    (Hydra would create it before any of the pipeline runs, and fail with a traceback)."""

    def _check(self, key: str, value: Any) -> None:
        try:
            check_folder(key, str(value))
        except PipelineError as e:
            raise Refusal(e, CANNOT_START) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)
