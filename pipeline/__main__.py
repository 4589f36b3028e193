"""Hydra entry point: ``python -m pipeline [overrides]`` (``-m`` for sweeps).

Only the config schemas are imported up front, so a bad config is refused in a second, before
TensorFlow or MLflow load and before anything is written. Then the surroundings are checked
(:mod:`pipeline.run.preflight`), then the run starts (:mod:`pipeline.run.runner`). Exit status
(README, "Exit status"): 0 done, 1 the run failed (marked FAILED in MLflow), 2 refused before it
started (Hydra's own composition errors too), 130 interrupted, 143 stopped by SIGTERM.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline.config import register_configs, validate
from pipeline.errors import (
    INTERRUPTED,
    ConfigError,
    PipelineError,
    TrialPruned,
    interrupted_status,
    leave_now,
    stop_on_sigterm,
)
from pipeline.run import runtime_env

log = logging.getLogger("pipeline")

register_configs()


def _fail(e: PipelineError, what: str, status: int) -> None:
    """Single runs print the reason alone and exit; sweeps and HYDRA_FULL_ERROR=1 re-raise."""
    if HydraConfig.get().mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise e
    print(f"{what}: {e}", file=sys.stderr)
    sys.exit(status)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from pipeline import errors, sweep

    errors.started = True
    with sweep.job_guard():  # multirun jobs: SIGTERM stops the job, not the worker
        return _main(cfg)


def _main(cfg: DictConfig) -> float:
    try:
        config = validate(cfg)
    except PipelineError as e:
        _fail(e, "Error in config", 2)

    from pipeline.run import preflight

    try:
        preflight.check(config)
    except PipelineError as e:
        _fail(e, preflight.REFUSED, 2)

    from pipeline import sweep

    hc = HydraConfig.get()
    if config.sweep.resume and hc.mode != RunMode.MULTIRUN:
        _fail(ConfigError(f"sweep.resume={config.sweep.resume} applies to sweeps only: add -m "
                          f"and the sweep's overrides."), "Error in config", 2)
    job = sweep.job_context(config.tracking, config.tracking.run_name or config.algorithm.name)
    trial = None
    if job is not None and config.sweep.trial is not None:  # a job of an Optuna search
        from pipeline.search import trial as search_trial

        trial = search_trial.of_job(config.sweep.trial, config.sweep.study, hc,
                                    config.tracking.uri)
        if trial is not None:
            job.tags.update(trial.tags)
    if job is not None and job.action == sweep.SKIP:  # a resumed sweep's FINISHED job
        assert job.previous is not None
        log.info("Job %d: run %s already FINISHED; skipped.", job.num, job.previous.run_id)
        value, higher = sweep.stored_objective(job)
        return _objective(value, higher, job.uri, job.previous.run_id)

    runtime_env.import_tensorflow()
    from pipeline.run.runner import execute

    on_validation = None
    if trial is not None:
        from pipeline.search.trial import Reporter

        on_validation = Reporter(trial)

    if job is None:
        stop_on_sigterm()  # a sweep's job has it from sweep.job_guard
    try:
        if job is not None and job.action == sweep.RESUME:
            result = _resume_job(config, cfg, job, on_validation)
        else:
            result = execute(config, cfg, list(hc.overrides.task),
                             Path(hc.runtime.output_dir) / ".hydra",
                             run_name=job.run_name if job else None,
                             extra_tags=job.tags if job else None,
                             on_validation=on_validation)
    except TrialPruned:  # the run is KILLED and tagged PRUNED; the search tells the trial
        if job is not None:
            sweep.job_ended(job)
        return float("nan")
    except PipelineError as e:
        if job is not None:
            sweep.job_ended(job)
        from pipeline.tracking.run import StoreLost, Undelivered
        from pipeline.tracking.store import StoreNotCreated

        if isinstance(e, StoreNotCreated):  # nothing was recorded, nothing is left behind
            _fail(e, "Cannot start", 2)
        if isinstance(e, Undelivered | StoreLost):  # the message says what the store holds
            _fail(e, "Run not recorded in full", 1)
        _fail(e, "Run failed (marked FAILED in MLflow)", 1)
    except KeyboardInterrupt:
        if hc.mode == RunMode.MULTIRUN:
            raise
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(interrupted_status())
    except Exception:
        if job is not None:
            sweep.job_ended(job)
        raise
    if job is not None:
        sweep.job_ended(job)
    higher_is_better = result.algorithm is None or result.algorithm.loss.higher_is_better
    return _objective(result.objective, higher_is_better, config.tracking.uri, result.run_id)


def _objective(value: float, higher_is_better: bool, uri: str, run_id: str | None) -> float:
    """The job's return value: an Optuna search's objective (``hydra.sweeper.objective``, e.g.
    the best ``val/`` accuracy over meta-training) or else the run's main test metric."""
    from omegaconf import OmegaConf

    from pipeline import sweep

    hc = HydraConfig.get()
    metric = OmegaConf.select(hc, "sweeper.objective", default=None)
    if metric is not None and run_id is not None:
        from pipeline.search import objective

        how = OmegaConf.select(hc, "sweeper.objective_value", default=objective.BEST)
        value = objective.of_run(uri, run_id, str(metric), str(how), higher_is_better)
    return sweep.objective(value, higher_is_better)


