"""The launcher's core: ``n_jobs`` slots, each one warm worker of a :class:`WorkerBackend`, fed
one job at a time from a queue, a dead worker replaced and its job failed alone
(:class:`Workers`). Also the parts that must keep their identity for a whole sweep (Hydra's
plugin scan re-executes public plugin modules in place, never underscore ones):
:class:`WorkerLost`, the slots and jobs, the reason a dead worker's exit status gives."""


import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException

from hydra_plugins.pipeline_launcher._hooks import LauncherHooks, NoHooks

log = logging.getLogger("hydra_plugins.pipeline_launcher.launcher")

#: The attribute of each job's result that holds its span in the worker (arrival, end): the
#: launcher's contract with a sweeper that measures its workers' occupancy.
WORKER_SPAN = "worker_span"


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


class WorkerBackend(Protocol):
    """Where the slots' workers run: this machine's processes (:class:`._loky.LokyBackend`) or
    a Ray cluster's actors (:class:`._ray.RayBackend`)."""

    #: ``hydra.launcher.backend``'s value for it.
    name: str
    #: Whether :meth:`open`'s count is a hard limit on the workers that can run at once.
    cores_limit: bool

    def open(self) -> int:
        """Start or join what runs the workers; the cores a worker count of ``-1`` means."""
        ...

    def start(self, slot: Slot, init_args: tuple) -> None:
        """A fresh worker in ``slot.worker``, set up in the background (``slot.pid`` once up)
        with ``_worker.init(launcher_pid_or_None, *init_args)``."""
        ...

    def submit(self, slot: Slot, job: Job) -> Future:
        """Run ``job`` on ``slot``'s worker: a future of its ``JobReturn``."""
        ...

    def death(self, slot: Slot, handle: Any, error: BaseException
              ) -> tuple[str, int | None] | None:
        """Why the worker ``handle`` died under its job, and the signal (None: ``error`` is
        no death)."""
        ...

    def stop(self, handle: Any, wait: bool = False) -> None:
        """Stop one worker."""
        ...

    def signal(self, slot: Slot, signum: int) -> None:
        """Send ``signum`` to ``slot``'s worker process."""
        ...

    def close(self, handles: list[Any], wait: bool) -> None:
        """Stop every worker; with ``wait``, after the jobs they run."""
        ...


class SweepFailed(SystemExit):
    """What reading a failed job's ``return_value`` raises (Hydra's basic sweeper does, to end
    the sweep): exit status 1, quietly, since :meth:`Workers.launch` logged the batch's failures
    in one line. Hydra's own ``JobReturn`` would write its "Error executing job with overrides"
    block and a traceback after that line."""

    def __init__(self, job_idx: int, error: BaseException):
        super().__init__(1)
        self.job_idx, self.error = job_idx, error


class Result(JobReturn):
    """A job's ``JobReturn``, whose failure ends a sweep as :class:`SweepFailed`."""

    job_idx: int = -1

    @classmethod
    def of(cls, ret: JobReturn, job_idx: int) -> "Result":
        if isinstance(ret, cls):
            return ret
        out = cls.__new__(cls)
        out.__dict__.update(vars(ret))
        out.job_idx = job_idx
        return out

    @property
    def return_value(self) -> Any:
        if self.status == JobStatus.COMPLETED:
            return self._return_value
        if not isinstance(self._return_value, Exception):  # a stop: raised as it is
            raise self._return_value
        raise SweepFailed(self.job_idx, self._return_value)

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


