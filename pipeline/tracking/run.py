"""The live run: one pipeline run is one MLflow run, written through a :class:`Tracker`.

Params, tags and metrics go through ``MlflowClient.log_batch`` in chunks within MLflow's limits,
never one call per value, delivered by a background thread while the run computes: the run's
status is written only after :meth:`Tracker.flush` found every record accepted. A run that
raises is ended FAILED (KILLED on Ctrl-C) with the reason
in the ``error`` tag; whatever it logged before stays. A search trial its pruner stopped
(:class:`~pipeline.errors.TrialPruned`) ends FINISHED, renamed ``pruned: ...``, without one.

Nothing is dropped when a tracking server goes away mid-run: every write is a *record* (a batch
of metrics/params/tags, an artifact file, the final status) queued in order; records the store
refuses stay queued, are written to ``mlflow_fallback.jsonl`` in the run's output folder, and are
retried on every later write and at the end. Whatever is still undelivered then can be imported
with ``python -m pipeline.tracking import FILE`` (:func:`import_fallback`). Such a run is never
ended FINISHED: it is marked FAILED with that reason if the store takes the status, the FINISHED
status waits last in the file, and :class:`Undelivered` is raised (the CLI exits non-zero). A
SQLite store deleted or replaced mid-run is found at the end (:class:`StoreLost`): what went
with it is said, not "nothing is lost".

While a run is open the same thread writes its ``heartbeat`` tag every few seconds, beside the
``host`` and ``pid`` tags set at its start: ``python -m pipeline.tracking reap`` ends runs whose
heartbeat stopped (:mod:`pipeline.tracking.liveness`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig
from pipeline.errors import TrackingError
from pipeline.tracking import keys, liveness, redact, store

log = logging.getLogger(__name__)


class Undelivered(TrackingError):
    """The run's records were not all accepted by the store: they wait in the fallback file."""


class StoreLost(TrackingError):
    """The SQLite store file was deleted or replaced while the run wrote to it."""


