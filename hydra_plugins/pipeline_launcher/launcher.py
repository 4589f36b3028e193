"""The project's launcher: ``n_jobs`` warm worker processes, a job started the moment one is
free, a worker's death failing only its job.

Design. Each worker is its own single-worker loky executor (``ProcessPoolExecutor(
max_workers=1)``), a *slot*, rather than one executor of ``n_jobs`` workers: when a worker of a
loky executor dies (SIGKILL, the OOM killer, a segfault) the executor is broken and loky
terminates *all* its workers, which lost every job in flight with it (issue 20.3). With one
executor per slot a dead worker breaks only its slot: its job resolves FAILED with the signal
("worker killed by signal 9 (often: out of memory)"), the launcher marks that job's MLflow run
FAILED with the same reason (the worker cannot), and a fresh executor takes the slot for the
next job; the other slots' jobs go on. A slot gets one job at a time from the launcher's own
queue, so a job starts as soon as any worker is free (no batch barrier: a long job holds only
its slot) and a job never waits behind another in a busy worker.

Workers are long-lived: each is set up once (:func:`.worker.init`: the sweep's Hydra context,
TensorFlow imported) and runs job after job with a clean per-job state; built algorithms are
kept (:mod:`pipeline.warm`), so later jobs of the same graph reuse their compiled steps.
Workers die with their launcher: a watchdog thread in each polls its parent (a parent-death
signal would fire when the *thread* that spawned the worker exits, and loky spawns from a
manager thread). SIGTERM to the launcher is the sweep callback's (``pipeline.sweep``): the
busy workers get SIGTERM and mark their runs KILLED with checkpoints; no queued job starts.

The contract a sweeper codes against: :meth:`PipelineLauncher.submit` (a future of a Hydra
``JobReturn`` that never raises for a job's failure), :attr:`~PipelineLauncher.n_jobs`,
:meth:`~PipelineLauncher.shutdown`; Hydra's :meth:`~PipelineLauncher.launch` submits a batch
and returns its results in order.
"""

import atexit
import contextlib
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.pipeline_launcher._core import (
    Job,
    Slot,
    WorkerLost,
    death_reason,
    exit_status,
    wait_interruptibly,
)

log = logging.getLogger(__name__)


class PipelineLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, warm: bool = True, **_: Any) -> None:
        cores = os.cpu_count() or 1
        self._n_jobs = max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)
        self.warm = warm
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._slots: list[Slot] = []
        self._queue: deque[Job] = deque()
        self._lock = threading.RLock()
        self._closed = False

    # --- the contract -----------------------------------------------------------------------

    @property
    def n_jobs(self) -> int:
        """How many jobs run at once (worker processes)."""
        return self._n_jobs

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Keep the sweep's context and start the workers now, so their start-up (spawn,
        TensorFlow's import) overlaps whatever the sweeper does before its first job."""
        self.config, self.task_function, self.hydra_context = config, task_function, \
            hydra_context
        self._closed = False
        with self._lock:
            if not self._slots:
                self._slots = [Slot(n) for n in range(self._n_jobs)]
                for slot in self._slots:
                    self._start(slot)
        atexit.register(self.shutdown)

    def submit(self, overrides: Sequence[str], job_idx: int) -> Future:
        """Queue job ``job_idx``; it starts as soon as a worker is free. The future's result is
        its ``JobReturn``: COMPLETED with the task's value, or FAILED with the exception as
        ``_return_value`` (:class:`WorkerLost` if its worker died). It never raises for a
        job's failure."""
        if self.hydra_context is None:
            raise RuntimeError("PipelineLauncher.submit before setup()")
        from hydra_plugins.pipeline_launcher import _worker as worker

        job = Job(job_idx, list(overrides))
        try:  # composed here, off the worker's time (a worker may well be busy meanwhile)
            job.config = worker.job_config(self.hydra_context, self.config, job_idx, overrides)
        except Exception as e:  # a job Hydra cannot compose fails alone, as in a worker
            job.future.set_result(self._failed(job, e))
            return job.future
        with self._lock:
            if self._closed:
                raise RuntimeError("PipelineLauncher.submit after shutdown()")
            self._queue.append(job)
        self._dispatch()
        return job.future

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's batch: submit every job, wait for all, return their results in order."""
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs on %d warm workers, sweep output dir: %s",
                 len(job_overrides), self._n_jobs, sweep_dir)
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
        futures = [self.submit(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        try:
            wait_interruptibly(futures)
        except BaseException:  # a stop (the sweep callback's SIGTERM handler): start no more
            self._drop_queue("the sweep is stopping: job not started")
            # A job still running (a second Ctrl-C stops waiting for it) gets SIGTERM: it ends
            # KILLED with its checkpoint, and the exit does not wait out its whole training.
            self._signal_busy(signal.SIGTERM)
            raise
        results = [f.result() for f in futures]
        lost = [r._return_value for r in results if isinstance(r._return_value, WorkerLost)]
        if lost:
            done = sum(r.status == JobStatus.COMPLETED for r in results)
            log.error("%d of %d jobs lost their worker (%s); their runs are marked FAILED, %d "
                      "jobs completed. Continue the sweep with the same command and "
                      "sweep.resume=last.", len(lost), len(results),
                      "; ".join(f"job {e.job_idx}: {e.reason}" for e in lost), done)
        return results

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (idle ones exit at once); queued jobs are not started."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        self._drop_queue("the launcher was shut down: job not started")
        for slot in slots:
            if slot.executor is not None:
                with contextlib.suppress(Exception):
                    slot.executor.shutdown(wait=wait)

    def _signal_busy(self, signum: int) -> None:
        """Send ``signum`` to the workers running a job."""
        with self._lock:
            pids = [slot.pid for slot in self._slots if slot.job is not None and slot.pid]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    # --- slots ------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        """A fresh worker process for ``slot``, set up in the background."""
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        from hydra_plugins.pipeline_launcher import _worker as worker

        slot.executor = ProcessPoolExecutor(
            max_workers=1, initializer=worker.init,
            initargs=(os.getpid(), self.hydra_context, self.config, self.task_function,
                      Singleton.get_state(), self.warm))
        slot.pid = None
        ready = slot.executor.submit(worker.ready)
        ready.add_done_callback(lambda f, s=slot: setattr(
            s, "pid", f.result() if f.exception() is None else None))

    def _dispatch(self) -> None:
        """Hand queued jobs to free workers, unless the sweep is stopping."""
        from hydra_plugins.pipeline_launcher import _worker as worker

        if self._stopping():
            self._drop_queue("the sweep is stopping: job not started")
            return
        with self._lock:
            for slot in self._slots:
                if not self._queue:
                    break
                if slot.job is not None:
                    continue
                job = slot.job = self._queue.popleft()
                executor = slot.executor
                future = executor.submit(worker.run, job.idx, job.overrides, job.config)
                future.add_done_callback(
                    lambda f, s=slot, j=job, e=executor: self._finished(s, j, e, f))

    def _finished(self, slot: Slot, job: Job, executor: Any, future: Future) -> None:
        """A slot's job ended (in loky's thread): resolve it, replace a dead worker, go on."""
        from joblib.externals.loky.process_executor import BrokenProcessPool

        error = future.exception()
        if error is None:
            result = future.result()
        elif isinstance(error, BrokenProcessPool):  # the worker died: only this slot is broken
            reason, signum = death_reason(exit_status(executor, slot.pid, error))
            result = self._failed(job, WorkerLost(reason, job.idx, signum))
            with contextlib.suppress(Exception):
                executor.shutdown(wait=False)
            with self._lock:
                if not self._closed:
                    self._start(slot)
            log.error("Job %d (%s): %s", job.idx, " ".join(filter_overrides(job.overrides)),
                      reason)
            self._mark_lost(job, reason)
        else:  # raised outside the task (a config the worker could not load, a stop)
            result = self._failed(job, error)
        with self._lock:
            slot.job = None
            slot.jobs_run += 1
        job.future.set_result(result)
        self._dispatch()

    def _failed(self, job: Job, error: BaseException) -> JobReturn:
        assert self.config is not None
        ret = JobReturn(overrides=job.overrides, task_name=self.config.hydra.job.name,
                        status=JobStatus.FAILED)
        ret._return_value = error
        return ret

    def _mark_lost(self, job: Job, reason: str) -> None:
        """The launcher records the death in the job's run, since its worker cannot."""
        assert self.config is not None
        from pipeline.sweep import job as sweep_job

        try:
            sweep_job.job_lost(Path(str(self.config.hydra.sweep.dir)).absolute(), job.idx,
                               reason)
        except Exception as e:
            log.warning("Could not mark job %d's run FAILED (%s): %s", job.idx,
                        type(e).__name__, e)

    def _stopping(self) -> bool:
        from pipeline.sweep import workers

        if self.config is None:
            return False
        return (Path(str(self.config.hydra.sweep.dir)) / workers.STOP_FILE).exists()

    def _drop_queue(self, why: str) -> None:
        with self._lock:
            dropped, self._queue = list(self._queue), deque()
        for job in dropped:
            if not job.future.done():
                job.future.set_result(self._failed(job, KeyboardInterrupt(why)))


__all__ = ["PipelineLauncher", "WorkerLost", "death_reason"]
