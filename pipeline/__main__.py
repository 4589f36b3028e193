"""Hydra entry point: ``python -m pipeline [overrides]`` (``-m`` for sweeps).

Only the config schemas are imported up front, so a bad config is refused in a second, before
TensorFlow or MLflow load and before anything is written. Then the surroundings are checked
(:mod:`pipeline.run.preflight`), then the job runs (:mod:`pipeline.run.lifecycle`). Exit status
(docs/reliability.md, "Exit statuses"; :func:`pipeline.process.outcome`): 0 done, 1 the run failed
(marked FAILED in MLflow), 2 refused before it started (Hydra's own composition errors too), 130
interrupted, 143 stopped by SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hydra_plugins.pipeline_launcher import install_hooks
from pipeline import PROJECT_ROOT, process
from pipeline.config import Config, register_configs, validate
from pipeline.errors import IN_CONFIG, ConfigError, PipelineError, Refusal

register_configs()
# The project's launcher reaches the sweep through these hooks only (imported at its set-up).
install_hooks("pipeline.sweep.hooks:SweepHooks")


# An absolute folder: Hydra reads a relative one as a package when the console script runs it.
@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    from pipeline.run import lifecycle

    process.mark_started()
    with _errors_leave(), lifecycle.guard():
        config = _admitted(cfg)
        with lifecycle.job(config, cfg) as job:
            return job.stored_value() if job.skipped else job.run()


def _admitted(cfg: DictConfig) -> Config:
    """The valid config of a run its surroundings can take; else a :class:`Refusal`."""
    try:
        config = validate(cfg)
    except PipelineError as e:
        raise Refusal(e, IN_CONFIG) from None
    from pipeline.run import preflight

    try:
        preflight.check(config)
    except PipelineError as e:
        raise Refusal(e, process.CANNOT_START) from None
    if config.sweep.resume and HydraConfig.get().mode != RunMode.MULTIRUN:
        raise Refusal(ConfigError(f"sweep.resume={config.sweep.resume} applies to sweeps only: "
                                  f"add -m and the sweep's overrides."), IN_CONFIG)
    return config


@contextlib.contextmanager
def _errors_leave() -> Iterator[None]:
    """A single run's refusal, failure or interruption leaves in one line with its exit status
    (:func:`pipeline.process.exit_with`). A sweep's job raises its error as it is: the sweep
    records the job FAILED and goes on; so does any error with ``HYDRA_FULL_ERROR=1`` (for its
    traceback)."""
    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    traceback = sweep_job or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        yield
    except Refusal as e:
        if traceback:
            raise e.error from None
        process.exit_with(e)
    except PipelineError as e:
        if traceback:
            raise
        process.exit_with(e)
    except KeyboardInterrupt as e:
        if sweep_job:
            raise
        process.exit_with(e)


def cli() -> None:
    """``main``, its exit status kept for the last exit handler; Hydra's composition errors (a
    wrong type, an unknown key or option; Hydra prints them and exits 1 before any pipeline code
    runs) and refusals from outside a job (the sweep's callbacks, the search) leave with 2."""
    atexit.register(process.leave)  # registered before every handler but logging's: runs last
    try:
        main()
        process.exit_code = process.DONE
    except Refusal as e:
        process.exit_with(e)
    except SystemExit as e:
        if e.code == 1 and not process.started:
            process.exit_code = process.REFUSED
            sys.exit(process.REFUSED)
        process.exit_code = process.status_of(e.code)
        raise
    except KeyboardInterrupt:
        process.exit_code = 130
        raise


if __name__ == "__main__":
    cli()
