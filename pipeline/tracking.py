"""Everything MLflow: the only module that imports mlflow.

One pipeline run is one MLflow run. Params, tags and metrics go through ``MlflowClient.log_batch``
in chunks within MLflow's limits, never one call per value. A run that raises is ended FAILED
(KILLED on Ctrl-C) with the reason in the ``error`` tag; whatever it logged before stays.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig

# Bound HTTP retries before mlflow reads them: its default retries a dead server for minutes.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000

ERROR_TAG = "error"
STATUS_FAILED, STATUS_KILLED, STATUS_FINISHED = "FAILED", "KILLED", "FINISHED"


def _configure_http(cfg: TrackingConfig) -> None:
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.http_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_max_retries)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def prepare_store(cfg: TrackingConfig) -> None:
    """Create the local store's folders and schema (call once before parallel jobs start)."""
    _configure_http(cfg)
    import mlflow

    db = _sqlite_path(cfg.uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        if cfg.artifact_location:
            Path(cfg.artifact_location).mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=cfg.uri)
    _experiment_id(client, cfg)


def _experiment_id(client, cfg: TrackingConfig) -> str:
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        return exp.experiment_id
    location = Path(cfg.artifact_location).resolve().as_uri() if cfg.artifact_location else None
    try:
        return client.create_experiment(cfg.experiment_name, artifact_location=location)
    except Exception:  # another job created it between our two calls
        exp = client.get_experiment_by_name(cfg.experiment_name)
        if exp is None:
            raise
        return exp.experiment_id


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Tracker:
    """A handle on the active MLflow run."""

    def __init__(self, cfg: TrackingConfig):
        _configure_http(cfg)
        import mlflow

        self.cfg = cfg
        self.mlflow = mlflow
        prepare_store(cfg)
        mlflow.set_tracking_uri(cfg.uri)
        self.client = mlflow.MlflowClient(tracking_uri=cfg.uri)
        self.experiment_id = _experiment_id(self.client, cfg)
        self.run_id: str | None = None
        #: Seconds spent inside MLflow calls (tracking overhead).
        self.seconds = 0.0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t

    @contextlib.contextmanager
    def run(self, run_name: str | None, tags: Mapping[str, str]) -> Iterator[Tracker]:
        """Start a run; end it FINISHED, or FAILED/KILLED with the reason if the body raises."""
        with self._timed():
            active = self.mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name,
                                           tags={k: str(v)[:_MAX_TAG_LEN] for k, v in tags.items()})
        self.run_id = active.info.run_id
        try:
            yield self
        except BaseException as e:
            killed = isinstance(e, KeyboardInterrupt | SystemExit)
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            with contextlib.suppress(Exception):
                self.client.set_tag(self.run_id, ERROR_TAG, reason[:_MAX_TAG_LEN])
            self.mlflow.end_run(STATUS_KILLED if killed else STATUS_FAILED)
            raise
        with self._timed():
            self.mlflow.end_run(STATUS_FINISHED)

    # --- batched logging ----------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in sorted(params.items())]
        with self._timed():
            for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=chunk, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:_MAX_TAG_LEN]) for k, v in tags.items()]
        with self._timed():
            for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=chunk, synchronous=True)

    def log_metrics(self, series: Mapping[str, Any], steps: Any = None) -> None:
        """Log metrics in batches of 1,000.

        ``series`` maps a name to a scalar (logged at step 0) or to a sequence of values logged at
        ``steps`` (default 0, 1, 2, ...).
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for name, values in series.items():
            if hasattr(values, "__len__"):
                at = range(len(values)) if steps is None else steps
                items += [Metric(name, float(v), now, int(s))
                          for v, s in zip(values, at, strict=True)]
            else:
                items.append(Metric(name, float(values), now, 0))
        with self._timed():
            for chunk in _chunks(items, _MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    # --- artifacts, inputs, models ------------------------------------------------------------

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        with self._timed():
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        with self._timed():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        with self._timed():
            self.client.log_figure(self.run_id, figure, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        with self._timed():
            self.client.log_dict(self.run_id, dict(data), artifact_file)

    def log_dataset(self, path: Path, fingerprint: str, name: str, generating_config: dict,
                    arrays: Mapping[str, Any] | None) -> None:
        """Record the data as a run input: the file itself if small, else its fingerprint.

        ``arrays`` (features and targets) are given when the data is small enough to log whole.
        """
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        digest = fingerprint[:32]
        with self._timed():
            if arrays is not None:
                self.client.log_artifact(self.run_id, str(path), "data")
                with warnings.catch_warnings():  # a local path matches two equivalent sources
                    warnings.simplefilter("ignore", UserWarning)
                    dataset = self.mlflow.data.from_numpy(
                        arrays["features"], targets=arrays["targets"], source=str(path),
                        name=name, digest=digest)
            else:
                with warnings.catch_warnings():  # a local path matches two equivalent sources
                    warnings.simplefilter("ignore", UserWarning)
                    source = resolve_dataset_source(str(path))
                dataset = MetaDataset(source, name=name, digest=digest)
            self.client.log_dict(self.run_id, generating_config, "data/generating_config.json")
            for attempt in range(3):  # parallel jobs racing to register the same dataset
                try:
                    self.mlflow.log_input(dataset, context="generate")
                    break
                except self.mlflow.exceptions.MlflowException as e:
                    if "UNIQUE constraint" not in str(e) or attempt == 2:
                        raise
                    time.sleep(0.2 * (attempt + 1))

    def log_keras_model(self, model: Any, example_x: Any, name: str = "model") -> str:
        """Log a Keras model with a signature and explicit requirements; return its model URI."""
        import keras
        import numpy as np
        import tensorflow as tf
        from mlflow.models import infer_signature

        signature = infer_signature(example_x, np.asarray(model(example_x)))
        with self._timed():
            info = self.mlflow.keras.log_model(
                model, name=name, signature=signature,
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
                                  f"numpy=={np.__version__}"])
        return info.model_uri


# --- sweeps, comparison and reruns: plain records in, plain records out -----------------------

PARENT_TAG = "mlflow.parentRunId"


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


def client(uri: str, http_timeout_s: int = 10, http_max_retries: int = 2) -> Any:
    """An MlflowClient on ``uri`` with bounded HTTP retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(http_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(http_max_retries))
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def start_parent_run(cfg: TrackingConfig, run_name: str, tags: Mapping[str, str]) -> str:
    """Create the store if needed and a RUNNING parent run for a sweep; return its id."""
    prepare_store(cfg)
    c = client(cfg.uri)
    run = c.create_run(_experiment_id(c, cfg), run_name=run_name,
                       tags={k: str(v)[:_MAX_TAG_LEN] for k, v in tags.items()})
    return run.info.run_id


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:_MAX_TAG_LEN]) for k, v in tags.items()]
    c = client(uri)
    for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
        c.log_batch(run_id, tags=chunk, synchronous=True)