def _resume_job(config, raw: DictConfig, job, on_validation=None):
    """A resumed sweep's KILLED job: continue its run from its logged checkpoint, in place, as
    ``python -m pipeline.resume`` does (bit-identical to an uninterrupted run)."""
    from omegaconf import OmegaConf

    from pipeline.replay import logged as replay
    from pipeline.replay import resume
    from pipeline.run.runner import Resume, execute
    from pipeline.tracking import keys, store

    previous = job.previous
    with tempfile.TemporaryDirectory() as tmp:
        logged = store.download_artifacts(job.uri, previous.run_id, keys.CONFIG_FILE, Path(tmp))
        drift = replay.config_drift(json.loads(logged.read_text()) if logged else {},
                                    OmegaConf.to_container(raw, resolve=True))
    if drift:
        raise ConfigError(f"sweep.resume: job {job.num}'s config differs from its run "
                          f"{previous.run_id}'s ({'; '.join(drift[:3])}): the config files "
                          f"changed since; start a new sweep.")
    ckpt = resume.checkpoint_of(job.uri, previous.run_id)
    log.info("Job %d: resuming run %s at meta-iteration %d", job.num, previous.run_id,
             ckpt.progress.iteration)
    return execute(config, raw, resume=Resume(previous.run_id, ckpt,
                                              previous.tags.get(keys.DATA_FINGERPRINT, "")),
                   on_validation=on_validation)

class _Exit:
    """The status this process leaves with: 1 unless ``main`` returned or exited."""

    code = 1


def _leave() -> None:
    """The last exit handler: leave without the interpreter's teardown (about 1 s here, on
    every command's wall time and on a sweep's end). What matters is done by then: runs ended
    and flushed, the other exit handlers run. It also keeps a second Ctrl-C from landing in
    that teardown, where the default handlers are back and the signal would kill the process
    (exit -2 instead of 130)."""
    leave_now(_Exit.code)


def _status(code: object) -> int:
    """The exit status Python gives ``SystemExit(code)``."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def cli() -> None:
    """``main`` with Hydra's composition errors (a wrong type, an unknown key or option; Hydra
    prints them and exits 1 before any pipeline code runs) as refusals: exit status 2."""
    from pipeline import errors

    atexit.register(_leave)  # registered before every handler but logging's: it runs last
    try:
        main()
        _Exit.code = 0
    except SystemExit as e:
        if e.code == 1 and not errors.started:
            _Exit.code = 2
            sys.exit(2)
        _Exit.code = _status(e.code)
        raise
    except KeyboardInterrupt:
        _Exit.code = 130
        raise


if __name__ == "__main__":
    cli()
