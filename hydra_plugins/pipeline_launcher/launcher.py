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
actor with its driver). What the launcher needs of the application (is the sweep stopping, a
dead worker's run to mark FAILED, the workers' set-up) comes through the hooks it installed
(:mod:`._hooks`); the launcher imports nothing of it.

Plugin shape, as Hydra's own launchers: :mod:`.config` (the schema), this module (the thin
plugin class Hydra instantiates) and :mod:`._core` (:class:`~._core.Workers`, the slots and
their queue, over a :class:`~._core.WorkerBackend`).

The contract a sweeper codes against: :meth:`PipelineLauncher.submit` (a future of a Hydra
``JobReturn`` that never raises for a job's failure), :attr:`~PipelineLauncher.n_jobs`,
:meth:`~PipelineLauncher.shutdown`; Hydra's :meth:`~PipelineLauncher.launch` submits a batch
and returns its results in order.
"""

import atexit
import logging
import os
import sys
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
    WorkerBackend,
    WorkerLost,
    Workers,
    death_reason,
)
from hydra_plugins.pipeline_launcher._hooks import installed

log = logging.getLogger(__name__)

#: The backends a slot's worker can run on (``hydra.launcher.backend``).
BACKENDS = ("loky", "ray")


def _refuse(message: str) -> None:
    """A launcher option Hydra's schema let through but no backend takes: one line, exit
    status 2, as the application's own refusals (the launcher is made before any job)."""
    print(f"Error in config: {message}", file=sys.stderr)
    sys.exit(2)


class PipelineLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, warm: bool = True, backend: str | None = "loky",
                 ray: Any = None, **_: Any) -> None:
        backend = backend or "loky"  # hydra/launcher=joblib: joblib's schema, backend null
        if backend not in BACKENDS:
            _refuse(f"hydra.launcher.backend={backend}: the project's launcher runs its workers "
                    f"on {' or '.join(BACKENDS)} (this machine's processes, or Ray actors).")
        self.warm = warm
        self.backend_name = backend
        self._ray_conf = ray
        self._n_jobs_asked = n_jobs
        self._n_jobs = self._resolve_n_jobs(os.cpu_count() or 1, None)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._workers: Workers | None = None  # made in setup: Ray starts there, not on load

    # --- the contract -----------------------------------------------------------------------

    @property
    def n_jobs(self) -> int:
        """How many jobs run at once (worker processes)."""
        return self._n_jobs

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Keep the sweep's context, take the application's hooks, and start the workers now,
        so their start-up (spawn, TensorFlow's import) overlaps whatever the sweeper does
        before its first job."""
        # The sweeper shares this context: jobs it composes to check them are not composed
        # again to run them.
        hydra_context.config_loader = ComposeOnce.around(hydra_context.config_loader)
        self.config, self.task_function, self.hydra_context = config, task_function, \
            hydra_context
        if self._workers is None or self._workers.closed:  # first set-up, or after shutdown
            backend = self._workers.backend if self._workers else self._make_backend()
            self._n_jobs = self._resolve_n_jobs(backend.open(), backend)
            hooks = installed()
            self._workers = Workers(
                backend, self._n_jobs, failed=self._failed, sweep_dir=self._sweep_dir,
                hooks=hooks, init_args=lambda: (self.hydra_context, self.config,
                                                self.task_function, Singleton.get_state(),
                                                self.warm, hooks))
            self._workers.start()
        atexit.register(self.shutdown)  # after the backend's own (Ray's): it runs first

    def submit(self, overrides: Sequence[str], job_idx: int) -> Future:
        """Queue job ``job_idx``; it starts as soon as a worker is free. The future's result is
        its ``JobReturn``: COMPLETED with the task's value, or FAILED with the exception as
        ``_return_value`` (:class:`WorkerLost` if its worker died). It never raises for a
        job's failure."""
        if self.hydra_context is None or self._workers is None:
            raise RuntimeError("PipelineLauncher.submit before setup()")
        from hydra_plugins.pipeline_launcher import _worker as worker

        job = Job(job_idx, list(overrides))
        try:  # composed here, off the worker's time (a worker may well be busy meanwhile)
            job.config = worker.job_config(self.hydra_context, self.config, job_idx, overrides)
        except Exception as e:  # a job Hydra cannot compose fails alone, as in a worker
            job.future.set_result(self._failed(job, e))
            return job.future
        self._workers.queue(job)
        return job.future

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        """Hydra's batch: submit every job, wait for all, return their results in order (a
        failed one's ``return_value`` ends the sweep with exit status 1, its failure logged in
        one line: :class:`~._core.SweepFailed`)."""
        assert self.config is not None and self._workers is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs on %d warm workers, sweep output dir: %s",
                 len(job_overrides), self._n_jobs, sweep_dir)
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        futures = [self.submit(o, n) for o, n in zip(job_overrides, numbers, strict=True)]
        return self._workers.wait_all(futures, numbers)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (idle ones exit at once); queued jobs are not started. A stopping
        sweep's busy workers get SIGTERM first (once a job), so their runs end KILLED."""
        if self._workers is not None:
            self._workers.shutdown(wait)

    # --- set-up -----------------------------------------------------------------------------

    def _make_backend(self) -> WorkerBackend:
        if self.backend_name == "ray":
            from omegaconf import OmegaConf

            from hydra_plugins.pipeline_launcher._ray import RayBackend

            conf = OmegaConf.to_container(self._ray_conf, resolve=True) \
                if isinstance(self._ray_conf, DictConfig) else dict(self._ray_conf or {})
            return RayBackend(conf.get("init"), conf.get("remote"))
        from hydra_plugins.pipeline_launcher._loky import LokyBackend

        return LokyBackend()

    def _resolve_n_jobs(self, cores: int, backend: WorkerBackend | None) -> int:
        """``n_jobs``, where ``-1`` is one worker per core of the backend (joblib's rule). A
        backend whose cores are a hard limit (Ray: an actor beyond the cluster's CPUs never
        starts, and the jobs handed to it would wait forever) gets at most that many."""
        n = self._n_jobs_asked
        n = max(1, n if n > 0 else cores + 1 + n)
        if backend is not None and backend.cores_limit and n > cores:
            log.warning("hydra.launcher.n_jobs=%d, but the %s cluster holds %d workers of "
                        "hydra.launcher.ray.remote.num_cpus: %d workers.", n, backend.name,
                        cores, cores)
            n = cores
        return n

    def _sweep_dir(self) -> Path | None:
        return None if self.config is None else Path(str(self.config.hydra.sweep.dir)).absolute()

    def _failed(self, job: Job, error: BaseException) -> JobReturn:
        assert self.config is not None
        ret = JobReturn(overrides=job.overrides, task_name=self.config.hydra.job.name,
                        status=JobStatus.FAILED)
        ret._return_value = error
        return ret


__all__ = ["PipelineLauncher", "WorkerLost", "death_reason"]
