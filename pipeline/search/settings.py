"""``hydra.sweeper`` of the Optuna search, read once into :class:`Settings` (the sweeper builds
them in its ``__init__``; :mod:`pipeline.search.refusals` checks them before anything is
recorded)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.search import objective


@dataclass(frozen=True)
class Settings:
    """``hydra.sweeper``: see ``hydra_plugins/pipeline_optuna_sweeper``."""

    direction: str
    objective: str
    objective_value: str
    study_name: str | None
    storage: str | None
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    sampler: Any
    pruner: Any
    params: dict[str, str] | None
    top_k: int
    seeds: int
    first_seed: int | None

    @classmethod
    def of(cls, sweeper: Mapping[str, Any] | DictConfig) -> Settings:
        """The typed settings from the sweeper's config node (or Hydra's keyword arguments)."""
        s = sweeper if isinstance(sweeper, DictConfig) else OmegaConf.create(dict(sweeper))
        re_ = s.get("reevaluate") or {}
        params = s.get("params")
        return cls(
            direction=str(s.direction).rsplit(".", 1)[-1].lower(), objective=str(s.objective),
            objective_value=str(s.get("objective_value", objective.BEST)),
            study_name=s.get("study_name"), storage=s.get("storage"), n_trials=int(s.n_trials),
            n_jobs=int(s.get("n_jobs") or 1),
            max_failure_rate=float(s.max_failure_rate),
            sampler=s.get("sampler"), pruner=s.get("pruner"),
            params={str(k): str(v) for k, v in params.items()} if params else None,
            top_k=int(re_.get("top_k", 3)), seeds=int(re_.get("seeds", 3)),
            first_seed=re_.get("first_seed"))

    def arguments(self, task_overrides: list[str]) -> list[str]:
        """``hydra.sweeper.params`` and the command's overrides, as the space is parsed."""
        return [*(f"{k}={v}" for k, v in (self.params or {}).items()), *task_overrides]