def _file_id(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


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
    elif kind == "model":  # a Keras model object: only queued in memory, never persisted
        import mlflow.keras
        from mlflow.models import Model

        # Off the main thread there is no active run: name the run's experiment explicitly.
        logged = mlflow.initialize_logged_model(record["name"], source_run_id=run_id,
                                                experiment_id=record["experiment_id"],
                                                params=client.get_run(run_id).data.params)
        Model.log(None, mlflow.keras, name=record["name"], run_id=run_id,
                  model_id=logged.model_id, model=record["model"], signature=record["signature"],
                  pip_requirements=record["pip_requirements"])
    elif kind == "status":
        client.set_terminated(run_id, record["status"])
    elif kind == "delete_tag":  # the reason a run was FAILED for while its records waited
        with contextlib.suppress(Exception):  # absent already
            client.delete_tag(run_id, record["key"])
    else:
        raise ValueError(f"unknown record kind {kind!r}")


class Tracker:
    """A handle on the active MLflow run, with ordered, outage-proof delivery of records."""

    def __init__(self, cfg: TrackingConfig, local_dir: Path | None = None,
                 store_checked: bool = False):
        import mlflow

        self.cfg = cfg
        self.mlflow = mlflow
        self.experiment_id = store.prepare_store(cfg, checked=store_checked)
        mlflow.set_tracking_uri(cfg.uri)
        self.client = store.client(cfg.uri)
        self.run_id: str | None = None
        self.run_name = ""
        #: Where artifacts are written before upload, and the fallback file if the store is down.
        self.local_dir = Path(local_dir) if local_dir else Path.cwd()
        self.fallback_file = self.local_dir / keys.FALLBACK_FILE
        self._pending: list[dict] = []
        self._degraded = False
        #: Records are delivered by a background thread (:meth:`_send`), in order.
        self._lock = threading.Lock()
        self._delivering = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.delivered = 0
        #: Seconds spent inside MLflow calls (tracking overhead).
        self.seconds = 0.0
        #: The SQLite store's file as it was at the start (a deleted store is told at the end).
        self._db = store.sqlite_path(cfg.uri)
        self._db_id = _file_id(self._db)
        self._last_beat = 0.0
        self._why = ""  # the store's last refusal

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
        with the reason if the body raises (or as the exception says: a pruned trial). Raises
        :class:`Undelivered` or :class:`StoreLost` after a body that succeeded if the store did
        not keep every record."""
        tags = {**tags, **liveness.start_tags()}
        run_name = redact.mask(run_name) if run_name else run_name
        full = {k: v for k, v in tags.items() if len(str(v)) > store.MAX_TAG_LEN}
        tags = {k: v for batch in store.tag_batches(tags) for k, v in batch}
        with self._timed():
            if run_id is None:
                active = self.mlflow.start_run(experiment_id=self.experiment_id,
                                               run_name=run_name, tags=tags)
            else:
                active = self.mlflow.start_run(run_id=run_id)
                self.run_id = run_id
                self.client.delete_tag(run_id, keys.ERROR)
                self.set_tags(tags)
        self.run_id, self.run_name = active.info.run_id, active.info.run_name or ""
        self._keep_whole(full, "tag")
        self._last_beat = time.monotonic()
        self._start_thread()
        try:
            yield self
        except BaseException as e:
            killed = isinstance(e, KeyboardInterrupt | SystemExit)
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            # an exception may name the status, tags and name it means (a pruned search trial:
            # FINISHED, no error)
            status = getattr(e, "run_status", None) or (keys.KILLED if killed else keys.FAILED)
            tags = {**({keys.ERROR: reason} if status != keys.FINISHED else {}),
                    **getattr(e, "run_tags", {})}
            prefix = getattr(e, "run_name_prefix", "")
            if prefix and not self.run_name.startswith(prefix):
                tags[keys.RUN_NAME] = self.run_name = prefix + self.run_name
            self.set_tags(tags)
            with contextlib.suppress(TrackingError):  # said in the log; the run's error wins
                self._end(status)
            raise
        self._end(keys.FINISHED)

    def _end(self, status: str) -> None:
        """Flush the queue, then end the run: its status is written only after every record
        before it was accepted, so a FINISHED run has all of its records. If the store refused
        some, they wait in order in the fallback file with the status last, the run is marked
        FAILED with where they wait (if the store takes that much), and :class:`Undelivered` is
        raised; a store deleted mid-run raises :class:`StoreLost`."""
        delivered = self.flush()
        self._closed = True
        self._wake.set()
        lost = self._lost_store()
        if lost:
            if status != keys.FINISHED:  # the run's own error is raised; say this beside it
                log.warning("%s", lost)
            raise StoreLost(lost)
        if delivered:
            try:
                with self._timed():
                    self.mlflow.end_run(status)
                return
            except Exception as e:
                self._why = f"{type(e).__name__}: {str(e)[:200]}"
        # The status goes after the records still queued; a FINISHED run's error goes on import.
        if status == keys.FINISHED:
            self._send({"kind": "delete_tag", "key": keys.ERROR})
        self._send({"kind": "status", "status": status})
        if self.flush():  # the store is back: everything, status last, was delivered
            return
        message = (f"Run {self.run_id}: {len(self._pending)} records were not delivered to the "
                   f"tracking store {self.cfg.uri} ({self._why or 'it refused them'}); they "
                   f"wait in {self.fallback_file}, the run's status last. Import them when the "
                   f"store takes writes again: {self.import_command()}")
        with contextlib.suppress(Exception), self._timed():
            self.client.set_tag(self.run_id, keys.ERROR, store.tag_value(keys.ERROR, message))
        with contextlib.suppress(Exception), self._timed():  # leaves the fluent run regardless
            self.mlflow.end_run(keys.FAILED if status == keys.FINISHED else status)
        if status != keys.FINISHED:
            log.warning("%s", message)
            return
        raise Undelivered(message)

    def import_command(self) -> str:
        return (f"python -m pipeline.tracking import {self.fallback_file} --tracking-uri "
                f"{self.cfg.uri}")

    def _lost_store(self) -> str | None:
        """Why the records sent are gone, if the SQLite store was deleted or replaced."""
        if self._db is None or self._db_id is None or _file_id(self._db) == self._db_id:
            return None
        how = "deleted" if not self._db.exists() else "replaced by another file"
        with contextlib.suppress(Exception):
            self.mlflow.end_run(keys.FAILED)  # leave the fluent run; the write has no store
        self._pending.clear()
        self.fallback_file.unlink(missing_ok=True)
        return (f"The tracking store {self._db} was {how} while run {self.run_id} wrote to it: "
                f"the run and the {self.delivered} records delivered to it (params, tags, "
                f"metrics, artifacts' records) went with it and are lost. The run's output "
                f"folder {self.local_dir} keeps its files (config, plots, checkpoint); run it "
                f"again to record it.")

    def _keep_whole(self, values: Mapping[str, Any], what: str) -> None:
        """Values MLflow would cut: the whole value as an artifact (``full_values/<name>.txt``);
        the tag or param holds its first characters."""
        for name, value in values.items():
            path = self._local(keys.full_value(name))
            path.write_text(redact.mask(str(value)))
            self.log_artifact(path, keys.FULL_VALUES_DIR)
            log.warning("The %s %s is %d characters, over MLflow's limit: the %s holds its start, "
                        "the artifact %s the whole value.", what, name, len(str(value)), what,
                        keys.full_value(name))

    # --- ordered delivery ---------------------------------------------------------------------

    def _send(self, record: dict) -> None:
        """Queue a record; a background thread delivers the queue in order while the run goes
        on computing (:meth:`flush` waits for it). Only the enqueueing is on the caller's time."""
        with self._lock:
            self._pending.append({"run_id": self.run_id, **record})
        self._start_thread()
        self._wake.set()

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._deliver_loop, daemon=True,
                                            name="mlflow-delivery")
            self._thread.start()

    def _deliver_loop(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=keys.HEARTBEAT_S)
            self._wake.clear()
            if self._closed:
                break
            self._drain(background=True)
            self._beat()

    def _beat(self) -> None:
        """The run's heartbeat, straight to the store (not queued: a late beat means nothing);
        skipped while the store refuses writes."""
        if self.run_id is None or self._degraded or self._closed or \
                time.monotonic() - self._last_beat < keys.HEARTBEAT_S:
            return
        self._last_beat = time.monotonic()
        with self._delivering, contextlib.suppress(Exception):
            self.client.set_tag(self.run_id, keys.HEARTBEAT, liveness.now())

    def _drain(self, background: bool = False) -> bool:
        """Deliver everything queued, in order, as far as the store accepts; True if the queue
        is empty. One deliverer at a time (the background thread or a flush)."""
        with self._delivering:
            if background and self._closed:
                # The run has ended while this thread waited for the lock: what is left is the
                # fallback file's, which only ``import`` may deliver (and then remove).
                return not self._pending
            while True:
                with self._lock:
                    if not self._pending:
                        break
                    record = self._pending[0]
                try:
                    _apply(self.client, record)
                except Exception as e:
                    self._why = f"{type(e).__name__}: {keys.plain_text(str(e))[:200]}"
                    if not self._degraded:
                        log.warning("Tracking store %s refused a write (%s: %s); keeping records "
                                    "in order in %s and retrying on each later write.",
                                    self.cfg.uri, type(e).__name__,
                                    keys.plain_text(str(e))[:200],
                                    self.fallback_file)
                    self._degraded = True
                    break
                with self._lock:
                    self._pending.pop(0)
                    self.delivered += 1
            if self._degraded:
                with self._lock:
                    self._pending = [self._model_as_artifact(r) if r["kind"] == "model" else r
                                     for r in self._pending]
                self._persist()
                if not self._pending:
                    log.warning("Tracking store %s is back: every queued record was delivered.",
                                self.cfg.uri)
                    self._degraded = False
            return not self._pending

    def flush(self) -> bool:
        """Wait until every queued record is delivered, or the store refuses one (then they wait
        in order, mirrored to the fallback file); True if nothing is left undelivered."""
        with self._timed():
            return self._drain()

    def _persist(self) -> None:
        """Mirror the undelivered records to the fallback file (removed once all delivered)."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            self.fallback_file.unlink(missing_ok=True)
            return
        self.local_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.fallback_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in pending))
        tmp.replace(self.fallback_file)

    # --- batched logging ----------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [[k, store.param_value(v)] for k, v in sorted(params.items())]
        for chunk in store.chunks(items, store.MAX_PARAMS_PER_BATCH):
            self._send({"kind": "batch", "params": chunk})
        self._keep_whole({k: v for k, v in params.items()
                          if len(str(v)) > store.MAX_PARAM_LEN}, "param")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for chunk in store.tag_batches(tags):
            self._send({"kind": "batch", "tags": chunk})
        self._keep_whole({k: v for k, v in tags.items()
                          if k != keys.ERROR and len(str(v)) > store.MAX_TAG_LEN}, "tag")

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
        for chunk in store.chunks(items, store.MAX_METRICS_PER_BATCH):
            self._send({"kind": "batch", "metrics": chunk})

    # --- artifacts, inputs, models ------------------------------------------------------------

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Queue a file or folder; one whose text holds a password (Hydra's ``.hydra/`` files
        of a command that named one) is uploaded as a masked copy (:mod:`redact`)."""
        path = redact.masked_copy(Path(local_dir), self.local_dir / "masked")
        self._send({"kind": "artifact", "local_path": str(path.resolve()),
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

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` (a CSV table, say) in the run's output folder, then upload it."""
        path = self._local(artifact_file)
        path.write_text(text)
        self.log_artifact(path, str(Path(artifact_file).parent))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        path = self._local(artifact_file)
        path.write_text(redact.mask(json.dumps(dict(data), indent=2, sort_keys=True,
                                               default=str)))
        self.log_artifact(path, str(Path(artifact_file).parent))

    def log_dataset(self, path: Path, fingerprint: str, name: str, generating_config: dict,
                    arrays: Mapping[str, Any] | None) -> None:
        """Record the data as a run input: the file itself if small, else its fingerprint.

        ``arrays`` (features and targets) are given when the data is small enough to log whole.
        """
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        if arrays is not None:
            self.log_artifact(path, keys.DATA_DIR)
        self.log_dict({**generating_config, "fingerprint": fingerprint},
                      keys.DATA_CONFIG_FILE)
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
                        "is kept in the run's tags and data/generating_config.json.",
                        keys.plain_text(str(e))[:300])

    def log_keras_model(self, model: Any, example_x: Any, name: str = keys.MODEL_DIR) -> None:
        """Queue a Keras model, with a signature and explicit requirements, as the run's logged
        model (written by the delivery thread while the run finishes).

        If the store refuses it, the model is saved in the run's output folder and queued as a
        plain artifact instead, so it is not lost.
        """
        import keras
        import numpy as np
        import tensorflow as tf
        from mlflow.models import infer_signature

        signature = infer_signature(example_x, np.asarray(model(example_x)))
        self._send({"kind": "model", "name": name, "model": model, "signature": signature,
                    "experiment_id": self.experiment_id,
                    "pip_requirements": [f"tensorflow=={tf.__version__}",
                                         f"keras=={keras.__version__}",
                                         f"numpy=={np.__version__}"]})

    def _model_as_artifact(self, record: dict) -> dict:
        """A refused model record as a plain, persistable artifact record (the model saved in
        the run's output folder)."""
        path = self._local(f"{record['name']}/model.keras")
        record["model"].save(path)
        log.warning("Could not log the model to the store; saved it to %s and queued it as an "
                    "artifact.", path)
        return {"run_id": record["run_id"], "kind": "artifact", "local_path": str(path),
                "artifact_path": record["name"]}


def end_stray_run() -> None:
    """End (FAILED) the MLflow run this process left active, if any: a long-lived sweep worker
    calls it before each job, so no job logs into an earlier job's run."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while (active := mlflow.active_run()) is not None:
        log.warning("Run %s was left active by an earlier job in this process: ended FAILED.",
                    active.info.run_id)
        mlflow.end_run(keys.FAILED)


def import_fallback(file: Path, tracking_uri: str | None = None) -> int:
    """Deliver the records of a fallback file to the store; return how many were delivered."""
    records = [json.loads(line) for line in Path(file).read_text().splitlines() if line.strip()]
    client = store.client(tracking_uri)
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
