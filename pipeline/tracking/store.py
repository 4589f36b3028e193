"""The tracking store: creating it, checking it, and querying stored runs (for compare, rerun,
resume and sweeps). Queries return plain :class:`RunRecord` values, never MLflow types."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig
from pipeline.errors import TrackingError
from pipeline.tracking import keys, redact

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 8000
#: MLflow's SQL schema: ``runs.name`` is VARCHAR(250), ``experiments.name`` VARCHAR(256)
#: (SQLite ignores the sizes; PostgreSQL and MySQL behind a server refuse longer names).
MAX_RUN_NAME_LEN = 250
MAX_EXPERIMENT_NAME_LEN = 256


#: The shortest run-id prefix taken for a whole id (the tables print 8 characters).
MIN_ID_PREFIX = 8
RUN_ID_LEN = 32


class RunNotFound(TrackingError):
    """No run with that id in the store (a typo, or another store)."""


class AmbiguousRunId(RunNotFound):
    """A run-id prefix that several runs share, or one too short to be taken."""


class StoreNotCreated(TrackingError):
    """A new SQLite store could not be made (a full disk, say): nothing of it was left."""


def configure_http(timeout_s: int = 10, max_retries: int = 2) -> None:
    """Bound MLflow's HTTP retries (by default it retries a dead server for minutes)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` (HTTP retries bounded by :func:`configure_http`)."""
    if "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ:
        configure_http()
    # MLflow logs each SQL error with a traceback before raising it; the pipeline says, in
    # one line, what a refused write means for the run.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    import mlflow

    # Some of MLflow's own code builds a client from the process-wide URI rather than ours
    # (listing a run's artifacts looks up its logged models with ``MlflowClient()``): left
    # unset, that is MLflow's default ``sqlite:///mlflow.db`` and a stray, empty store
    # appears in the working folder. The process-wide tracking URI follows the store in use;
    # the registry URI is left unset, so it defaults to each client's own tracking URI (set
    # process-wide, it would redirect every other client's registry in this process).
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def preload() -> None:
    """Import MLflow and its SQL store now: a sweep worker does it while it waits for its
    first job, instead of on that job's time."""
    import mlflow
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def tag_value(name: str, value: Any) -> str:
    """A tag's value as stored: passwords masked (:mod:`redact`), the ``error`` tag as plain
    text; cut to MLflow's limit."""
    text = keys.plain_text(str(value)) if name == keys.ERROR else str(value)
    return redact.mask(text)[:MAX_TAG_LEN]


def param_value(value: Any) -> str:
    """A param's value as stored: passwords masked, cut to MLflow's limit."""
    return redact.mask(str(value))[:MAX_PARAM_LEN]


def tag_batches(tags: Mapping[str, Any]) -> Iterator[list[list[str]]]:
    """``[name, value]`` pairs, values cut to MLflow's limit, in batches of 100."""
    return chunks([[k, tag_value(k, v)] for k, v in tags.items()], MAX_PARAMS_PER_BATCH)


