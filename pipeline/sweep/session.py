"""One sweep, in the process that launches it: the single owner of the sweep's parent run, its
group runs, the parent file the jobs read, the parent's heartbeat and the stop.

The callback (:mod:`pipeline.sweep.callback`) opens the session before any job starts; a
sweeper that decides its jobs as it goes (the Optuna search, :mod:`pipeline.search.driver`)
finds it with :func:`current` and adds its groups through it. A launcher gets what it needs as
plain callables: :func:`on_worker_lost` (a job's worker died: end its run FAILED) and
:func:`is_stopping` (no queued job may start), both keyed by the sweep folder so they work in
any process that sees it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.analysis import groups
from pipeline.errors import ConfigError
from pipeline.sweep import workers
from pipeline.sweep.plan import PARENT_FILE
from pipeline.tracking import keys, liveness, store
from pipeline.tracking.store import RunRecord

log = logging.getLogger(__name__)

#: Longest wait, after SIGTERM, for the workers' runs to be marked KILLED.
STOP_WAIT_S = 120.0


def sweep_dir_of(config: Any) -> Path:
    """The sweep folder, absolute: from a job's ``HydraConfig`` or the whole config."""
    node = config.hydra if "hydra" in config else config
    return Path(str(node.sweep.dir)).absolute()


