"""Hydra entry point: ``python -m pipeline [overrides]`` (``-m`` for sweeps).

Only the config schemas are imported up front, so a bad config is refused in a second, before
TensorFlow or MLflow load and before anything is written. Then the surroundings are checked
(:mod:`pipeline.preflight`), then the run starts (:mod:`pipeline.runner`). Exit status: 0 done,
1 the run failed (marked FAILED in MLflow), 2 refused before it started, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import runtime_env
from pipeline.config import register_configs, validate
from pipeline.errors import PipelineError, stop_on_sigterm

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
    try:
        config = validate(cfg)
    except PipelineError as e:
        _fail(e, "Error in config", 2)

    from pipeline import preflight

    try:
        preflight.check(config)
    except PipelineError as e:
        _fail(e, preflight.REFUSED, 2)

    runtime_env.import_tensorflow()
    from pipeline import sweep
    from pipeline.runner import execute

    hc = HydraConfig.get()
    job = sweep.job_context(config.tracking, config.tracking.run_name or config.algorithm.name)
    stop_on_sigterm()
    try:
        result = execute(config, cfg, list(hc.overrides.task),
                         Path(hc.runtime.output_dir) / ".hydra",
                         run_name=job.run_name if job else None,
                         extra_tags=job.tags if job else None)
    except PipelineError as e:
        _fail(e, "Run failed (marked FAILED in MLflow)", 1)
    except KeyboardInterrupt:
        if hc.mode == RunMode.MULTIRUN:
            raise
        print("Interrupted: the run is marked KILLED in MLflow; its checkpoint (if meta-training "
              "had started) is logged and `python -m pipeline.resume RUN_ID` continues it.",
              file=sys.stderr)
        sys.exit(130)
    higher_is_better = result.algorithm is None or result.algorithm.loss.higher_is_better
    return sweep.objective(result.objective, higher_is_better)


if __name__ == "__main__":
    main()
