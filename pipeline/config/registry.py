"""One registry per config group: option name -> schema dataclass -> what it builds.

Each option of a config group (``algorithm=maml``, ``data=omniglot``, ...) is one dataclass,
decorated with :func:`option`. The dataclass is the only place the option's defaults live; the
YAML file ``conf/<group>/<name>.yaml`` only selects it (and documents it). The decorator names
what the option builds as a dotted path (``"pipeline.algorithms.maml:MAML"``), imported only when
it is built, so composing and validating a config never loads TensorFlow: a bad value is refused
in about a second.

Why a decorator and not Hydra's ``_target_`` + ``instantiate``: the builders take the typed
config object (plus run context such as the model), not the config's fields as keyword
arguments, and ``_target_`` would show up as a param of every run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError

#: The config groups with registered options, in the order of the root config.
GROUPS = ("data", "model", "algorithm", "optimizer", "tracking", "paths")
#: The field that names a group's option inside its config (``algorithm.name``, ...).
NAME_FIELD = {"data": "family", "model": "name", "algorithm": "name", "optimizer": "name"}


@dataclass(frozen=True)
class Option:
    group: str
    name: str
    schema: type
    #: ``"module:attribute"`` of what this option builds, or None (a plain settings group).
    builds: str | None

    @property
    def schema_name(self) -> str:
        """The schema's name in Hydra's ConfigStore (a root-level entry, so it is not listed as
        a group option): ``conf/<group>/<name>.yaml`` extends it."""
        return f"schema.{self.group}.{self.name}"

    def target(self) -> Any:
        module, _, attribute = str(self.builds).partition(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, dict[str, Option]] = {group: {} for group in GROUPS}


def option(group: str, builds: str | None = None, name: str | None = None
           ) -> Callable[[type], type]:
    """Class decorator: register a dataclass as an option of config group ``group``.

    Its name is the default of the group's name field (``algorithm.name``, ``data.family``), so
    it is written once; groups without one (tracking, paths) pass ``name``.
    """
    if group not in _REGISTRY:
        raise ValueError(f"unknown config group {group!r}: one of {', '.join(GROUPS)}")

    def register(schema: type) -> type:
        key = name or schema.__dataclass_fields__[NAME_FIELD[group]].default
        if key in _REGISTRY[group]:
            raise ValueError(f"{group}={key} is registered twice")
        _REGISTRY[group][key] = Option(group, key, schema, builds)
        return schema

    return register


def options(group: str) -> dict[str, Option]:
    """The registered options of ``group`` by name: those whose schema module has been
    imported (``import pipeline.config`` registers every schema)."""
    return dict(_REGISTRY[group])


def lookup(group: str, name: str) -> Option:
    found = options(group)
    if name not in found:
        key = f"{group}.{NAME_FIELD[group]}" if group in NAME_FIELD else group
        raise ConfigError(f"{key}={name!r} is unknown: choose one of {', '.join(sorted(found))}.")
    return found[name]


def build(group: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Build what option ``name`` of ``group`` names, called with ``args`` (its config first)."""
    opt = lookup(group, name)
    if opt.builds is None:
        raise ValueError(f"{group}={name} builds nothing")
    return opt.target()(*args, **kwargs)


__all__ = ["GROUPS", "Option", "build", "lookup", "option", "options"]
