"""The local backend (``hydra.launcher.backend=loky``): each slot is its own single-worker loky
executor, a warm worker process on this machine.

One executor per slot rather than one of ``n_jobs`` workers: when a worker of a loky executor
dies (SIGKILL, the OOM killer, a segfault) the executor is broken and loky terminates *all* its
workers, and every job in flight is lost with it. With one executor per slot a dead
worker breaks only its slot. Workers die with their launcher through a watchdog thread in each
(:func:`._worker.init`) that polls its parent, the launching process (a parent-death signal
would fire when the *thread* that spawned the worker exits, and loky spawns from a manager
thread).
"""

import contextlib
import os
import re
from concurrent.futures import Future
from typing import Any

from hydra_plugins.pipeline_launcher._core import Job, Slot, death_reason


class LokyBackend:
    """Start, call, bury and stop loky workers for :class:`.launcher.PipelineLauncher`."""

    name = "loky"
    #: Whether :meth:`open`'s count is a hard limit on the workers that can run at once.
    cores_limit = False

    def open(self) -> int:
        """Nothing to connect to: the cores a worker count of ``-1`` means."""
        return os.cpu_count() or 1

    def start(self, slot: Slot, init_args: tuple) -> None:
        """A fresh worker process for ``slot``, set up in the background (its pid once up)."""
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        from hydra_plugins.pipeline_launcher import _worker as worker

        slot.worker = ProcessPoolExecutor(max_workers=1, initializer=worker.init,
                                          initargs=(os.getpid(), *init_args))
        slot.pid = None
        ready = slot.worker.submit(worker.ready)
        ready.add_done_callback(lambda f, s=slot: setattr(
            s, "pid", f.result() if f.exception() is None else None))

    def submit(self, slot: Slot, job: Job) -> Future:
        from hydra_plugins.pipeline_launcher import _worker as worker

        return slot.worker.submit(worker.run, job.idx, job.overrides, job.config)

    def death(self, slot: Slot, handle: Any, error: BaseException
              ) -> tuple[str, int | None] | None:
        """Why the worker ``handle`` died under its job (None: ``error`` is no death)."""
        from joblib.externals.loky.process_executor import BrokenProcessPool

        if not isinstance(error, BrokenProcessPool):
            return None
        return death_reason(exit_status(handle, slot.pid, error))

    def stop(self, handle: Any, wait: bool = False) -> None:
        with contextlib.suppress(Exception):
            handle.shutdown(wait=wait)

    def signal(self, slot: Slot, signum: int) -> None:
        if slot.pid:
            with contextlib.suppress(OSError):
                os.kill(slot.pid, signum)

    def close(self, handles: list[Any], wait: bool) -> None:
        """Stop the workers; with ``wait``, after the jobs they run (loky's own join)."""
        for handle in handles:
            self.stop(handle, wait=wait)


def exit_status(executor: Any, pid: int | None, error: BaseException) -> int | None:
    """The dead worker's exit code: from loky's process table, else from loky's message."""
    proc = getattr(executor, "_processes", {}).get(pid) if pid is not None else None
    if proc is not None and proc.exitcode is not None:
        return proc.exitcode
    found = re.search(r"\((-?\d+)\)", str(error))
    return int(found.group(1)) if found else None
