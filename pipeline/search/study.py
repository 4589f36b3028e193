"""The persistent study: an RDB storage beside the MLflow store, and the study a search and its
jobs share through it.

Locally the storage is a SQLite file next to MLflow's (``mlruns/optuna.db``, an absolute path,
whatever the working directory); with ``tracking=server`` it is the team's database, given as
``hydra.sweeper.storage`` or ``OPTUNA_STORAGE`` (``postgresql+psycopg2://user:pw@host/optuna``).
The search creates the tables and the study before any job starts; each job opens the same
study to report its validation curve and ask the pruner.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.search import space
from pipeline.tracking import store

if TYPE_CHECKING:
    from pipeline.search.settings import Settings

#: The environment variable naming the team's study database (tracking=server).
STORAGE_ENV = "OPTUNA_STORAGE"
#: Beside the MLflow SQLite file.
SQLITE_FILE = "optuna.db"
#: Seconds a SQLite writer waits for another's lock (jobs report at once).
SQLITE_TIMEOUT_S = 60
#: Seconds to reach a server database before the search is refused.
CONNECT_TIMEOUT_S = 10
#: Study user attributes written at creation: what trials return, the space a resume must
#: keep, the pruner the jobs build (Optuna keeps none in the storage); later the sweep's
#: parent run and the re-evaluated winner's test score (optuna-dashboard links to MLflow).
ATTR_OBJECTIVE, ATTR_OBJECTIVE_VALUE, ATTR_SPACE, ATTR_PRUNER = (
    "objective", "objective_value", "space", "pruner")
ATTR_PARENT_RUN = "mlflow_parent_run_id"
#: A trial's user attribute: the MLflow run that stands for it.
ATTR_RUN = "mlflow_run_id"


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
    """The storage (its tables created if missing); SQLite writers wait for each other. Two
    processes that open a fresh storage at once race to create its tables (a unique-key or
    "already exists" error for the loser): the loser opens it again, finding them made."""
    import sqlalchemy.exc

    for attempt in range(4):
        try:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == 3:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


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


def check_reachable(url: str) -> None:
    """Refuse a study storage that cannot be reached (or, for SQLite, written), before the
    sweep records anything."""
    masked = without_password(url)
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:  # the nearest existing folder takes a file (root ignores permission bits)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ConfigError(f"the study storage {masked} cannot be created: {folder} is not "
                              f"writable ({e.strerror}); set hydra.sweeper.storage to a "
                              f"writable place.") from None
        return
    try:
        import sqlalchemy

        args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith(
            ("postgresql", "mysql")) else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as e:
        cause = without_password(str(e).strip().splitlines()[0] if str(e).strip()
                                 else type(e).__name__)
        raise ConfigError(f"the study storage {masked} cannot be reached ({cause}): start that "
                          f"database or fix hydra.sweeper.storage (or {STORAGE_ENV}).") from None


def attrs(settings: Settings, space_json: str) -> dict[str, str]:
    pruner = settings.pruner
    spec = OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig) \
        else pruner
    return {ATTR_OBJECTIVE: settings.objective, ATTR_OBJECTIVE_VALUE: settings.objective_value,
            ATTR_SPACE: space_json, ATTR_PRUNER: json.dumps(spec)}


def create_new(url: str, name: Callable[[], str], settings: Settings, space_: dict,
               pruner: Any) -> optuna.Study:
    """A new study (never an existing one: a name taken gets a suffix), holding what a resume
    and the trials read back, and naming its objective."""
    storage = rdb(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = name()
    for n in range(1, 100):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            s = optuna.create_study(storage=storage, study_name=candidate,
                                    direction=settings.direction, pruner=pruner)
            break
        except optuna.exceptions.DuplicatedStudyError:
            continue
    else:
        raise ConfigError(f"study names {base}-2..99 are all taken in {without_password(url)}")
    for key, value in attrs(settings, space.to_json(space_)).items():
        s.set_user_attr(key, value)
    with warnings.catch_warnings():  # "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        s.set_metric_names([settings.objective])
    return s