def end_run(uri: str, run_id: str, status: str = STATUS_FINISHED) -> None:
    client(uri).set_terminated(run_id, status)


def get_run(uri: str, run_id: str) -> RunRecord:
    return _record(client(uri).get_run(run_id))


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
        clause = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
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
    if not include_parents:
        runs = [r for r in runs if r.tags.get("sweep_role") != "parent"]
    return runs


def metric_history(uri: str, run_id: str, key: str) -> dict[int, float]:
    """Every value of one metric by step (per-task metrics: step = test task index)."""
    return {m.step: m.value for m in client(uri).get_metric_history(run_id, key)}


def metric_keys(uri: str, run_id: str) -> list[str]:
    return sorted(client(uri).get_run(run_id).data.metrics)


def download_artifacts(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    """Download one artifact folder or file of a run; None if the run has none there."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    c = client(uri)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(c.download_artifacts(run_id, path, str(dst)))
    except Exception:
        return None


def log_comparison(uri: str, run_id: str, table: Any, files: Mapping[str, Path],
                   figure: Any | None) -> None:
    """Attach a comparison to a run: a table (``mlflow.log_table``), files, and a figure."""
    c = client(uri)
    if table is not None and len(table):
        c.log_table(run_id, data=table, artifact_file="comparison/comparison_table.json")
    for artifact_path, path in files.items():
        c.log_artifact(run_id, str(path), artifact_path)
    if figure is not None:
        c.log_figure(run_id, figure, "comparison/objective_vs_swept.png")
