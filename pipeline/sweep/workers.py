"""Worker processes of a multirun: mark a process while it runs a job (so a stopped sweep
signals only those), stop jobs on SIGTERM, and let workers leave without TensorFlow's teardown.
What the project's launcher gets of the sweep is :class:`pipeline.sweep.hooks.SweepHooks`."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from pipeline import process

#: In the sweep folder: "stop" (no job starts any more) and one file per process running a job.
STOP_FILE, JOBS_DIR = ".stop", ".running-jobs"
#: The process that launched the sweep (set by the callback; workers, spawned or remote, have
#: None).
_launcher_pid: int | None = None


def mark_launcher() -> None:
    """This process launches the sweep (the basic launcher also runs its jobs in it)."""
    global _launcher_pid
    _launcher_pid = os.getpid()


def busy_workers(sweep_dir: Path) -> set[int]:
    """Child processes of this one that are running a job (each job marks its process in the
    sweep folder): only those are sent SIGTERM; idle or fresh workers are left alone."""
    marked = {int(p.name) for p in (sweep_dir / JOBS_DIR).glob("[0-9]*")}
    return marked & set(_children())


def _children() -> list[int]:
    """Live child processes of this one (loky/joblib workers), from /proc."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


@contextlib.contextmanager
def job_guard() -> Iterator[None]:
    """Around a multirun job: refuse to start once the sweep is stopping, mark this process as
    running a job, and let SIGTERM stop the job (its run KILLED, with a checkpoint). Afterwards
    a worker process ignores SIGTERM (nothing to stop) and the launching process gets its own
    handler back."""
    from hydra.types import RunMode

    from pipeline import process

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        yield
        return
    sweep_dir = Path(str(hc.sweep.dir)).absolute()
    if (sweep_dir / STOP_FILE).exists():
        raise KeyboardInterrupt("the sweep is stopping: job not started")
    marker = sweep_dir / JOBS_DIR / str(os.getpid())
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(hc.job.num))
    previous = signal.getsignal(signal.SIGTERM)
    process.stop_on_sigterm()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)
        launcher = _launcher_pid == os.getpid()  # the basic launcher: jobs run in-process
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous if launcher else process.note_signal)
        if not launcher:
            _exit_fast_at_shutdown()


def fresh_job_state() -> None:
    """Before a job in a long-lived worker: forget the signal an earlier job noted and end an
    MLflow run an earlier job left active (one that died half-way)."""
    from pipeline.tracking import run

    process.forget_signal()
    run.end_stray_run()


_fast_exit_registered = False


def _exit_fast_at_shutdown() -> None:
    """A worker process (joblib/loky, Ray) leaves without the interpreter's teardown of
    TensorFlow and every loaded module (seconds per worker, on the sweep's critical path: the
    launcher waits for its workers to exit). Its runs are flushed and ended by then."""
    global _fast_exit_registered
    if _fast_exit_registered:
        return
    _fast_exit_registered = True
    atexit.register(process.leave_now, 0)

