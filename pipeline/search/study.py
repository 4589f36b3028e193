"""The persistent study: an RDB storage beside the MLflow store, and the study a search and its
jobs share through it.

Locally the storage is a SQLite file next to MLflow's (``mlruns/optuna.db``, an absolute path,
whatever the working directory); with ``tracking=server`` it is the team's database, given as
``hydra.sweeper.storage`` or ``OPTUNA_STORAGE`` (``postgresql+psycopg2://user:pw@host/optuna``).
The search creates the tables and the study before any job starts; each job opens the same
study to report its validation curve and ask the pruner.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.tracking import store

#: The environment variable naming the team's study database (tracking=server).
STORAGE_ENV = "OPTUNA_STORAGE"
#: Beside the MLflow SQLite file.
SQLITE_FILE = "optuna.db"
#: Seconds a SQLite writer waits for another's lock (jobs report at once).
SQLITE_TIMEOUT_S = 60


def storage_url(sweeper_storage: str | None, tracking_uri: str) -> str:
    """The study's storage: the configured URL, else a SQLite file beside a SQLite tracking
    store, else ``OPTUNA_STORAGE``."""
    if sweeper_storage:
        return str(sweeper_storage)
    db = store.sqlite_path(tracking_uri)
    if db is not None:
        return f"sqlite:///{Path(db).absolute().with_name(SQLITE_FILE)}"
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    raise ConfigError(f"tracking.uri={tracking_uri} is a server: a search keeps its study in "
                      f"the team's database; set hydra.sweeper.storage (or {STORAGE_ENV}) to "
                      f"e.g. postgresql+psycopg2://optuna:PASSWORD@HOST:5432/optuna.")


def storage_of(config: DictConfig) -> str:
    return storage_url(OmegaConf.select(config, "hydra.sweeper.storage", default=None),
                       str(OmegaConf.select(config, "tracking.uri")))


def without_password(url: str) -> str:
    """A storage URL fit for a tag: ``user:***@host``."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def rdb(url: str) -> optuna.storages.RDBStorage:
    """The storage (its tables created if missing); SQLite writers wait for each other."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def build(spec: Any, **extra: Any) -> Any:
    """A sampler or pruner from its ``_target_`` config (None: none)."""
    if spec is None:
        return None
    return instantiate(spec, **extra)


def open_study(url: str, name: str, direction: str, sampler: Any = None, pruner: Any = None,
               create: bool = False) -> optuna.Study:
    """The study ``name`` in ``url`` (created first if ``create``), with this process's sampler
    and pruner (Optuna keeps neither in the storage)."""
    storage = rdb(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if create:
        return optuna.create_study(storage=storage, study_name=name, direction=direction,
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def pruner_of(spec: Any) -> optuna.pruners.BasePruner:
    """The configured pruner; none (``NopPruner``) by default."""
    return build(spec) or optuna.pruners.NopPruner()
