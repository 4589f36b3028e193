"""Inside a search's job: its trial (``sweep.trial``, ``sweep.study``, set by the search), the
validation values it reports to that trial at every validation point, the pruner's verdict, and
the objective it returns.

The job opens the study from the storage the search created, with the pruner configured in
``hydra.sweeper.pruner`` (Optuna keeps no pruner in the storage), reports the ``val/``
objective with step = meta-iterations done, and, when the pruner says so, stops meta-training by
raising :class:`~pipeline.errors.TrialPruned`. Its run, with its curves up to there, ends
FINISHED (a pruned trial is a normal outcome of a search, and MLflow's UI draws KILLED with the
same red cross as FAILED) as ``pruned: <name>``, tagged ``trial_state=PRUNED`` and the step, with
a description that says so and no ``error`` tag; it logs no ``search/objective``, so it is never
ranked among complete trials. The trial's state is told by the search, which reads the step from
the trial's user attributes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import TrialPruned
from pipeline.search import objective, study
from pipeline.tracking import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialJob:
    """The trial a job runs and what it reports."""

    number: int
    study_name: str
    storage: str
    metric: str
    how: str
    pruner: object | None

    @property
    def tags(self) -> dict[str, str]:
        return {keys.TRIAL_NUMBER: str(self.number), keys.STUDY_NAME: self.study_name,
                keys.TRIAL_STATE: "RUNNING"}


def of_job(sweep_number: int | None, study_name: str | None, hydra_cfg: DictConfig,
           tracking_uri: str) -> TrialJob | None:
    """The job's trial, from the overrides the search adds: the storage from the sweeper's
    config, then what the trial returns and its pruner from the study's user attributes (the
    search wrote them once; a study made before they existed falls back to the sweeper's
    config). None outside a search."""
    if sweep_number is None or not study_name:
        return None
    sweeper = hydra_cfg.sweeper
    url = study.storage_url(OmegaConf.select(sweeper, "storage", default=None), tracking_uri)
    attrs = study.open_study(url, str(study_name), "maximize").user_attrs
    if study.ATTR_OBJECTIVE in attrs:
        metric, how = attrs[study.ATTR_OBJECTIVE], attrs[study.ATTR_OBJECTIVE_VALUE]
        pruner = json.loads(attrs.get(study.ATTR_PRUNER, "null"))
    else:
        metric, how = str(sweeper.objective), str(OmegaConf.select(
            sweeper, "objective_value", default=objective.BEST))
        pruner = OmegaConf.select(sweeper, "pruner", default=None)
    return TrialJob(int(sweep_number), str(study_name), url, str(metric), str(how), pruner)


class Reporter:
    """Reports each validation's objective value to the trial; raises when pruned."""

    def __init__(self, job: TrialJob):
        self.job = job
        s = study.open_study(job.storage, job.study_name, "maximize",
                             pruner=study.pruner_of(job.pruner))
        # Optuna's handle on a trial another process asked for: its id in the storage
        trial_id = s._storage.get_trial_id_from_study_id_trial_number(s._study_id, job.number)
        self.trial = optuna.trial.Trial(s, trial_id)

    def __call__(self, done: int, record: dict[str, float]) -> None:
        value = record.get(self.job.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, done)  # a resumed run's earlier steps are ignored by Optuna
        if self.trial.should_prune():
            self.trial.set_user_attr(keys.PRUNED_STEP, done)
            log.info("Trial %d pruned after %d meta-iterations (%s %.4f)", self.job.number, done,
                     self.job.metric, value)
            raise TrialPruned(
                f"pruned by the search's pruner after {done} meta-iterations ({self.job.metric}="
                f"{value:.4g}); not a failure",
                {keys.TRIAL_STATE: keys.STATE_PRUNED, keys.PRUNED_STEP: str(done),
                 keys.NOTE: pruned_note(done, self.job.metric, value)},
                keys.PRUNED_NAME_PREFIX)


def pruned_note(step: int, metric: str, value: float) -> str:
    """A pruned trial's run description: where it stopped, and that it is no failure."""
    return (f"Pruned by the search after {step} meta-iterations ({metric}={value:.4g} there; "
            f"trial_state=PRUNED): stopped early on purpose, not a failure. It has no "
            f"{keys.TRIAL_OBJECTIVE}: only complete trials are ranked.")
