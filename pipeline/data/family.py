"""The contract of a task family: a typed config in, a :class:`GeneratedTasks` out.

A family is a class registered on its config schema, like the algorithms
(``@option("data", builds="pipeline.data.<module>:<Class>")`` in :mod:`pipeline.config.data`):
``registry.build("data", name, cfg)`` makes it from its typed config, and the ``generate``
stage asks it for its tasks and, for families read from files, the hash of its sources.

Besides the tasks, a family says what its independent test unit is (``ci_unit``): a test
episode that is a fresh task of its own (``episode``), or a source task that many episodes were
drawn from (``task``). It traces each fixed test (and validation) episode to that source, and
names what went into each split, so every result can be mapped back to the data it came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from pipeline.config.data import DataConfig
    from pipeline.data import Episodes, TaskSplit
    from pipeline.data.episodes import EpisodeSampler, TaskRowSampler

#: Independent test units: every test episode is a fresh task (its own unit), or episodes are
#: drawn from a handful of source tasks (the unit is the source task).
CI_EPISODE, CI_TASK = "episode", "task"
CI_UNITS = (CI_EPISODE, CI_TASK)


@dataclass(frozen=True)
class GeneratedTasks:
    """What a family generates: its splits and their provenance."""

    #: Fixed training tasks, or an on-demand sampler (families too large to enumerate).
    train: TaskSplit | EpisodeSampler | TaskRowSampler
    test: Episodes
    task_type: str
    #: Number of classes (classification) or output dimension (regression).
    num_outputs: int
    #: Fixed validation tasks (``meta_train.validate_every``), if the family has that split.
    val: Episodes | None = None
    #: What the family did to its sources (choices and counts), recorded as ``data_prep/*`` tags.
    info: dict = field(default_factory=dict)
    #: The independent unit of a test CI (:data:`CI_UNITS`).
    ci_unit: str = CI_EPISODE
    #: [test episodes] index into ``unit_names`` of each episode's source task; None where every
    #: episode is its own task.
    test_source: np.ndarray | None = None
    #: [validation episodes] index into ``splits["val"]`` of each episode's source task.
    val_source: np.ndarray | None = None
    #: [test episodes, n_way] index into ``splits["test"]`` of the class behind each label
    #: (image families).
    test_classes: np.ndarray | None = None
    #: [validation episodes, n_way] likewise, into ``splits["val"]``.
    val_classes: np.ndarray | None = None
    #: Split -> names of its tasks (tabular) or classes (image families); empty for families
    #: whose tasks are generated (a task is its index).
    splits: dict[str, list[str]] = field(default_factory=dict)
    #: What ``test_source`` indexes: the test tasks' names.
    unit_names: list[str] = field(default_factory=list)


#: The fields of :class:`GeneratedTasks` that trace episodes to their sources (stored with the
#: task file's metadata, outside its fingerprint, which covers the task arrays only).
TRACE_FIELDS = ("ci_unit", "test_source", "val_source", "test_classes", "val_classes", "splits",
                "unit_names")

C = TypeVar("C", bound="DataConfig")


class Family(Protocol):
    """A task family, made from its typed config by the registry."""

    #: Store the task file compressed (real-valued rows barely compress: tables say False).
    compress: ClassVar[bool]

    def source_digest(self) -> str | None:
        """sha256 of the family's source files (it keys the cached task file, so edited
        sources are never served from a stale file); None for generated families."""

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        """The tasks, drawn from ``rng`` (the run's ``data`` stream) and nothing else."""


class FamilyBase(Generic[C]):
    """Defaults of :class:`Family`: a generated family (no source files), compressed file."""

    compress: ClassVar[bool] = True

    def __init__(self, cfg: C) -> None:
        self.cfg = cfg

    @property
    def settings(self) -> dict:
        """The config as the plain dict the family's functions (and the cache key) read."""
        return dataclasses.asdict(self.cfg)

    def source_digest(self) -> str | None:
        return None

