"""Which RUNNING runs still have a process behind them, and ending those that do not.

A run's tracker writes its ``heartbeat`` tag (UTC, ISO 8601) every :data:`keys.HEARTBEAT_S`
seconds from its background thread, and ``host``, ``pid`` and ``pid_start`` when the run starts;
a sweep's launching process does the same for the sweep's parent run. A SIGKILLed or OOM-killed
job, a lost launcher or a lost machine leaves its run RUNNING:

* on the host the run names, the process itself tells: a pid that is gone (or a zombie, or now
  another process with another start time) means the run is dead now;
* elsewhere only the heartbeat tells: it stops, and after :data:`keys.REAP_AFTER_S` seconds
  without one the run is lost.

:func:`reap` marks such runs FAILED with ``process lost (...)``; given run ids, it ends those at
once (their process is known to be gone). Runs logged before the heartbeat existed are judged by
their start time; a sweep's group run lives as long as its parent does.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import TrackingError
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

#: The command that ends a lost run at once, as messages print it.
REAP_COMMAND = "python -m pipeline.tracking reap"


def now() -> str:
    """The heartbeat's value: this moment, UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid``; None if there is no
    such process (or no ``/proc`` to ask)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()  # the name in parentheses may hold blanks
    return (fields[0], fields[19]) if len(fields) > 19 else None


def start_tags() -> dict[str, str]:
    """Where the run's process is (host, pid and the pid's start time), and its first
    heartbeat."""
    stat = _proc_stat(os.getpid())
    return {keys.HOST: socket.gethostname(), keys.PID: str(os.getpid()), keys.HEARTBEAT: now(),
            **({keys.PID_START: stat[1]} if stat else {})}


def gone(run: RunRecord) -> str | None:
    """Why the run's process is certainly gone, judged on its own host from the process table:
    ``pid N is gone``, ``... is a zombie`` or ``... is now another process``; None where that
    cannot be told here (another host, no pid, no ``/proc``) or the process is there."""
    if run.tags.get(keys.HOST) != socket.gethostname() or not Path("/proc/self/stat").exists():
        return None
    try:
        pid = int(run.tags.get(keys.PID, ""))
    except ValueError:
        return None
    stat = _proc_stat(pid)
    if stat is None:
        return f"pid {pid} is gone from this host"
    state, started = stat
    if state in ("Z", "X"):
        return f"pid {pid} has exited (a zombie on this host)"
    if run.tags.get(keys.PID_START) not in (None, started):
        return f"pid {pid} is now another process on this host"
    return None


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
    """RUNNING, its process not known to be gone (:func:`gone`), and a heartbeat younger than
    ``older_than`` seconds (a group run: its parent's, given as ``parent``)."""
    if run.status != keys.RUNNING:
        return False
    if run.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP:
        return parent is not None and is_alive(parent, older_than, at=at)
    if gone(run) is not None:
        return False
    return (at if at is not None else time.time()) - last_sign(run) <= older_than


def still_running(run: RunRecord) -> str:
    """What to do about a run that counts as alive, for a refusal: stop the process (it runs on
    this host), or wait for its heartbeat to age (saying how long), or end it at once with
    ``reap RUN_ID`` if its process is known to be gone."""
    beat = run.tags.get(keys.HEARTBEAT, "none")
    if run.tags.get(keys.HOST) == socket.gethostname() and gone(run) is None and \
            run.tags.get(keys.PID):
        return (f"its process runs on this host ({where(run)}, heartbeat {beat}): let it end, "
                f"or stop it (kill {run.tags[keys.PID]}), then try again")
    left = max(0.0, keys.REAP_AFTER_S - (time.time() - last_sign(run)))
    return (f"{where(run)}, heartbeat {beat}: if that process is gone, it counts as lost "
            f"{left:.0f} s from now ({keys.REAP_AFTER_S:g} s without a heartbeat), or "
            f"`{REAP_COMMAND} {run.run_id}` ends it at once")


@dataclass(frozen=True)
class Reaped:
    run: RunRecord
    reason: str


def _parent_of(uri: str, run: RunRecord, by_id: dict[str, RunRecord]) -> RunRecord | None:
    if run.tags.get(keys.SWEEP_ROLE) != keys.ROLE_GROUP:
        return None
    parent_id = run.tags.get(keys.PARENT_RUN, "")
    parent = by_id.get(parent_id)
    if parent is None and parent_id:
        try:
            parent = store.get_run(uri, parent_id)
        except Exception:
            parent = None
    return parent


def _reason(run: RunRecord, parent: RunRecord | None) -> str:
    basis = parent if parent is not None and parent.status == keys.RUNNING else run
    why = gone(basis)
    if why is not None:
        return f"process lost ({why}; last heartbeat {_when(last_sign(basis))}; {where(basis)})"
    return f"process lost (no heartbeat since {_when(last_sign(basis))}; {where(basis)})"


def _end(uri: str, run: RunRecord, reason: str) -> Reaped:
    store.set_tags(uri, run.run_id, {keys.ERROR: reason})
    store.end_run(uri, run.run_id, keys.FAILED)
    return Reaped(run, reason)


def reap(uri: str, older_than: float = keys.REAP_AFTER_S,
         experiment_names: list[str] | None = None,
         run_ids: list[str] | None = None) -> list[Reaped]:
    """Mark FAILED every RUNNING run (of the named experiments; all if None) whose process is
    gone: on this host by its pid, elsewhere by a heartbeat stopped more than ``older_than``
    seconds ago; the reason goes in its ``error`` tag.

    ``run_ids`` (whole ids or unique prefixes) end those runs at once instead, whatever their
    heartbeat says: the user knows their process is gone. One whose process still runs on this
    host, or that is not RUNNING, is refused (:class:`TrackingError`) before any is ended.
    """
    if run_ids:
        chosen = [store.get_run(uri, r) for r in run_ids]
        for run in chosen:
            if run.status != keys.RUNNING:
                raise TrackingError(f"run {run.run_id} is {run.status}, not RUNNING: nothing to "
                                    f"reap.")
            if run.tags.get(keys.HOST) == socket.gethostname() and gone(run) is None \
                    and run.tags.get(keys.PID):
                raise TrackingError(f"run {run.run_id}'s process still runs on this host "
                                    f"({where(run)}): stop it (kill {run.tags[keys.PID]}) "
                                    f"instead; nothing was reaped.")
        return [_end(uri, run, f"process lost (ended by `{REAP_COMMAND} {run.run_id}` at "
                               f"{now()}; last heartbeat {_when(last_sign(run))}; "
                               f"{where(run)})")
                for run in chosen]
    running = store.search_runs(uri, experiment_names, f"attributes.status = '{keys.RUNNING}'",
                                include_parents=True)
    by_id = {r.run_id: r for r in running}
    at = time.time()
    out = []
    for run in running:
        parent = _parent_of(uri, run, by_id)
        if not is_alive(run, older_than, parent, at):
            out.append(_end(uri, run, _reason(run, parent)))
    return out