# --- checks before anything is written --------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, timeout_s: float = 5.0, attempts: int = 2) -> None:
    """Fail fast, with a clear message, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    reason = ""
    for attempt in range(attempts):
        try:
            response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
            if response.ok:
                return
            reason = f"HTTP {response.status_code} from /health"
        except requests.RequestException as e:
            reason = type(e).__name__
        if attempt + 1 < attempts:
            time.sleep(1.0)
    raise TrackingError(
        f"Cannot reach the MLflow tracking server at tracking.uri={uri!r} ({reason}). Start it "
        f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix tracking.uri, or use the "
        f"embedded store with tracking=local. Nothing was run."
    )


def check_writable(uri: str) -> None:
    """An existing SQLite store must take a write (not read-only, not immutable, not locked
    for good); a missing one is created later. The probe write is rolled back."""
    db = sqlite_path(uri)
    if db is None or not db.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
            # SQLite opens a file it cannot write read-only, silently: only a write tells.
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE main.pipeline_write_probe (x INTEGER)")
            con.rollback()
    except sqlite3.Error as e:
        if "not a database" in str(e) or "malformed" in str(e):
            raise TrackingError(
                f"The MLflow store {db} (tracking.uri) is not a valid SQLite database ({e}): "
                f"the file is damaged or is something else. Move it aside (nothing in it can "
                f"be read) or point tracking.uri / paths.mlruns_dir at another store. Nothing "
                f"was run.") from e
        raise TrackingError(
            f"The MLflow store {db} (tracking.uri) cannot be written: {e}. Make the file and its "
            f"folder writable (check `ls -l` and `lsattr`), or point tracking.uri / "
            f"paths.mlruns_dir at a writable folder. Nothing was run.") from e


# --- creating the store -----------------------------------------------------------------------


def prepare_store(cfg: TrackingConfig, checked: bool = False) -> str:
    """Create the store's folders, schema and experiment if needed (once, before parallel jobs
    start); return the experiment id. ``checked``: the caller's preflight configured, reached
    and probed the store just before (:func:`pipeline.run.preflight.check`)."""
    if not checked:
        configure_http(cfg.http_timeout_s, cfg.http_max_retries)
        check_reachable(cfg.uri)
        check_writable(cfg.uri)
    db = sqlite_path(cfg.uri)
    if db is None:
        return experiment_id(client(cfg.uri), cfg)
    made = _make_dirs([db.parent, *([Path(cfg.artifact_location)] if cfg.artifact_location
                                    else [])])
    lock_file = db.with_name(db.name + ".lock")
    try:
        # Processes that open a fresh SQLite store at once corrupt its schema (two sweeps
        # started together, say): one at a time creates it, the others then find it ready.
        with open(lock_file, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not db.exists():
                    _create_sqlite(db, cfg)
                return experiment_id(client(cfg.uri), cfg)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except (StoreNotCreated, OSError) as e:
        if db.exists():
            raise
        lock_file.unlink(missing_ok=True)
        for folder in reversed(made):  # only the folders made here, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, StoreNotCreated):
            raise
        raise StoreNotCreated(_not_created(db, e)) from e


def _make_dirs(folders: list[Path]) -> list[Path]:
    """Create ``folders`` (and their missing parents); return those made, outermost first."""
    made: list[Path] = []
    for folder in folders:
        missing = []
        at = folder.absolute()
        while not at.exists() and at != at.parent:
            missing.append(at)
            at = at.parent
        for m in reversed(missing):
            m.mkdir(exist_ok=True)
            made.append(m)
    return made


def _not_created(db: Path, e: BaseException) -> str:
    cause: BaseException | None = e
    reason = f"{type(e).__name__}: {e}"
    while cause is not None:  # the innermost sqlite3 or OS error says it best
        if isinstance(cause, sqlite3.Error | OSError):
            reason = str(cause)
        cause = getattr(cause, "orig", None) or cause.__cause__ or cause.__context__
    disk = db.parent.absolute()
    while not disk.exists() and disk != disk.parent:
        disk = disk.parent
    return (f"Cannot create the MLflow store {db} (tracking.uri): {keys.plain_text(reason)}. "
            f"Free space on that disk (check `df -h {disk}`) or point tracking.uri / "
            f"paths.mlruns_dir at another folder. Nothing was run or left behind.")


def _create_sqlite(db: Path, cfg: TrackingConfig) -> None:
    """A new SQLite store, whole or not at all: its schema (and the experiment) are written to
    a temporary file beside it, renamed into place once complete; on failure (a full disk) the
    temporary file goes and :class:`StoreNotCreated` says why."""
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    try:
        made = client(f"sqlite:///{tmp}")
        experiment_id(made, cfg)
        with contextlib.suppress(Exception):  # close the temporary file's connections
            made._tracking_client.store.engine.dispose()
        tmp.replace(db)
    except Exception as e:
        raise StoreNotCreated(_not_created(db, e)) from e
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal",
                                                                      "-shm"))):
            leftover.unlink(missing_ok=True)


def experiment_id(mlflow_client: Any, cfg: TrackingConfig) -> str:
    """The experiment's id, created if needed and tagged as a model-training experiment (MLflow
    3 would otherwise open it in its GenAI view, an empty traces dashboard)."""
    exp = mlflow_client.get_experiment_by_name(cfg.experiment_name)
    if exp is None:
        location = (Path(cfg.artifact_location).resolve().as_uri() if cfg.artifact_location
                    else None)
        try:
            return mlflow_client.create_experiment(
                cfg.experiment_name, artifact_location=location,
                tags={keys.EXPERIMENT_KIND: keys.KIND_TRAINING})
        except Exception:  # another job created it between our two calls
            exp = mlflow_client.get_experiment_by_name(cfg.experiment_name)
            if exp is None:
                raise
    if keys.EXPERIMENT_KIND not in exp.tags:  # made by an older version or by hand
        mlflow_client.set_experiment_tag(exp.experiment_id, keys.EXPERIMENT_KIND,
                                         keys.KIND_TRAINING)
    return exp.experiment_id


# --- stored runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What the comparison and rerun commands need of a stored run, without MLflow types."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _record(run: Any) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status,
                     run.info.experiment_id, run.info.start_time or 0, dict(run.data.params),
                     dict(run.data.metrics), dict(run.data.tags))


def start_parent_run(cfg: TrackingConfig, run_name: str, tags: Mapping[str, str]) -> str:
    """Create the store if needed and a RUNNING parent run for a sweep; return its id."""
    exp_id = prepare_store(cfg)
    run = client(cfg.uri).create_run(exp_id, run_name=redact.mask(run_name)[:MAX_RUN_NAME_LEN],
                                     tags={k: v for batch in tag_batches(tags) for k, v in batch})
    return run.info.run_id


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    c = client(uri)
    for batch in tag_batches(tags):
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in batch], synchronous=True)


def end_run(uri: str, run_id: str, status: str = keys.FINISHED) -> None:
    client(uri).set_terminated(run_id, status)


def resolve_run_id(uri: str, ref: str) -> str:
    """The whole id of the run ``ref`` names: a whole id, or a prefix of at least
    :data:`MIN_ID_PREFIX` characters that one run's id starts with. Every command that takes a
    run id goes through here (via :func:`get_run`). :class:`AmbiguousRunId` for a prefix too
    short or shared; :class:`RunNotFound` when no run has it."""
    ref = ref.strip().lower()
    if len(ref) >= RUN_ID_LEN:
        return ref
    if len(ref) < MIN_ID_PREFIX or any(c not in "0123456789abcdef" for c in ref):
        raise AmbiguousRunId(f"run id {ref!r} is too short or not an id: give the whole id or "
                             f"at least its first {MIN_ID_PREFIX} characters (as the tables "
                             f"print them).")
    found = _ids_starting_with(uri, ref)
    if not found:
        raise RunNotFound(f"no run with id {ref!r} in {uri} (see python -m pipeline.compare "
                          f"for the runs there).")
    if len(found) > 1:
        raise AmbiguousRunId(f"run id prefix {ref!r} is ambiguous in {uri}: {len(found)} runs "
                             f"start with it ({', '.join(sorted(found)[:4])}"
                             f"{', ...' if len(found) > 4 else ''}); give more characters.")
    return found[0]


def _ids_starting_with(uri: str, prefix: str) -> list[str]:
    db = sqlite_path(uri)
    if db is not None:  # one indexed query instead of reading every run
        if not db.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=30)) as con:
            rows = con.execute("SELECT run_uuid FROM runs WHERE run_uuid LIKE ?",
                               (prefix + "%",)).fetchall()
        return [r[0] for r in rows]
    from mlflow.entities import ViewType

    c = client(uri)
    ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    found, token = [], None
    while ids:
        page = c.search_runs(ids, "", run_view_type=ViewType.ALL, max_results=1000,
                             page_token=token)
        found += [r.info.run_id for r in page if r.info.run_id.startswith(prefix)]
        token = page.token
        if not token:
            break
    return found


def get_run(uri: str, run_id: str) -> RunRecord:
    """A stored run, named by its id or a unique prefix of it (:func:`resolve_run_id`);
    :class:`RunNotFound` if the store has no such run."""
    from mlflow.exceptions import MlflowException

    run_id = resolve_run_id(uri, run_id)
    try:
        return _record(client(uri).get_run(run_id))
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower():
            raise RunNotFound(f"no run with id {run_id!r} in {uri} (see python -m "
                              f"pipeline.compare for the runs there).") from e
        raise


def search_runs(uri: str, experiment_names: list[str] | None = None, filter_string: str = "",
                parent_run_id: str | None = None, include_parents: bool = False
                ) -> list[RunRecord]:
    """Runs of the named experiments (all if None), optionally only a sweep's children.

    ``filter_string`` is MLflow's search syntax (``params.algorithm.name = 'maml'``); parent runs
    of sweeps are left out unless asked for by id. Oldest first.
    """
    c = client(uri)
    if parent_run_id is not None:
        ids = [c.get_run(parent_run_id).info.experiment_id]
        clause = f"tags.`{keys.PARENT_RUN}` = '{parent_run_id}'"
        filter_string = f"{filter_string} and {clause}" if filter_string else clause
    elif experiment_names:
        ids = []
        for name in experiment_names:
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise ValueError(f"MLflow experiment {name!r} does not exist in {uri}.")
            ids.append(exp.experiment_id)
    else:
        ids = [e.experiment_id for e in c.search_experiments()]
    runs, token = [], None
    while True:
        page = c.search_runs(ids, filter_string, max_results=1000, page_token=token,
                             order_by=["attributes.start_time ASC"])
        runs += [_record(r) for r in page]
        token = page.token
        if not token:
            break
    if not include_parents:  # sweep parents and paired comparisons are not experiment runs
        runs = [r for r in runs
                if r.tags.get(keys.SWEEP_ROLE) not in (keys.ROLE_PARENT, keys.ROLE_PAIRED)]
    return runs


def metric_history(uri: str, run_id: str, key: str) -> dict[int, float]:
    """Every value of one metric by step (per-task metrics: step = test task index)."""
    return {m.step: m.value for m in client(uri).get_metric_history(run_id, key)}


def download_artifacts(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    """Download one artifact folder or file of a run; None if the run has none there."""
    c = client(uri)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(c.download_artifacts(run_id, path, str(dst)))
    except Exception:
        return None


def model_weights(model_uri: str, tracking_uri: str) -> list:
    """The weights of a logged Keras model (``runs:/<id>/model``, ``models:/...`` or a folder)."""
    client(tracking_uri)  # bounded HTTP retries
    import mlflow

    if model_uri.startswith("runs:/"):  # the run may be named by a prefix of its id
        ref, _, rest = model_uri.removeprefix("runs:/").partition("/")
        model_uri = f"runs:/{resolve_run_id(tracking_uri, ref)}/{rest}"

    with tempfile.TemporaryDirectory() as tmp:  # the download is not kept: only the weights
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                                    tracking_uri=tracking_uri)
        return mlflow.keras.load_model(local).get_weights()


def log_comparison(uri: str, run_id: str, table: Any, files: Mapping[str, Path],
                   figure: Any | None, table_file: str = keys.COMPARISON_TABLE,
                   figure_file: str = keys.COMPARISON_PLOT) -> None:
    """Attach a comparison to a run: a table (``mlflow.log_table``), files, and a figure."""
    c = client(uri)
    if table is not None and len(table):
        c.log_table(run_id, data=table, artifact_file=table_file)
    log_files(uri, run_id, files, {figure_file: figure} if figure is not None else None)


# --- sweeps: group runs, statuses, values -------------------------------------------------------


def create_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, Any]) -> str:
    """A RUNNING run in experiment id ``experiment`` (a sweep's group run: its parent link is
    the ``mlflow.parentRunId`` tag); return its id."""
    run = client(uri).create_run(experiment, run_name=redact.mask(run_name)[:MAX_RUN_NAME_LEN],
                                 tags={k: v for batch in tag_batches(tags) for k, v in batch})
    return run.info.run_id


def set_status(uri: str, run_id: str, status: str) -> None:
    """End a run with ``status``, or reopen it (``RUNNING``: a resumed sweep's parent)."""
    if status == keys.RUNNING:
        client(uri).update_run(run_id, status=status)
    else:
        client(uri).set_terminated(run_id, status)


def delete_tag(uri: str, run_id: str, key: str) -> None:
    with contextlib.suppress(Exception):  # absent already
        client(uri).delete_tag(run_id, key)


def log_values(uri: str, run_id: str, params: Mapping[str, Any] | None = None,
               metrics: Mapping[str, float] | None = None, step: int = 0) -> None:
    """Params and step-``step`` metrics of a stored run, in batches."""
    from mlflow.entities import Metric, Param

    c = client(uri)
    now = int(time.time() * 1000)
    for batch in chunks([Param(k, param_value(v)) for k, v in (params or {}).items()],
                        MAX_PARAMS_PER_BATCH):
        c.log_batch(run_id, params=batch, synchronous=True)
    for batch in chunks([Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
                        MAX_METRICS_PER_BATCH):
        c.log_batch(run_id, metrics=batch, synchronous=True)


def log_files(uri: str, run_id: str, files: Mapping[str, Path],
              figures: Mapping[str, Any] | None = None) -> None:
    """Files (artifact folder -> local file) and matplotlib figures (artifact file -> figure)."""
    c = client(uri)
    with tempfile.TemporaryDirectory() as scratch:
        for artifact_path, path in files.items():
            c.log_artifact(run_id, str(redact.masked_copy(Path(path), Path(scratch))),
                           artifact_path)
    for artifact_file, figure in (figures or {}).items():
        c.log_figure(run_id, figure, artifact_file)


def latest_run(uri: str, experiment_name: str, filter_string: str) -> RunRecord | None:
    """The most recently started run of an experiment matching ``filter_string``."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string, max_results=1,
                         order_by=["attributes.start_time DESC"])
    return _record(runs[0]) if runs else None


def has_artifact(uri: str, run_id: str, path: str) -> bool:
    try:
        return bool(client(uri).list_artifacts(run_id, path))
    except Exception:
        return False


def log_series(uri: str, run_id: str, name: str, values: list[float]) -> None:
    """One metric at steps 0, 1, 2, ... (per-task values), in batches."""
    from mlflow.entities import Metric

    c = client(uri)
    now = int(time.time() * 1000)
    for batch in chunks([Metric(name, float(v), now, i) for i, v in enumerate(values)],
                        MAX_METRICS_PER_BATCH):
        c.log_batch(run_id, metrics=batch, synchronous=True)


def register_model(uri: str, run_id: str, name: str, description: str,
                   tags: Mapping[str, Any], artifact: str = keys.MODEL_DIR,
                   alias: str | None = None) -> str:
    """Register run ``run_id``'s logged model (the artifact folder ``artifact``) as a new version
    of ``name`` in the Model Registry, with ``description`` and, if given, ``alias`` pointed at
    it; return the version."""
    import mlflow

    c = client(uri)
    found = has_artifact(uri, run_id, artifact) or (artifact == keys.MODEL_DIR
                                                     and _logged_model(c, run_id))
    if not found:
        which = "" if artifact == keys.MODEL_DIR else f" {artifact}/"
        raise TrackingError(f"run {run_id} has no logged model{which} (it ran with "
                            f"tracking.log_model=false, or did not finish): nothing to register.")
    with contextlib.suppress(Exception):  # exists already
        c.create_registered_model(name)
    version = mlflow.register_model(f"runs:/{run_id}/{artifact}", name,
                                    tags={k: str(v) for k, v in tags.items()})
    c.update_model_version(name, version.version, description=description)
    if alias is not None:
        c.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def registered_version(uri: str, name: str, run_id: str) -> str | None:
    """The version of registered model ``name`` that holds run ``run_id``'s model, if any."""
    c = client(uri)
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except Exception:  # no such registered model yet
        return None
    same = [v for v in versions if v.run_id == run_id]
    return str(max(int(v.version) for v in same)) if same else None


def _logged_model(c: Any, run_id: str) -> bool:
    """MLflow 3 keeps models as LoggedModel entities outside the run's artifacts."""
    try:
        run = c.get_run(run_id)
        return bool(run.outputs and run.outputs.model_outputs)
    except Exception:
        return False


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """A link to a run (or experiment) in the MLflow UI of a tracking server, opening its
    model-training view; None for an embedded store (no UI runs at its address)."""
    if not uri.startswith(("http://", "https://")):
        return None
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{uri.rstrip('/')}/#/{page}?{keys.UI_TRAINING_VIEW}"
