"""The project's launcher: ``n_jobs`` warm workers, a job started the moment one is free, a
worker's death failing only its job.

Design. Each worker is a *slot*: one worker process of a *backend*, either this machine's
(``backend=loky``, :mod:`._loky`: a single-worker loky executor per slot) or a Ray cluster's
(``backend=ray``, :mod:`._ray`: a Ray actor per slot). A backend starts a slot's worker,
submits a job to it (a future), says whether a failed call means its worker died and why,
signals it, and stops it; everything else is this module's, for both. A slot gets one job at a
time from the launcher's own queue, so a job starts as soon as any worker is free (no batch
barrier: a long job holds only its slot) and a job never waits behind another in a busy worker.
A dead worker fails only its job: its job resolves FAILED with the reason ("worker killed by
signal 9 (often: out of memory)"), the launcher marks that job's MLflow run FAILED with the
same reason (the worker cannot), and a fresh worker takes the slot for the next job; the other
slots' jobs go on. No job is retried.

Workers are long-lived: each is set up once (:func:`._worker.init`: the sweep's Hydra context,
TensorFlow imported) and runs job after job with a clean per-job state; built algorithms are
kept (:mod:`pipeline.run.warm`), so later jobs of the same graph reuse their compiled steps.
Workers die with their launcher (a watchdog on the launching process in loky's; Ray ends an
actor with its driver). SIGTERM to the launcher is the sweep callback's (``pipeline.sweep``):
no queued job starts, the busy workers get SIGTERM and mark their runs KILLED with checkpoints.

The contract a sweeper codes against: :meth:`PipelineLauncher.submit` (a future of a Hydra
``JobReturn`` that never raises for a job's failure), :attr:`~PipelineLauncher.n_jobs`,
:meth:`~PipelineLauncher.shutdown`; Hydra's :meth:`~PipelineLauncher.launch` submits a batch
and returns its results in order.
"""

import atexit
import logging
import os
import signal
import sys
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

from hydra_plugins.pipeline_launcher._compose import ComposeOnce
from hydra_plugins.pipeline_launcher._core import (
    Job,
    Slot,
    WorkerLost,
    death_reason,
    wait_interruptibly,
)

log = logging.getLogger(__name__)

#: The backends a slot's worker can run on (``hydra.launcher.backend``).
BACKENDS = ("loky", "ray")


class PipelineLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, warm: bool = True, backend: str | None = "loky",
                 ray: Any = None, **_: Any) -> None:
        backend = backend or "loky"  # hydra/launcher=joblib: joblib's schema, backend null
        if backend not in BACKENDS:
            print(f"Error in config: hydra.launcher.backend={backend}: the project's launcher "
                  f"runs its workers on {' or '.join(BACKENDS)} (this machine's processes, or "
                  f"Ray actors).", file=sys.stderr)
            sys.exit(2)
        self.warm = warm
        self.backend_name = backend
        self._ray_conf = ray
        self._backend: Any = None  # made in setup: Ray starts there, not when Hydra loads us
        self._n_jobs_asked = n_jobs
        self._n_jobs = self._resolve_n_jobs(os.cpu_count() or 1)
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
        # The sweeper shares this context: jobs it composes to check them are not composed
        # again to run them.
        hydra_context.config_loader = ComposeOnce.around(hydra_context.config_loader)
        self.config, self.task_function, self.hydra_context = config, task_function, \
            hydra_context
        self._closed = False
        with self._lock:
            if not self._slots:
                self._backend = self._backend or self._make_backend()
                self._n_jobs = self._resolve_n_jobs(self._backend.open())
                self._slots = [Slot(n) for n in range(self._n_jobs)]
                for slot in self._slots:
                    self._start(slot)
        atexit.register(self.shutdown)  # after the backend's own (Ray's): it runs first

    def _make_backend(self) -> Any:
        if self.backend_name == "ray":
            from omegaconf import OmegaConf

            from hydra_plugins.pipeline_launcher._ray import RayBackend

            conf = OmegaConf.to_container(self._ray_conf, resolve=True) \
                if isinstance(self._ray_conf, DictConfig) else dict(self._ray_conf or {})
            return RayBackend(conf.get("init"), conf.get("remote"))
        from hydra_plugins.pipeline_launcher._loky import LokyBackend

        return LokyBackend()

    def _resolve_n_jobs(self, cores: int) -> int:
        """``n_jobs``, where ``-1`` is one worker per core of the backend (joblib's rule). A
        backend whose cores are a hard limit (Ray: an actor beyond the cluster's CPUs never
        starts, and the jobs handed to it would wait forever) gets at most that many."""
        n = self._n_jobs_asked
        n = max(1, n if n > 0 else cores + 1 + n)
        if self._backend is not None and self._backend.cores_limit and n > cores:
            log.warning("hydra.launcher.n_jobs=%d, but the %s cluster holds %d workers of "
                        "hydra.launcher.ray.remote.num_cpus: %d workers.", n,
                        self._backend.name, cores, cores)
            n = cores
        return n

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
        """Stop the workers (idle ones exit at once); queued jobs are not started. A stopping
        sweep's busy workers get SIGTERM first (once a job), so their runs end KILLED."""
        if self._stopping():
            self._signal_busy(signal.SIGTERM)
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        self._drop_queue("the launcher was shut down: job not started")
        if self._backend is not None:
            self._backend.close([s.worker for s in slots if s.worker is not None], wait=wait)

    def _signal_busy(self, signum: int) -> None:
        """Send ``signum`` to the workers running a job (each job's worker once)."""
        with self._lock:
            busy = [s for s in self._slots if s.job is not None and s.signalled != s.job.idx]
            for slot in busy:
                assert slot.job is not None
                slot.signalled = slot.job.idx
        for slot in busy:
            self._backend.signal(slot, signum)

    # --- slots ------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        """A fresh worker for ``slot``, set up in the background."""
        self._backend.start(slot, (self.hydra_context, self.config, self.task_function,
                                   Singleton.get_state(), self.warm))

    def _dispatch(self) -> None:
        """Hand queued jobs to free workers, unless the sweep is stopping."""
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
                handle = slot.worker
                future = self._backend.submit(slot, job)
                future.add_done_callback(
                    lambda f, s=slot, j=job, h=handle: self._finished(s, j, h, f))

    def _finished(self, slot: Slot, job: Job, handle: Any, future: Future) -> None:
        """A slot's job ended (in the backend's thread): resolve it, replace a dead worker, go
        on."""
        error = future.exception()
        death = None if error is None else self._backend.death(slot, handle, error)
        if error is None:
            result = future.result()
        elif death is not None:  # the worker died: only this slot is broken
            reason, signum = death
            result = self._failed(job, WorkerLost(reason, job.idx, signum))
            self._backend.stop(handle)
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
