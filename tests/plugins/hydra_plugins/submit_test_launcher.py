"""A launcher for tests only: Hydra's joblib launcher plus ``submit(overrides, job_idx) ->
Future[JobReturn]``, ``n_jobs`` and ``shutdown()``, the contract a warm-worker launcher offers,
so the Optuna sweeper's no-barrier path runs on real worker processes (loky's reusable
executor, joblib's engine; Hydra jobs cannot share a process's threads). Hydra takes launchers
from the ``hydra_plugins`` namespace only: with ``tests/plugins`` on ``PYTHONPATH``, use
``hydra/launcher=joblib`` and
``hydra.launcher._target_=hydra_plugins.submit_test_launcher.SubmitLauncher``."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra_plugins.hydra_joblib_launcher._core import execute_job
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib.externals.loky import get_reusable_executor


class SubmitLauncher(JoblibLauncher):
    """One job per ``submit``; a job's failure is in its JobReturn, never raised."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_jobs = int(kwargs.get("n_jobs") or 1)
        self._executor: Any = None

    def submit(self, overrides: list[str], job_idx: int) -> Future[JobReturn]:
        assert self.config is not None
        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if self._executor is None:
            self._executor = get_reusable_executor(max_workers=self.n_jobs, reuse=True)
        return self._executor.submit(execute_job, job_idx, list(overrides), self.hydra_context,
                                     self.config, self.task_function, Singleton.get_state())

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