class Workers:
    """The slots of one launcher, their job queue and their workers' deaths. ``failed`` makes a
    job's FAILED ``JobReturn``; ``init_args`` are each worker's set-up arguments."""

    def __init__(self, backend: WorkerBackend, n_jobs: int, init_args: Callable[[], tuple],
                 failed: Callable[[Job, BaseException], JobReturn],
                 sweep_dir: Callable[[], Path | None],
                 hooks: LauncherHooks | None = None) -> None:
        self.backend, self.n_jobs = backend, n_jobs
        self.hooks: LauncherHooks = hooks or NoHooks()
        self._init_args, self._failed, self._sweep_dir = init_args, failed, sweep_dir
        self._slots: list[Slot] = []
        self._queue: deque[Job] = deque()
        self._lock = threading.RLock()
        self.closed = False

    def start(self) -> None:
        """A warm worker in every slot (set up in the background)."""
        with self._lock:
            if not self._slots:
                self._slots = [Slot(n) for n in range(self.n_jobs)]
                for slot in self._slots:
                    self._start(slot)

    def queue(self, job: Job) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError("PipelineLauncher.submit after shutdown()")
            self._queue.append(job)
        self._dispatch()

    def wait_all(self, futures: list[Future], numbers: list[int]) -> list[JobReturn]:
        """Wait for a batch's jobs (``futures`` of jobs ``numbers``, queued already) and return
        their results in order, each a :class:`Result`; the batch's failures are logged in one
        line."""
        try:
            wait_interruptibly(futures)
        except BaseException:  # a stop (the sweep's SIGTERM handler): start no more
            self.drop_queue("the sweep is stopping: job not started")
            # A job still running (a second Ctrl-C stops waiting for it) gets SIGTERM: it ends
            # KILLED with its checkpoint, and the exit does not wait out its whole training.
            self.signal_busy(signal.SIGTERM)
            raise
        results = [Result.of(f.result(), n) for f, n in zip(futures, numbers, strict=True)]
        _log_failures(results)
        return results

    def stopping(self) -> bool:
        sweep_dir = self._sweep_dir()
        return sweep_dir is not None and self.hooks.is_stopping(sweep_dir)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (idle ones exit at once); queued jobs are not started. A stopping
        sweep's busy workers get SIGTERM first (once a job), so their runs end KILLED."""
        if self.stopping():
            self.signal_busy(signal.SIGTERM)
        with self._lock:
            self.closed = True
            slots, self._slots = self._slots, []
        self.drop_queue("the launcher was shut down: job not started")
        self.backend.close([s.worker for s in slots if s.worker is not None], wait=wait)

    def signal_busy(self, signum: int) -> None:
        """Send ``signum`` to the workers running a job (each job's worker once)."""
        with self._lock:
            busy = [s for s in self._slots if s.job is not None and s.signalled != s.job.idx]
            for slot in busy:
                assert slot.job is not None
                slot.signalled = slot.job.idx
        for slot in busy:
            self.backend.signal(slot, signum)

    def drop_queue(self, why: str) -> None:
        with self._lock:
            dropped, self._queue = list(self._queue), deque()
        for job in dropped:
            if not job.future.done():
                job.future.set_result(self._failed(job, KeyboardInterrupt(why)))

    # --- slots --------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        self.backend.start(slot, self._init_args())

    def _dispatch(self) -> None:
        """Hand queued jobs to free workers, unless the sweep is stopping."""
        if self.stopping():
            self.drop_queue("the sweep is stopping: job not started")
            return
        with self._lock:
            for slot in self._slots:
                if not self._queue:
                    break
                if slot.job is not None:
                    continue
                job = slot.job = self._queue.popleft()
                handle = slot.worker
                future = self.backend.submit(slot, job)
                future.add_done_callback(
                    lambda f, s=slot, j=job, h=handle: self._finished(s, j, h, f))

    def _finished(self, slot: Slot, job: Job, handle: Any, future: Future) -> None:
        """A slot's job ended (in the backend's thread): resolve it, replace a dead worker, go
        on."""
        error = future.exception()
        death = None if error is None else self.backend.death(slot, handle, error)
        if error is None:
            result = future.result()
        elif death is not None:  # the worker died: only this slot is broken
            reason, signum = death
            result = self._failed(job, WorkerLost(reason, job.idx, signum))
            self.backend.stop(handle)
            with self._lock:
                if not self.closed:
                    self._start(slot)
            log.error("Job %d (%s): %s", job.idx, " ".join(filter_overrides(job.overrides)),
                      reason)
            self._lost(job, reason)
        else:  # raised outside the task (a config the worker could not load, a stop)
            result = self._failed(job, error)
        with self._lock:
            slot.job = None
            slot.jobs_run += 1
        job.future.set_result(result)
        self._dispatch()

    def _lost(self, job: Job, reason: str) -> None:
        """The application records the death in the job's run, since its worker cannot."""
        sweep_dir = self._sweep_dir()
        if sweep_dir is None:
            return
        try:
            self.hooks.on_worker_lost(sweep_dir, job.idx, reason)
        except Exception as e:
            log.warning("Could not mark job %d's run FAILED (%s): %s", job.idx,
                        type(e).__name__, e)


def _log_failures(results: list[Result]) -> None:
    """One line for a batch's failed jobs: those whose worker died, or else those that raised
    (a job a stop never started is no failure to report)."""
    failed = [r for r in results if r.status == JobStatus.FAILED
              and not isinstance(r._return_value, KeyboardInterrupt)]
    if not failed:
        return
    done = sum(r.status == JobStatus.COMPLETED for r in results)
    lost = [r._return_value for r in failed if isinstance(r._return_value, WorkerLost)]
    if lost:
        log.error("%d of %d jobs lost their worker (%s); their runs are marked FAILED, %d "
                  "jobs completed. Continue the sweep with the same command and "
                  "sweep.resume=last.", len(lost), len(results),
                  "; ".join(f"job {e.job_idx}: {e.reason}" for e in lost), done)
        return
    log.error("%d of %d jobs failed (%s); %d jobs completed.", len(failed), len(results),
              "; ".join(f"job {r.job_idx}: {_first_line(r._return_value)}" for r in failed),
              done)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
