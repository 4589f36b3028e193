"""Inside a worker process: set up once (the sweep's Hydra context, the application's own set-up,
a watchdog on the launcher), then run job after job, each from a clean per-job state.

A worker is a long-lived process (a loky worker, or a Ray actor) that runs many jobs, so
whatever a job leaves behind in the process must not reach the next one: the working directory,
environment variables, Hydra's job state and logging (set again by ``run_job``), the MLflow
run still active after a job that died half-way, the signal a job noted, TensorFlow's seeds
(every run seeds them again). What is the application's to set up or put back (its imports,
its per-job state, what it keeps warm on purpose) it does in its hooks (:mod:`._hooks`:
``worker_started``, ``job_starting``), the one seam through which a worker reaches it.
"""


import contextlib
import gc
import os
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hydra_plugins.pipeline_launcher._core import WORKER_SPAN
from hydra_plugins.pipeline_launcher._hooks import LauncherHooks, NoHooks

#: How often the watchdog looks for the launcher, and how long a job stopped because the
#: launcher is gone gets to mark its run KILLED (with a checkpoint) before the worker exits.
WATCH_S, GRACE_S = 0.5, 5.0


@dataclass
class _Sweep:
    hydra_context: HydraContext
    config: DictConfig
    task_function: TaskFunction
    singleton_state: dict[Any, Any]
    cwd: str
    environ: dict[str, str]
    hooks: LauncherHooks


_sweep: _Sweep | None = None
_running = threading.Event()


def init(launcher_pid: int | None, hydra_context: HydraContext, config: DictConfig,
         task_function: TaskFunction, singleton_state: dict[Any, Any], warm: bool,
         hooks: LauncherHooks | None = None) -> None:
    """A worker's set-up (loky's initializer, a Ray actor's constructor): keep the sweep's
    context, start the watchdog on the launching process ``launcher_pid`` (None: a Ray actor,
    which Ray ends with its driver), and let the application set the worker up (its imports:
    ``hooks.worker_started``)."""
    global _sweep
    if launcher_pid is not None:
        threading.Thread(target=_watch, args=(launcher_pid,), daemon=True,
                         name="launcher-watchdog").start()
    hooks = hooks or NoHooks()
    hooks.worker_started(warm)
    # What the imports built lives as long as the worker: out of the collector's scans, so a
    # collection (loky runs one between jobs, on the next job's path) walks only a job's objects.
    gc.freeze()
    _sweep = _Sweep(hydra_context, config, task_function, singleton_state, os.getcwd(),
                    dict(os.environ), hooks)


def ready() -> int:
    """A first call that returns once the worker is set up: its pid."""
    return os.getpid()


def _watch(launcher_pid: int) -> None:
    """Die with the launcher. A worker's parent is the launching process; once it is gone
    (``kill -9``, a lost node's session), the worker is re-parented. A job still running is
    stopped as by SIGTERM (its run KILLED, with a checkpoint, so ``sweep.resume`` continues
    it), then the worker exits, at the latest after :data:`GRACE_S`."""
    while os.getppid() == launcher_pid:
        time.sleep(WATCH_S)
    if _running.is_set():
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while _running.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
    os._exit(1)


def _fresh_state(assigned_at: float) -> None:
    """What one job may have changed in this process, put back before the next."""
    assert _sweep is not None
    with contextlib.suppress(OSError):
        os.chdir(_sweep.cwd)
    for name in set(os.environ) - set(_sweep.environ):
        del os.environ[name]
    os.environ.update(_sweep.environ)
    _sweep.hooks.job_starting(assigned_at)
    setup_globals()
    Singleton.set_state(_sweep.singleton_state)


def job_config(hydra_context: HydraContext, sweep_config: DictConfig, idx: int,
               overrides: Sequence[str]) -> DictConfig:
    """Job ``idx``'s composed config, as Hydra's launchers make it (in the launching process,
    the one its sweeper composed to check the job, if it did: :mod:`._compose`)."""
    loader = hydra_context.config_loader
    compose = getattr(loader, "take", loader.load_sweep_config)
    config = compose(sweep_config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
        config.hydra.job.num = idx
    return config


def run(idx: int, overrides: Sequence[str], config: DictConfig | None = None) -> JobReturn:
    """Job ``idx`` of the sweep, as Hydra's ``run_job`` runs it (``config``: composed by the
    launcher while this worker was busy; else composed here); a job that raises is a FAILED
    return whose exception survives pickling back to the launcher."""
    assert _sweep is not None
    started = time.time()
    _running.set()
    try:
        _fresh_state(time.time())
        if config is None:
            config = job_config(_sweep.hydra_context, _sweep.config, idx, overrides)
        HydraConfig.instance().set_config(config)
        ret = run_job(hydra_context=_sweep.hydra_context, config=config,
                      task_function=_sweep.task_function, job_dir_key="hydra.sweep.dir",
                      job_subdir_key="hydra.sweep.subdir")
    finally:
        _running.clear()
    if ret.status == JobStatus.FAILED:
        ret.return_value = _picklable(ret._return_value)
    setattr(ret, WORKER_SPAN, (started, time.time()))  # a search's worker utilisation
    return ret


def _picklable(e: BaseException) -> BaseException:
    """``e``, or a RuntimeError with its type and message where ``e`` does not pickle."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
