"""Everything MLflow: the only module that imports mlflow.

One pipeline run is one MLflow run. Params, tags and metrics go through ``MlflowClient.log_batch``
in chunks within MLflow's limits, never one call per value. A run that raises is ended FAILED
(KILLED on Ctrl-C) with the reason in the ``error`` tag; whatever it logged before stays.

Nothing is dropped when a tracking server goes away mid-run: every write is a *record* (a batch
of metrics/params/tags, an artifact file, the final status) queued in order; records the store
refuses stay queued, are written to ``mlflow_fallback.jsonl`` in the run's output folder, and are
retried on every later write and at the end. Whatever is still undelivered then can be imported
with ``python -m pipeline.tracking import FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig, default_tracking_uri
from pipeline.errors import TrackingError

log = logging.getLogger(__name__)

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000

ERROR_TAG = "error"
STATUS_FAILED, STATUS_KILLED, STATUS_FINISHED = "FAILED", "KILLED", "FINISHED"


FALLBACK_FILE = "mlflow_fallback.jsonl"


def _configure_http(cfg: TrackingConfig) -> None:
    """Bound MLflow's HTTP retries (by default it retries a dead server for minutes)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.http_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


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


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def prepare_store(cfg: TrackingConfig) -> None:
    """Create the local store's folders and schema (call once before parallel jobs start)."""
    _configure_http(cfg)
    check_reachable(cfg.uri)
    import mlflow

    db = _sqlite_path(cfg.uri)
    if db is None:
        _experiment_id(mlflow.MlflowClient(tracking_uri=cfg.uri), cfg)
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    if cfg.artifact_location:
        Path(cfg.artifact_location).mkdir(parents=True, exist_ok=True)
    # Processes that open a fresh SQLite store at once corrupt its schema (two sweeps started
    # together, say): one at a time creates it, the others then find it ready.
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _experiment_id(mlflow.MlflowClient(tracking_uri=cfg.uri), cfg)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def _apply(client: Any, record: dict) -> None:
    """Deliver one queued record to the store (also used to import a fallback file)."""
    from mlflow.entities import Metric, Param, RunTag

    run_id, kind = record["run_id"], record["kind"]
    if kind == "batch":
        client.log_batch(run_id, metrics=[Metric(*m) for m in record.get("metrics", [])],
                         params=[Param(*p) for p in record.get("params", [])],
                         tags=[RunTag(*t) for t in record.get("tags", [])], synchronous=True)
    elif kind == "artifact":
        path = Path(record["local_path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(path), record.get("artifact_path"))
    elif kind == "status":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown record kind {kind!r}")


class Tracker:
    """A handle on the active MLflow run, with ordered, outage-proof delivery of records."""

    def __init__(self, cfg: TrackingConfig, local_dir: Path | None = None):
        _configure_http(cfg)
        import mlflow

        self.cfg = cfg
        self.mlflow = mlflow
        prepare_store(cfg)
        mlflow.set_tracking_uri(cfg.uri)
        self.client = mlflow.MlflowClient(tracking_uri=cfg.uri)
        self.experiment_id = _experiment_id(self.client, cfg)
        self.run_id: str | None = None
        #: Where artifacts are written before upload, and the fallback file if the store is down.
        self.local_dir = Path(local_dir) if local_dir else Path.cwd()
        self.fallback_file = self.local_dir / FALLBACK_FILE
        self._pending: list[dict] = []
        self._degraded = False
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
    def run(self, run_name: str | None, tags: Mapping[str, str],
            run_id: str | None = None) -> Iterator[Tracker]:
        """Start a run (or reopen ``run_id`` to continue it); end it FINISHED, or FAILED/KILLED
        with the reason if the body raises."""
        tags = {k: str(v)[:_MAX_TAG_LEN] for k, v in tags.items()}
        with self._timed():
            if run_id is None:
                active = self.mlflow.start_run(experiment_id=self.experiment_id,
                                               run_name=run_name, tags=tags)
            else:
                active = self.mlflow.start_run(run_id=run_id)
                self.run_id = run_id
                self.client.delete_tag(run_id, ERROR_TAG)
                self.set_tags(tags)
        self.run_id = active.info.run_id
        try:
            yield self
        except BaseException as e:
            killed = isinstance(e, KeyboardInterrupt | SystemExit)
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.set_tags({ERROR_TAG: reason})
            self._end(STATUS_KILLED if killed else STATUS_FAILED)
            raise
        self._end(STATUS_FINISHED)

    def _end(self, status: str) -> None:
        try:
            with self._timed():
                self.mlflow.end_run(status)  # leaves the fluent run even if the store is down
            ended = True
        except Exception:
            ended = False
        if not ended or self._pending:  # the status goes after the records still queued
            self._send({"kind": "status", "status": status})
        if self._pending:
            log.warning(
                "The tracking store at %s still refuses %d record(s) of run %s; nothing is lost: "
                "they are in %s. Import them when the store is back with: "
                "python -m pipeline.tracking import %s", self.cfg.uri, len(self._pending),
                self.run_id, self.fallback_file, self.fallback_file)

    # --- ordered delivery ---------------------------------------------------------------------

    def _send(self, record: dict) -> None:
        """Queue a record and deliver everything queued, in order, as far as the store accepts."""
        self._pending.append({"run_id": self.run_id, **record})
        with self._timed():
            while self._pending:
                try:
                    _apply(self.client, self._pending[0])
                except Exception as e:
                    if not self._degraded:
                        log.warning("Tracking store %s refused a write (%s: %s); keeping records "
                                    "in order in %s and retrying on each later write.",
                                    self.cfg.uri, type(e).__name__, str(e)[:200],
                                    self.fallback_file)
                    self._degraded = True
                    break
                self._pending.pop(0)
        if self._degraded:
            self._persist()
            if not self._pending:
                log.warning("Tracking store %s is back: every queued record was delivered.",
                            self.cfg.uri)
                self._degraded = False

    def _persist(self) -> None:
        """Mirror the undelivered records to the fallback file (removed once all delivered)."""
        if not self._pending:
            self.fallback_file.unlink(missing_ok=True)
            return
        self.local_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.fallback_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self._pending))
        tmp.replace(self.fallback_file)

    # --- batched logging ----------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [[k, str(v)[:_MAX_PARAM_LEN]] for k, v in sorted(params.items())]
        for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
            self._send({"kind": "batch", "params": chunk})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [[k, str(v)[:_MAX_TAG_LEN]] for k, v in tags.items()]
        for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
            self._send({"kind": "batch", "tags": chunk})

    def log_metrics(self, series: Mapping[str, Any], steps: Any = None) -> None:
        """Log metrics in batches of 1,000.

        ``series`` maps a name to a scalar (logged at step 0) or to a sequence of values logged at
        ``steps`` (default 0, 1, 2, ...).
        """
        now = int(time.time() * 1000)
        items = []
        for name, values in series.items():
            if hasattr(values, "__len__"):
                at = range(len(values)) if steps is None else steps
                items += [[name, float(v), now, int(s)] for v, s in zip(values, at, strict=True)]
            else:
                items.append([name, float(values), now, 0])
        for chunk in _chunks(items, _MAX_METRICS_PER_BATCH):
            self._send({"kind": "batch", "metrics": chunk})

    # --- artifacts, inputs, models ------------------------------------------------------------

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self._send({"kind": "artifact", "local_path": str(Path(local_dir).resolve()),
                    "artifact_path": artifact_path})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.log_artifacts(path, artifact_path)

    def _local(self, artifact_file: str) -> Path:
        path = self.local_dir / "artifacts" / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save the figure in the run's output folder, then upload it."""
        path = self._local(artifact_file)
        figure.savefig(path, dpi=110)
        self.log_artifact(path, str(Path(artifact_file).parent))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        path = self._local(artifact_file)
        path.write_text(json.dumps(dict(data), indent=2, sort_keys=True, default=str))
        self.log_artifact(path, str(Path(artifact_file).parent))

    def log_dataset(self, path: Path, fingerprint: str, name: str, generating_config: dict,
                    arrays: Mapping[str, Any] | None) -> None:
        """Record the data as a run input: the file itself if small, else its fingerprint.

        ``arrays`` (features and targets) are given when the data is small enough to log whole.
        """
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        if arrays is not None:
            self.log_artifact(path, "data")
        self.log_dict({**generating_config, "fingerprint": fingerprint},
                      "data/generating_config.json")
        digest = fingerprint[:32]
        with warnings.catch_warnings():  # a local path matches two equivalent sources
            warnings.simplefilter("ignore", UserWarning)
            if arrays is not None:
                dataset = self.mlflow.data.from_numpy(
                    arrays["features"], targets=arrays["targets"], source=str(path), name=name,
                    digest=digest)
            else:
                dataset = MetaDataset(resolve_dataset_source(str(path)), name=name, digest=digest)
        try:
            with self._timed():
                for attempt in range(3):  # parallel sweep jobs racing to register one dataset
                    try:
                        self.mlflow.log_input(dataset, context="generate")
                        break
                    except self.mlflow.exceptions.MlflowException as e:
                        if "UNIQUE constraint" not in str(e) or attempt == 2:
                            raise
                        time.sleep(0.2 * (attempt + 1))
        except Exception as e:  # the fingerprint is also a tag and in generating_config.json
            log.warning("Could not record the data set as a run input (%s); its fingerprint "
                        "is kept in the run's tags and data/generating_config.json.", e)

    def log_keras_model(self, model: Any, example_x: Any, name: str = "model") -> str | None:
        """Log a Keras model with a signature and explicit requirements; return its model URI.

        If the store refuses it, the model is saved in the run's output folder and queued as a
        plain artifact instead, so it is not lost.
        """
        import keras
        import numpy as np
        import tensorflow as tf
        from mlflow.models import infer_signature

        signature = infer_signature(example_x, np.asarray(model(example_x)))
        try:
            with self._timed():
                info = self.mlflow.keras.log_model(
                    model, name=name, signature=signature,
                    pip_requirements=[f"tensorflow=={tf.__version__}",
                                      f"keras=={keras.__version__}", f"numpy=={np.__version__}"])
            return info.model_uri
        except Exception as e:
            path = self._local(f"{name}/model.keras")
            model.save(path)
            log.warning("Could not log the model to the store (%s); saved it to %s and queued "
                        "it as an artifact.", e, path)
            self.log_artifact(path, name)
            return None


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


