"""``hydra.sweeper`` of the Optuna search, read once into :class:`Settings` (the sweeper builds
them in its ``__init__``), and the refusals a search gets before anything is recorded: a bad
objective, ``n_trials < 1``, an unknown sampler or pruner, a direction that contradicts the
objective's metric, an unreachable study storage, and a resumed search whose space, objective
or direction differ from its study's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.search import objective

#: ``hydra.sweeper.direction``.
DIRECTIONS = ("maximize", "minimize")


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


def space_json(space_: Mapping[str, Any]) -> str:
    """The search space as JSON (a study attribute a resume compares)."""
    from optuna.distributions import distribution_to_json

    return json.dumps({k: json.loads(distribution_to_json(d)) for k, d in space_.items()},
                      sort_keys=True)


def _build(kind: str, spec: Any) -> Any:
    from pipeline.search import study

    target = OmegaConf.select(spec, "_target_", default=None) if spec is not None else None
    try:
        return study.build(spec)
    except Exception as e:
        known = "optuna.samplers.TPESampler, RandomSampler, CmaEsSampler, GPSampler, " \
            "NSGAIISampler, QMCSampler" if kind == "sampler" else \
            "optuna.pruners.MedianPruner, SuccessiveHalvingPruner, HyperbandPruner, " \
            "PercentilePruner, ThresholdPruner, NopPruner"
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"hydra.sweeper.{kind}._target_={target} cannot be made ({cause}): "
                          f"give an Optuna {kind} class, e.g. {known}.") from None


def check(s: Settings, config: DictConfig) -> None:
    """Every refusal that needs no store: objective, n_trials, sampler, pruner, direction."""
    objective.check(config)
    if s.n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={s.n_trials}: a search runs at least one "
                          f"trial; give n_trials >= 1.")
    if s.direction not in DIRECTIONS:
        raise ConfigError(f"hydra.sweeper.direction={s.direction} is not allowed: use "
                          f"{' or '.join(DIRECTIONS)}.")
    higher = objective.higher_is_better(s.objective)
    if higher is not None and (s.direction == "maximize") != higher:
        want = "maximize" if higher else "minimize"
        raise ConfigError(
            f"hydra.sweeper.direction={s.direction} contradicts the objective "
            f"hydra.sweeper.objective={s.objective}, which is better when "
            f"{'higher' if higher else 'lower'}: set hydra.sweeper.direction={want}.")
    if not 0.0 <= s.max_failure_rate <= 1.0:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={s.max_failure_rate}: give a "
                          f"fraction from 0 to 1.")
    _build("sampler", s.sampler)
    _build("pruner", s.pruner)


def refuse_early(config: DictConfig) -> None:
    """Before the sweep's parent run or its study exist: :func:`check`, the storage reachable,
    and a resumed search's study the same search (raises :class:`ConfigError`)."""
    from pipeline.search import space, study

    s = Settings.of(config.hydra.sweeper)
    check(s, config)
    space_, _ = space.parse(s.arguments(list(config.hydra.overrides.task)))
    if not space_:
        raise ConfigError("hydra.sweeper.params is empty: a search needs at least one swept "
                          "key, e.g. algorithm.inner_lr='tag(log, interval(0.01, 1))'.")
    url = study.storage_of(config)
    study.check_reachable(url)
    resume = OmegaConf.select(config, "sweep.resume", default=None)
    if resume:
        study.check_same_search(config, str(resume), s, url)
