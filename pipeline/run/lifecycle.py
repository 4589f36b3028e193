"""One Hydra job from its start to its end, single run or a sweep's job: the one place the entry
point meets the sweep (:mod:`pipeline.sweep`) and the search (:mod:`pipeline.search`).

:func:`guard` surrounds the whole job (a stopping sweep starts no job; SIGTERM stops the job,
not the worker). :func:`job` opens what the job belongs to (its sweep's parent or group, its
search trial, what a resumed sweep does with it) and its ``finally`` ends it (a replaced run
linked to its replacement, the group written after its last job). :class:`Job` runs it: skips a
resumed sweep's FINISHED job, continues a KILLED one from its checkpoint, or runs it afresh, and
turns the result into the value returned to the sweeper.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import process, sweep
from pipeline.config import Config
from pipeline.errors import TrialPruned

log = logging.getLogger("pipeline")


def guard() -> contextlib.AbstractContextManager[None]:
    """Around a whole job (its config checks too): a sweep's job refuses to start once the sweep
    is stopping, and SIGTERM stops the job, not the worker. A no-op for a single run."""
    return sweep.job_guard()


@dataclass
class Job:
    """A job, once opened by :func:`job`: ``context`` is its sweep's (None for a single run),
    ``trial`` its search trial's (None outside a search)."""

    config: Config
    raw: DictConfig
    context: sweep.JobContext | None
    trial: Any = None

    @property
    def skipped(self) -> bool:
        """A resumed sweep's job whose run already FINISHED: nothing to run."""
        return self.context is not None and self.context.action == sweep.SKIP

    def stored_value(self) -> float:
        """A skipped job's value, as its run logged it."""
        assert self.context is not None and self.context.previous is not None
        log.info("Job %d: run %s already FINISHED; skipped.", self.context.num,
                 self.context.previous.run_id)
        value, higher = sweep.stored_objective(self.context)
        return self.value(value, higher, self.context.uri, self.context.previous.run_id)

    def run(self) -> float:
        """Run the job (or continue its KILLED run) and return the sweeper's value; a trial its
        pruner stopped returns NaN (its run FINISHED as ``pruned: ...``, tagged PRUNED; the
        search tells the trial)."""
        from pipeline.run import runtime_env

        runtime_env.import_tensorflow()
        from pipeline.run.runner import execute

        on_validation = self._reporter()
        hc = HydraConfig.get()
        try:
            if self.context is not None and self.context.action == sweep.RESUME:
                result = self._continue(on_validation)
            else:
                result = execute(self.config, self.raw, list(hc.overrides.task),
                                 Path(hc.runtime.output_dir) / ".hydra",
                                 run_name=self.context.run_name if self.context else None,
                                 extra_tags=self.context.tags if self.context else None,
                                 on_validation=on_validation, checked=True)
        except TrialPruned:
            return math.nan
        higher_is_better = result.algorithm is None or result.algorithm.loss.higher_is_better
        return self.value(result.objective, higher_is_better, self.config.tracking.uri,
                          result.run_id)

    def _reporter(self) -> Callable[[int, dict[str, float]], None] | None:
        if self.trial is None:
            return None
        from pipeline.search.trial import Reporter

        return Reporter(self.trial)

    def _continue(self, on_validation: Callable[[int, dict[str, float]], None] | None) -> Any:
        """A resumed sweep's KILLED job: its run continued in place from its checkpoint, as
        ``python -m pipeline.resume`` does (bit-identical to an uninterrupted run)."""
        from pipeline.errors import ConfigError
        from pipeline.replay import logged, resume

        assert self.context is not None and self.context.previous is not None
        previous, num = self.context.previous, self.context.num
        drift = logged.drift(self.context.uri, previous.run_id,
                             OmegaConf.to_container(self.raw, resolve=True))
        if drift:
            raise ConfigError(f"sweep.resume: job {num}'s config differs from its run "
                              f"{previous.run_id}'s ({'; '.join(drift[:3])}): the config files "
                              f"changed since; start a new sweep.")
        return resume.continue_run(self.config, self.raw, self.context.uri, previous,
                                   on_validation=on_validation,
                                   say=lambda line: log.info("Job %d: %s", num, line),
                                   checked=True)

    def value(self, value: float, higher_is_better: bool, uri: str, run_id: str | None) -> float:
        """The job's return value: a search trial's objective (the metric and best/last its
        study records, e.g. the best ``val/`` accuracy over meta-training) or else the run's main
        test metric."""
        if self.trial is not None and run_id is not None:
            from pipeline.search import objective

            value = objective.of_run(uri, run_id, self.trial.metric, self.trial.how,
                                     higher_is_better)
        return sweep.objective(value, higher_is_better)


@contextlib.contextmanager
def job(config: Config, raw: DictConfig) -> Iterator[Job]:
    """Open the job (its sweep's context and search trial; SIGTERM as Ctrl-C for a single run),
    and end it however it ends, unless a signal stopped it (its run is KILLED, the sweep's
    resume continues it) or it was skipped (nothing ran)."""
    hc = HydraConfig.get()
    context = sweep.job_context(config.tracking, config.tracking.run_name or config.algorithm.name)
    found = Job(config, raw, context)
    if context is not None and config.sweep.trial is not None:  # a job of an Optuna search
        from pipeline.search import trial as search_trial

        found.trial = search_trial.of_job(config.sweep.trial, config.sweep.study, hc,
                                          config.tracking.uri)
        if found.trial is not None:
            context.tags.update(found.trial.tags)
    if context is None:
        process.stop_on_sigterm()  # a sweep's job has it from guard()
    ends = context is not None and not found.skipped
    try:
        yield found
    except KeyboardInterrupt:
        ends = False
        raise
    finally:
        if ends:
            assert context is not None
            sweep.job_ended(context)