def model_weights(model_uri: str, tracking_uri: str) -> list:
    """The weights of a logged Keras model (``runs:/<id>/model``, ``models:/...`` or a folder)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:  # the download is not kept: only the weights
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                                    tracking_uri=tracking_uri)
        return mlflow.keras.load_model(local).get_weights()


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


def import_fallback(file: Path, tracking_uri: str | None = None) -> int:
    """Deliver the records of a fallback file to the store; return how many were delivered."""
    import mlflow

    records = [json.loads(line) for line in Path(file).read_text().splitlines() if line.strip()]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    for i, record in enumerate(records):
        try:
            _apply(client, record)
        except Exception as e:
            rest = records[i:]
            Path(file).write_text("".join(json.dumps(r) + "\n" for r in rest))
            raise TrackingError(f"Delivered {i} of {len(records)} records from {file}; the store "
                                f"refused the next ({e}). The {len(rest)} undelivered records "
                                f"remain in the file; run the import again.") from e
    Path(file).unlink()
    return len(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking",
                                     description="Tracking-store utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="deliver a run's mlflow_fallback.jsonl to the store")
    imp.add_argument("file", type=Path)
    imp.add_argument("--tracking-uri", default=None,
                     help="store to write to (default: MLFLOW_TRACKING_URI or the local store)")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    count = import_fallback(args.file, uri)
    print(f"Delivered {count} records from {args.file} to {uri}.")


if __name__ == "__main__":
    main()
