"""The launcher's parts that must keep their identity for a whole sweep (Hydra's plugin scan
re-executes public plugin modules in place, never underscore ones): :class:`WorkerLost`, the
slots and jobs, reading a dead worker's exit status."""


import re
import signal
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

from hydra.errors import CompactHydraException


class WorkerLost(CompactHydraException):
    """A job's worker process died under it (killed by a signal, or exited): the job FAILED.
    Its message is the reason, as recorded in the job's MLflow run."""

    def __init__(self, reason: str, job_idx: int, signum: int | None = None):
        super().__init__(reason)
        self.reason, self.job_idx, self.signum = reason, job_idx, signum

    def __reduce__(self):
        return type(self), (self.reason, self.job_idx, self.signum)


def death_reason(exitcode: int | None) -> tuple[str, int | None]:
    """Why a worker died, from its exit code (negative: the signal), and the signal."""
    if exitcode is None or exitcode >= 0:
        return f"worker exited with status {exitcode} during the job", None
    signum = -exitcode
    if signum == signal.SIGKILL:
        return f"worker killed by signal {signum} (often: out of memory)", signum
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown"
    return f"worker killed by signal {signum} ({name})", signum


@dataclass
class Job:
    idx: int
    overrides: list[str]
    #: Composed by the launcher before a worker is free (None: the worker composes it).
    config: Any = None
    future: Future = field(default_factory=Future)


@dataclass
class Slot:
    """One worker process: its own single-worker loky executor."""

    number: int
    executor: Any = None
    pid: int | None = None
    job: Job | None = None
    jobs_run: int = 0


def exit_status(executor: Any, pid: int | None, error: BaseException) -> int | None:
    """The dead worker's exit code: from loky's process table, else from loky's message."""
    proc = getattr(executor, "_processes", {}).get(pid) if pid is not None else None
    if proc is not None and proc.exitcode is not None:
        return proc.exitcode
    found = re.search(r"\((-?\d+)\)", str(error))
    return int(found.group(1)) if found else None


def wait_interruptibly(futures: list[Future]) -> None:
    """Wait for ``futures`` in short steps, so the main thread's signal handlers run."""
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=0.5)
