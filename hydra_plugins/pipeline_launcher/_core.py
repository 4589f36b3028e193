"""The launcher's parts that must keep their identity for a whole sweep (Hydra's plugin scan
re-executes public plugin modules in place, never underscore ones): :class:`WorkerLost`, the
slots and jobs, the reason a dead worker's exit status gives."""


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
    """One warm worker: a single-worker loky executor, or a Ray actor (``worker``, the
    backend's handle), its process once it is up (``pid``, on ``node``), the job it runs."""

    number: int
    worker: Any = None
    pid: int | None = None
    node: str | None = None
    job: Job | None = None
    jobs_run: int = 0
    #: The job number a stop already sent a signal for (one signal per job).
    signalled: int | None = None


def wait_interruptibly(futures: list[Future]) -> None:
    """Wait for ``futures`` in short steps, so the main thread's signal handlers run."""
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=0.5)
