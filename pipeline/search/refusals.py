"""The refusals a search gets before anything is recorded (no parent run, no study): a bad
objective, ``n_trials < 1``, an unknown sampler or pruner, a direction that contradicts the
objective's metric, an empty space, an unreachable study storage, and a resumed search whose
space, objective or direction differ from its study's."""

from __future__ import annotations

import json
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.search import objective, space, study
from pipeline.search.settings import Settings
from pipeline.tracking import keys

#: ``hydra.sweeper.direction``.
DIRECTIONS = ("maximize", "minimize")


def _build(kind: str, spec: Any) -> Any:
    known = "optuna.samplers.TPESampler, RandomSampler, CmaEsSampler, GPSampler, " \
        "NSGAIISampler, QMCSampler" if kind == "sampler" else \
        "optuna.pruners.MedianPruner, SuccessiveHalvingPruner, HyperbandPruner, " \
        "PercentilePruner, ThresholdPruner, NopPruner"
    if spec is not None and not isinstance(spec, DictConfig | dict):
        raise ConfigError(f"hydra.sweeper.{kind}={spec} is not a {kind} config: give its class "
                          f"as hydra.sweeper.{kind}._target_ (e.g. {known.split(',')[0]}) and "
                          f"its arguments beside it.")
    target = spec.get("_target_") if spec is not None else None
    try:
        return study.build(spec)
    except Exception as e:
        inner = e.__cause__ or e  # Hydra's wrapper says where; the class's own error says why
        lines = [x for x in str(inner).strip().splitlines() if x.strip()]
        cause = next((x for x in lines if not x.endswith(":")), type(inner).__name__)
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
        check_same_search(config, str(resume), s, url)


def check_same_search(config: DictConfig, resume: str, settings: Settings, url: str) -> None:
    """``sweep.resume``: refuse, in one line naming what differs, a search whose space,
    objective or direction are not its study's."""
    from pipeline.sweep.session import find_parent

    parent = find_parent(OmegaConf.to_object(config.tracking), resume)
    name = parent.tags.get(keys.STUDY_NAME)
    if not name:
        return  # no study yet (stopped before it), or not a search: the sweep's check says
    try:
        s = optuna.load_study(study_name=name, storage=study.rdb(url))
    except KeyError:
        raise ConfigError(f"sweep.resume={parent.run_id}: its study {name} is not in "
                          f"{study.without_password(url)}; resume with the storage it used "
                          f"(hydra.sweeper.storage).") from None
    space_, _ = space.parse(settings.arguments(list(config.hydra.overrides.task)))
    now = study.attrs(settings, space.to_json(space_)) | {"direction": settings.direction}
    then = {**s.user_attrs, "direction": s.direction.name.lower()}
    differ = [k for k in ("direction", study.ATTR_OBJECTIVE, study.ATTR_OBJECTIVE_VALUE,
                          study.ATTR_SPACE) if k in then and then[k] != now[k]]
    if not differ:
        return
    said = []
    for k in differ:
        if k == study.ATTR_SPACE:
            a, b = json.loads(then[k]), json.loads(now[k])
            keys_ = sorted(k2 for k2 in a.keys() | b.keys() if a.get(k2) != b.get(k2))
            said.append(f"search space ({', '.join(keys_)})")
        else:
            said.append(f"{k} ({then[k]} in the study, {now[k]} now)")
    raise ConfigError(f"sweep.resume={parent.run_id}: this search differs from its study {name} "
                      f"in {'; '.join(said)}: resume with the same search, or start a new one "
                      f"without sweep.resume.")
