"""Hydra's search-space syntax as Optuna distributions, so presets and habits carry over:

    interval(0.01, 1.0)             a float (int if both ends are ints) drawn uniformly
    tag(log, interval(1e-4, 1e-2))  the same on a log scale
    range(1, 3)                     an int from 1 to 3 (step 1; ``range(0, 1, 0.25)``: floats)
    choice(sgd, adam) or sgd,adam   one of the values
    0.5                             a fixed value, passed to every trial

(``hydra.sweeper.params`` and sweep-like command-line overrides alike, with the meaning
hydra-optuna-sweeper gave them: a ``range`` includes its stop here, unlike a grid's.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pipeline.errors import ConfigError


def _choices(override: Override) -> list[Any]:
    out = list(override.sweep_iterator(transformer=Transformer.encode))
    bad = [x for x in out if not isinstance(x, str | int | float | bool | type(None))]
    if bad:
        raise ConfigError(f"{override.input_line}: a choice takes plain values (str, int, "
                          f"float, bool, null), not {bad[0]!r}.")
    return out


def distribution(override: Override) -> BaseDistribution | str:
    """One override as a distribution, or (not a sweep) its value as a string."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(_choices(override))
    if override.is_range_sweep():
        if value.shuffle:
            return CategoricalDistribution(_choices(override))
        step = value.step
        if any(isinstance(x, float) for x in (value.start, value.stop, step)):
            return FloatDistribution(float(value.start), float(value.stop), step=float(step))
        return IntDistribution(int(value.start), int(value.stop), step=int(step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{override.input_line}: this sweep is not supported by the Optuna "
                      f"search; use interval, tag(log, interval), range or choice.")


def parse(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``key=spec`` strings -> (the search space, the fixed overrides), keys in given order."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        d = distribution(override)
        if isinstance(d, BaseDistribution):
            space[key] = d
        else:
            fixed[key] = d
    return space, fixed


def overrides(params: dict[str, Any]) -> list[str]:
    """A trial's params as command-line overrides (``None`` as Hydra's ``null``)."""
    return [f"{k}={'null' if v is None else v}" for k, v in params.items()]


def to_json(space_: Mapping[str, Any]) -> str:
    """The search space as JSON (a study attribute a resume compares)."""
    from optuna.distributions import distribution_to_json

    return json.dumps({k: json.loads(distribution_to_json(d)) for k, d in space_.items()},
                      sort_keys=True)
