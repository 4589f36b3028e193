"""A search's objective: which metric a trial returns (a ``val/`` metric, its best or its last
value over meta-training), and the refusal of a search that would tune on the test tasks.

Selecting hyperparameters on the test tasks biases the reported score upward; the field's
protocol selects on validation tasks and touches the test tasks once, for the chosen config.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.tracking import keys, store

#: ``hydra.sweeper.objective_value``: the best value over the validation points, or the last.
BEST, LAST = "best", "last"


def sweeper_setting(config: DictConfig, key: str, default=None):
    return OmegaConf.select(config, f"hydra.sweeper.{key}", default=default)


def check(config: DictConfig) -> None:
    """Refuse, before anything is recorded, a search that would select on the test tasks or
    whose ``val/`` objective no validation produces."""
    metric = str(sweeper_setting(config, "objective"))
    how = str(sweeper_setting(config, "objective_value", BEST))
    if how not in (BEST, LAST):
        raise ConfigError(f"hydra.sweeper.objective_value={how} is not allowed: use {BEST} or "
                          f"{LAST}.")
    if metric.startswith(keys.TEST):
        if not OmegaConf.select(config, "sweep.allow_test_objective", default=False):
            raise ConfigError(
                f"hydra.sweeper.objective={metric} selects hyperparameters on the test tasks "
                f"(an optimistic, biased score): use a {keys.VAL} metric with "
                f"meta_train.validate_every > 0, or set sweep.allow_test_objective=true.")
        return
    if not metric.startswith(keys.VAL):
        raise ConfigError(f"hydra.sweeper.objective={metric} is not allowed: give a {keys.VAL} "
                          f"metric (e.g. {keys.VAL}query_acc_after_mean).")
    if not OmegaConf.select(config, "meta_train.validate_every", default=0):
        raise ConfigError(f"hydra.sweeper.objective={metric} needs validation during "
                          f"meta-training: set meta_train.validate_every > 0.")


#: Words in a metric's name that say which way is better (accuracy up; error, loss down).
HIGHER_WORDS, LOWER_WORDS = ("acc",), ("mse", "loss", "error")


def higher_is_better(metric: str) -> bool | None:
    """Whether the metric ``metric`` is better when higher, from its name (None: unknown, as
    for a metric the project does not name)."""
    words = metric.rsplit("/", 1)[-1].split("_")
    if any(w in words for w in HIGHER_WORDS):
        return True
    if any(w in words for w in LOWER_WORDS):
        return False
    return None


def value(history: dict[int, float], how: str, higher_is_better: bool) -> float:
    """The objective from a ``val/`` curve (step -> value): its best or its last finite value
    (nan without any)."""
    finite = {s: v for s, v in history.items() if math.isfinite(v)}
    if not finite:
        return math.nan
    if how == LAST:
        return finite[max(finite)]
    return max(finite.values()) if higher_is_better else min(finite.values())


def of_run(uri: str, run_id: str, metric: str, how: str, higher_is_better: bool) -> float:
    """A finished trial's objective, from its logged curve (a resumed run's whole curve)."""
    if metric.startswith(keys.VAL):
        return value(store.metric_history(uri, run_id, metric), how, higher_is_better)
    return store.get_run(uri, run_id).metrics.get(metric, math.nan)
