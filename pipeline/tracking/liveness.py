"""Which RUNNING runs still have a process behind them, and ending those that do not.

A run's tracker writes its ``heartbeat`` tag (UTC, ISO 8601) every :data:`keys.HEARTBEAT_S`
seconds from its background thread, and ``host`` and ``pid`` when the run starts; a sweep's
launching process does the same for the sweep's parent run. A SIGKILLed or OOM-killed job, a
lost launcher or a lost machine leaves its run RUNNING with a heartbeat that stops: :func:`reap`
marks such runs FAILED with ``process lost (no heartbeat since ...)``. Runs logged before the
heartbeat existed are judged by their start time; a sweep's group run lives as long as its
parent does.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord


def now() -> str:
    """The heartbeat's value: this moment, UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def start_tags() -> dict[str, str]:
    """Where the run's process is, and its first heartbeat."""
    return {keys.HOST: socket.gethostname(), keys.PID: str(os.getpid()), keys.HEARTBEAT: now()}


def last_sign(run: RunRecord) -> float:
    """Epoch seconds of the run's last heartbeat; its start time if it has none (older runs)."""
    beat = run.tags.get(keys.HEARTBEAT)
    if beat:
        try:
            return datetime.fromisoformat(beat).timestamp()
        except ValueError:
            pass
    return run.start_time / 1000


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def where(run: RunRecord) -> str:
    """``host h, pid p`` for messages (``?`` where a run does not say)."""
    return f"host {run.tags.get(keys.HOST, '?')}, pid {run.tags.get(keys.PID, '?')}"


def is_alive(run: RunRecord, older_than: float = keys.REAP_AFTER_S,
             parent: RunRecord | None = None, at: float | None = None) -> bool:
    """RUNNING with a heartbeat younger than ``older_than`` seconds (a group run: its parent's
    heartbeat, given as ``parent``)."""
    if run.status != keys.RUNNING:
        return False
    if run.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP:
        return parent is not None and is_alive(parent, older_than, at=at)
    return (at if at is not None else time.time()) - last_sign(run) <= older_than


@dataclass(frozen=True)
class Reaped:
    run: RunRecord
    reason: str


def reap(uri: str, older_than: float = keys.REAP_AFTER_S,
         experiment_names: list[str] | None = None) -> list[Reaped]:
    """Mark FAILED every RUNNING run (of the named experiments; all if None) whose heartbeat
    stopped more than ``older_than`` seconds ago, with the reason in its ``error`` tag."""
    running = store.search_runs(uri, experiment_names, f"attributes.status = '{keys.RUNNING}'",
                                include_parents=True)
    by_id = {r.run_id: r for r in running}
    at = time.time()
    out = []
    for run in running:
        parent = None
        if run.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP:
            parent_id = run.tags.get(keys.PARENT_RUN, "")
            parent = by_id.get(parent_id)
            if parent is None and parent_id:
                try:
                    parent = store.get_run(uri, parent_id)
                except Exception:
                    parent = None
        if is_alive(run, older_than, parent, at):
            continue
        basis = parent if parent is not None and parent.status == keys.RUNNING else run
        reason = (f"process lost (no heartbeat since {_when(last_sign(basis))}; "
                  f"{where(basis)})")
        store.set_tags(uri, run.run_id, {keys.ERROR: reason})
        store.end_run(uri, run.run_id, keys.FAILED)
        out.append(Reaped(run, reason))
    return out