@dataclass
class ParentFile:
    """``<sweep dir>/mlflow_parent.json``: how a job finds its parent and group runs."""

    run_id: str
    tracking_uri: str
    swept: list[str] = field(default_factory=list)
    #: job number (as a string) -> group run id
    groups: dict[str, str] = field(default_factory=dict)
    resume: bool = False

    @classmethod
    def load(cls, sweep_dir: Path) -> ParentFile | None:
        path = sweep_dir / PARENT_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(raw["run_id"], raw.get("tracking_uri", ""), list(raw.get("swept", [])),
                   dict(raw.get("groups", {})), bool(raw.get("resume", False)))

    def save(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = sweep_dir / f".{PARENT_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(sweep_dir / PARENT_FILE)  # a job never reads half a file


class SweepSession:
    """The parent run, the groups and the stop of one sweep (see the module's docstring)."""

    def __init__(self, uri: str, sweep_dir: Path):
        self.uri, self.sweep_dir = uri, sweep_dir
        self.parent: ParentFile | None = None
        self.group_ids: set[str] = set()
        #: Set by a sweeper that ran to its own end (its failed trials within its limit): the
        #: parent ends FINISHED even though some jobs' runs did not.
        self.completed_by_sweeper = False
        #: Why the sweep stopped before its end (the parent's ``error`` tag).
        self.failure: str | None = None
        self._stopped: int | None = None
        self._stopped_parent: str | None = None
        self._signal_busy: Callable[[int], None] | None = None

    @property
    def parent_run_id(self) -> str | None:
        return self.parent.run_id if self.parent is not None else None

    # --- the parent and its groups ------------------------------------------------------------

    def create_parent(self, cfg: Any, name: str, tags: dict[str, Any], swept: list[str]) -> str:
        run_id = store.start_parent_run(cfg, name, tags)
        self.parent = ParentFile(run_id, cfg.uri, swept)
        return run_id

    def attach_parent(self, run_id: str, swept: list[str], mapping: dict[int, str]) -> None:
        """A resumed sweep: the earlier parent and its groups."""
        self.parent = ParentFile(run_id, self.uri, swept,
                                 {str(n): g for n, g in mapping.items()}, resume=True)
        self.group_ids = set(mapping.values())

    def create_group(self, name: str, jobs: list[int], group_by: list[str],
                     extra_tags: dict[str, str] | None = None) -> str:
        """A group run under the parent for jobs ``jobs`` (their file entry saved by
        :meth:`save`)."""
        assert self.parent is not None
        parent = store.get_run(self.uri, self.parent.run_id)
        group_id = store.create_run(self.uri, parent.experiment_id, name, {
            keys.SWEEP_ROLE: keys.ROLE_GROUP, keys.PARENT_RUN: self.parent.run_id,
            keys.SWEEP_ID: parent.tags.get(keys.SWEEP_ID, ""),
            keys.GROUP_BY: json.dumps(group_by), keys.GROUP_JOBS: json.dumps(jobs),
            **(extra_tags or {})})
        self.add_group(group_id, jobs)
        return group_id

    def add_group(self, group_id: str, jobs: list[int]) -> None:
        assert self.parent is not None
        self.group_ids.add(group_id)
        self.parent.groups |= {str(n): group_id for n in jobs}

    def add_swept(self, key: str) -> None:
        assert self.parent is not None
        self.parent.swept = list(dict.fromkeys([*self.parent.swept, key]))

    def save(self) -> None:
        """Write the parent file the jobs read (only this session writes it)."""
        assert self.parent is not None
        self.parent.save(self.sweep_dir)

    # --- the sweep's life -----------------------------------------------------------------------

    def start(self) -> None:
        """Before the first job: the parent file, the stop cleared, the heartbeat, the signals,
        and the parent never left RUNNING if the process ends early."""
        global _current
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / workers.STOP_FILE).unlink(missing_ok=True)  # left by a stopped run
        self.save()
        workers.mark_launcher()
        atexit.register(self.abandon)
        self._handle_signals()
        self._start_heartbeat()
        _current = self

    def end(self, finished: bool) -> str | None:
        """The sweep's last act: the parent FINISHED (or FAILED with why). Returns its id."""
        global _current
        run_id = self.parent_run_id
        if run_id is None:
            return None
        self.parent = None  # the heartbeat stops first
        _current = None
        finished = finished or self.completed_by_sweeper
        if not finished:
            store.set_tags(self.uri, run_id, {keys.ERROR: self.failure or
                                              "some of the sweep's jobs did not finish"})
        elif self.failure is None:
            with contextlib.suppress(Exception):  # none to delete
                store.delete_tag(self.uri, run_id, keys.ERROR)
        store.end_run(self.uri, run_id, keys.FINISHED if finished else keys.FAILED)
        return run_id

    def fail(self, reason: str) -> None:
        """Say why the sweep stops before its end (the parent's ``error`` tag)."""
        self.failure = reason

    def abandon(self) -> None:
        """The sweep raised or was stopped before its end: the parent (and the groups still
        open) KILLED if stopped by a signal, else FAILED; never left RUNNING."""
        global _current
        if self.parent is None or not self.uri:
            return
        from pipeline import process

        stopped = self._stopped or process.stopped_by
        status = keys.KILLED if stopped else keys.FAILED
        parent = self.parent.run_id
        reason = (f"stopped by signal {stopped}; continue it with the same command and "
                  f"sweep.resume={parent}" if stopped
                  else self.failure or "the sweep stopped before its end")
        self.parent, _current = None, None  # the heartbeat stops first
        for attempt in range(3):  # the parent first: never left RUNNING if the store answers
            try:
                store.set_tags(self.uri, parent, {keys.ERROR: reason})
                store.end_run(self.uri, parent, status)
                break
            except Exception as e:
                log.warning("Sweep parent run %s not ended %s (attempt %d): %s", parent, status,
                            attempt + 1, keys.plain_text(str(e)))
                time.sleep(0.5)
        # The groups' open runs get the same status; their statistics are written by their
        # jobs, and again when the sweep is resumed (no group lock taken in a signal handler).
        for group_id in sorted(self.group_ids):
            try:
                if store.get_run(self.uri, group_id).status == keys.RUNNING:
                    store.set_status(self.uri, group_id, status)
            except Exception as e:
                log.warning("Group run %s not ended: %s", group_id, keys.plain_text(str(e)))

    def _start_heartbeat(self) -> None:
        """The parent run's heartbeat, from this (the launching) process while the sweep runs:
        a lost launcher leaves a parent that ``reap`` ends."""

        def beat() -> None:
            while True:
                time.sleep(keys.HEARTBEAT_S)
                run_id = self.parent_run_id
                if run_id is None:
                    return
                with contextlib.suppress(Exception):
                    store.set_tags(self.uri, run_id, {keys.HEARTBEAT: liveness.now()})

        threading.Thread(target=beat, daemon=True, name="sweep-heartbeat").start()

    # --- the stop ---------------------------------------------------------------------------

    def is_stopping(self) -> bool:
        return is_stopping(self.sweep_dir)

    def on_worker_lost(self, job_idx: int, reason: str) -> str | None:
        return on_worker_lost(self.sweep_dir, job_idx, reason)

    def set_worker_signaller(self, signal_busy: Callable[[int], None] | None) -> None:
        """A launcher that knows its busy workers signals them itself (else this process's
        children that mark a job in the sweep folder are signalled)."""
        self._signal_busy = signal_busy

    def _handle_signals(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)

    def stop(self, signum: int, frame: Any = None) -> None:
        """Stop the sweep: no job starts any more (a stop file in the sweep folder), SIGTERM goes
        to the workers running a job (Ctrl-C to a terminal reaches them already), and once their
        runs are marked KILLED (with checkpoints) the sweep ends."""
        if self._stopped:  # a second Ctrl-C: stop waiting for the workers
            self.abandon()
            print(f"Sweep stopped again by signal {signum}: not waiting for its workers. Runs "
                  f"they leave RUNNING are marked FAILED by `python -m pipeline.tracking reap` "
                  f"or by resuming with the same command and sweep.resume={self._stopped_parent}",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            # Not SystemExit: this signal can land inside the interpreter's shutdown (loky's
            # atexit joins its threads), where a raised exception prints a traceback. The
            # workers' watchdog stops them once this process is gone.
            os._exit(128 + signum)
        self._stopped = signum
        self._stopped_parent = self.parent_run_id
        with contextlib.suppress(OSError):
            (self.sweep_dir / workers.STOP_FILE).write_text(str(signum))
        self._wait_for_workers()
        parent = self.parent_run_id
        self.abandon()
        print(f"Sweep stopped by signal {signum}: its runs are marked KILLED. Continue it with "
              f"the same command and sweep.resume={parent}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def _wait_for_workers(self) -> None:
        if self._signal_busy is not None:
            with contextlib.suppress(Exception):
                self._signal_busy(signal.SIGTERM)
        signalled: set[int] = set()
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            busy = workers.busy_workers(self.sweep_dir)
            for pid in busy - signalled:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            signalled |= busy
            if not busy:
                break
            time.sleep(0.2)


_current: SweepSession | None = None


def find_parent(cfg: Any, resume: str) -> RunRecord:
    """``sweep.resume=last|PARENT_ID``: the earlier sweep's parent run in the store of
    ``cfg`` (a :class:`~pipeline.config.TrackingConfig`); :class:`ConfigError` if none."""
    uri = cfg.uri
    store.prepare_store(cfg)
    found: RunRecord | None
    if resume == "last":
        found = store.latest_run(uri, cfg.experiment_name,
                                 f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_PARENT}'")
        if found is None:
            raise ConfigError(f"sweep.resume=last: experiment {cfg.experiment_name!r} in {uri} "
                              f"has no sweep to resume.")
        return found
    try:
        found = store.get_run(uri, resume)
    except store.AmbiguousRunId as e:
        raise ConfigError(f"sweep.resume={resume}: {e}") from None
    except Exception:
        found = None
    if found is None or found.tags.get(keys.SWEEP_ROLE) != keys.ROLE_PARENT:
        raise ConfigError(f"sweep.resume={resume}: no sweep parent run with that id in {uri}; "
                          f"give a parent run id (pipeline.compare lists them) or last.")
    return found


def current() -> SweepSession | None:
    """The session of the sweep this process launches (None in a job or a single run)."""
    return _current


def is_stopping(sweep_dir: Path) -> bool:
    """The sweep in ``sweep_dir`` is stopping: no queued job may start."""
    return (sweep_dir / workers.STOP_FILE).exists()


def on_worker_lost(sweep_dir: Path, num: int, reason: str) -> str | None:
    """Job ``num``'s worker died under it: end the job's run, still RUNNING, FAILED with
    ``reason`` (the worker could not), and write its group if that was the group's last job.
    Returns the run's id (None: the job had not started a run)."""
    parent = ParentFile.load(sweep_dir)
    if parent is None:
        return None
    uri = parent.tracking_uri
    containers = [parent.run_id, *parent.groups.values()]
    running = [r for c in dict.fromkeys(containers) for r in store.search_runs(
        uri, parent_run_id=c, filter_string=f"tags.{keys.SWEEP_JOB} = '{num}'")
        if r.status == keys.RUNNING and r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_CHILD]
    for run in running:
        store.set_tags(uri, run.run_id, {keys.ERROR: reason})
        store.end_run(uri, run.run_id, keys.FAILED)
        log.warning("Job %d: run %s marked FAILED: %s", num, run.run_id, reason)
    group = parent.groups.get(str(num))
    if group:
        groups.write_if_complete(uri, group, sweep_dir)
    return running[-1].run_id if running else None
