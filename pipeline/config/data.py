"""Schemas of the ``data`` group: one dataclass per task family (its module in ``pipeline/data/``
generates the tasks)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from pipeline.config.fields import CLASSIFICATION, REGRESSION, choice, num
from pipeline.registry import option


@dataclass
class DataConfig:
    """Common to every task family."""

    #: What the family's tasks are scored on (loss, main metric).
    task_type: ClassVar[str] = CLASSIFICATION
    family: str = MISSING
    num_train_tasks: int = num(100, ge=1)
    num_test_tasks: int = num(100, ge=2)
    #: Reuse a previously generated file when the config (and so its fingerprint) is the same.
    cache: bool = True


@dataclass
class ClassificationDataConfig(DataConfig):
    """``samples_per_task`` labelled points a task: support = ``k_shot`` per class, query = rest."""

    num_features: int = num(20, ge=1)
    num_classes: int = num(2, ge=2)
    samples_per_task: int = num(100, ge=2)
    k_shot: int = num(5, ge=1)


@option("data", builds="pipeline.data.notebook:generate")
@dataclass
class NotebookDataConfig(ClassificationDataConfig):
    """The notebook's data, exactly: 100 train and 100 test tasks x 100 samples x 20 features,
    ``X ~ N(0, 1)``, labels drawn at random. Nothing is learnable: a negative control."""

    family: str = "notebook"
    #: Support = 10 per class; query = the other samples of the task.
    k_shot: int = num(10, ge=1)


@option("data", builds="pipeline.data.synthetic:generate")
@dataclass
class SyntheticDataConfig(ClassificationDataConfig):
    """Tasks sharing a random nonlinear feature map, each with its own linear rule on top.

    See :mod:`pipeline.data.synthetic` for the generative process.
    """

    family: str = "synthetic"
    num_train_tasks: int = num(2000, ge=1)
    num_test_tasks: int = num(200, ge=2)
    samples_per_task: int = num(60, ge=2)
    num_classes: int = num(3, ge=2)
    k_shot: int = num(5, ge=1)
    #: Width of the shared latent representation phi(x).
    latent_dim: int = num(8, ge=1)
    #: Scale of the shared feature map's weights (larger = more nonlinear).
    map_scale: float = num(1.5, gt=0)
    #: Spread of the task rules around the shared prior mean (0 = every task identical).
    task_diversity: float = num(1.0, ge=0)
    #: Probability that a label is replaced by a uniformly random class.
    label_noise: float = num(0.0, ge=0, le=1)


@option("data", builds="pipeline.data.sinusoid:generate")
@dataclass
class SinusoidDataConfig(DataConfig):
    """The MAML sinusoid regression benchmark (Finn et al. 2017), see :mod:`pipeline.data.sinusoid`.

    Train tasks: ``k_shot`` support and ``num_query`` query points drawn from U[x_min, x_max].
    Test tasks: ``k_shot`` random support points and a ``test_grid_points`` grid as query set.
    """

    task_type: ClassVar[str] = REGRESSION
    family: str = "sinusoid"
    num_train_tasks: int = num(20000, ge=1)
    num_test_tasks: int = num(600, ge=2)
    #: Support points per task (K in the papers: 5, 10 or 20).
    k_shot: int = num(10, ge=1)
    #: Query points per training task.
    num_query: int = num(10, ge=1)
    #: Query points per test task: an evenly spaced grid over [x_min, x_max].
    test_grid_points: int = num(100, ge=2)
    amplitude_min: float = num(0.1, ge=0)
    amplitude_max: float = num(5.0, ge=0)
    phase_min: float = num(0.0)
    phase_max: float = num(math.pi)
    x_min: float = num(-5.0)
    x_max: float = num(5.0)


@option("data", builds="pipeline.data.omniglot:generate")
@dataclass
class OmniglotDataConfig(DataConfig):
    """Omniglot from the official zips; see :mod:`pipeline.data.omniglot` for the protocols."""

    family: str = "omniglot"
    #: Folder holding the zips (and optionally a SHA256SUMS file).
    root: str = "${paths.data_dir}/omniglot"
    background_zip: str = "images_background.zip"
    evaluation_zip: str = "images_evaluation.zip"
    #: Expected sha256 by zip name (also read from ``<root>/SHA256SUMS``); a mismatch is an error.
    checksums: dict[str, str] = field(default_factory=dict)
    #: Fetch missing zips from ``url`` (the official repository's python/ folder).
    download: bool = False
    url: str = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
    #: Where the decoded 28x28 images are cached (keyed by the zips' sha256).
    cache_dir: str = "${paths.data_dir}"
    protocol: str = choice("vinyals", ("vinyals", "lake"))
    #: vinyals: characters shuffled by the data seed, or taken in the conventional order.
    character_order: str = choice("seed", ("seed", "conventional"))
    num_train_characters: int = num(1200, ge=1)
    image_size: int = num(28, ge=4)
    train_rotations: list[int] = field(default_factory=lambda: [0, 90, 180, 270])
    test_rotations: list[int] = field(default_factory=lambda: [0])
    #: N-way of the test episodes (and of training ones unless ``train_num_classes`` is set).
    num_classes: int = num(5, ge=2)
    k_shot: int = num(1, ge=1)
    query_per_class: int = num(15, ge=1)
    #: Training episodes' N-way / queries per class (null = as at test; protonet only for N).
    train_num_classes: int | None = num(None, ge=2)
    train_query_per_class: int | None = num(None, ge=1)
    #: 0: training episodes sampled on the fly from the seed; > 0: this many fixed episodes.
    num_train_tasks: int = num(0, ge=0)
    num_test_tasks: int = num(1000, ge=2)
