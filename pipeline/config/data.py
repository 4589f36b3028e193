"""Schemas of the ``data`` group: one dataclass per task family, registered with the family
class that generates its tasks (in ``pipeline/data/``; the contract:
:mod:`pipeline.data.family`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from pipeline.config.fields import (
    CLASSIFICATION,
    IMAGE_LAYOUTS,
    PRETRAIN_CLASSES,
    PRETRAIN_JOINT,
    PRETRAIN_MULTITASK,
    REGRESSION,
    TABULAR_LAYOUTS,
    TABULAR_MISSING,
    TABULAR_NORMALIZE,
    choice,
    num,
)
from pipeline.config.registry import option


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

    #: Tasks are images (``[H, W, C]`` inputs), for the image models (conv4, resnet12).
    image_data: ClassVar[bool] = False
    #: How the pre-trained baselines (``meta_test.baselines``) pre-train on the training split:
    #: the family's labels are each task's own, so one head per training task.
    pretraining: ClassVar[str] = PRETRAIN_MULTITASK

    def validation_tasks(self) -> int:
        """How many fixed validation tasks the family generates (``meta_train.validate_every``
        scores them); 0: it has no validation split."""
        return 0


@dataclass
class ClassificationDataConfig(DataConfig):
    """``samples_per_task`` labelled points a task: support = ``k_shot`` per class, query = rest."""

    num_features: int = num(20, ge=1)
    num_classes: int = num(2, ge=2)
    samples_per_task: int = num(100, ge=2)
    k_shot: int = num(5, ge=1)


@option("data", builds="pipeline.data.notebook:Notebook")
@dataclass
class NotebookDataConfig(ClassificationDataConfig):
    """The notebook's data, exactly: 100 train and 100 test tasks x 100 samples x 20 features,
    ``X ~ N(0, 1)``, labels drawn at random. Nothing is learnable: a negative control."""

    family: str = "notebook"
    #: Support = 10 per class; query = the other samples of the task.
    k_shot: int = num(10, ge=1)


@option("data", builds="pipeline.data.synthetic:Synthetic")
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
    #: Fixed validation tasks drawn from the same family after the train and test tasks (so
    #: those are unchanged and the three sets are disjoint), for model selection and searches
    #: (``meta_train.validate_every``); 0: no validation split.
    num_val_tasks: int = num(0, ge=0)

    def validation_tasks(self) -> int:
        return self.num_val_tasks


@option("data", builds="pipeline.data.sinusoid:Sinusoid")
@dataclass
class SinusoidDataConfig(DataConfig):
    """The MAML sinusoid regression benchmark (Finn et al. 2017), see :mod:`pipeline.data.sinusoid`.

    Train tasks: ``k_shot`` support and ``num_query`` query points drawn from U[x_min, x_max].
    Test tasks: ``k_shot`` random support points and a ``test_grid_points`` grid as query set.
    """

    task_type: ClassVar[str] = REGRESSION
    #: Finn et al.'s "pretrained" baseline: one network trained on every task's points jointly.
    pretraining: ClassVar[str] = PRETRAIN_JOINT
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
    #: Fixed validation tasks, drawn like the test ones (random support points, the query grid)
    #: after the train and test tasks, so those are unchanged and the sets disjoint; for model
    #: selection and searches (``meta_train.validate_every``); 0: no validation split.
    num_val_tasks: int = num(0, ge=0)

    def validation_tasks(self) -> int:
        return self.num_val_tasks


@dataclass
class EpisodeDataConfig(DataConfig):
    """N-way K-shot episodes of image classes: training episodes drawn on the fly from the
    training classes, fixed test (and validation) episodes from the held-out classes."""

    image_data: ClassVar[bool] = True
    #: Classes are global (a character and rotation): one classifier over all training classes.
    pretraining: ClassVar[str] = PRETRAIN_CLASSES
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
    #: Fixed validation episodes (N-way K-shot like the test ones) from the validation classes,
    #: for model selection (``meta_train.validate_every``).
    num_val_tasks: int = num(100, ge=0)

    def validation_tasks(self) -> int:
        return self.num_val_tasks


@option("data", builds="pipeline.data.omniglot:Omniglot")
@dataclass
class OmniglotDataConfig(EpisodeDataConfig):
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
    #: The last this many training characters form a validation split (0: none, the Vinyals /
    #: MAML split; 172: the ProtoNets code's 1,028 training / 172 validation characters).
    num_val_characters: int = num(0, ge=0)

    def validation_tasks(self) -> int:
        return self.num_val_tasks if self.num_val_characters else 0


@option("data", builds="pipeline.data.images:Images")
@dataclass
class ImagesDataConfig(EpisodeDataConfig):
    """A labelled image collection on disk (miniImageNet, CIFAR-FS, FC100, tieredImageNet, your
    own), in one of the layouts these benchmarks are distributed in; see
    :mod:`pipeline.data.images`. Images are decoded once (RGB, resized to ``image_size``) into
    a uint8 cache keyed by the source files' sha256."""

    family: str = "images"
    #: Folder of the collection (required: there is no default copy).
    root: str | None = None
    #: ``folders``: ``<root>/<split>/<class>/*.png|jpg``; ``csv``: ``<root>/<split>.csv``
    #: (``filename,label``) and ``<root>/images/``; ``pickle``: ``<root>/`` + ``pickle_file``
    #: (``image_data`` [N, H, W, 3] uint8, ``class_dict`` class -> image indices).
    layout: str = choice("folders", IMAGE_LAYOUTS)
    #: A flat folder ``<root>/<class>/*`` (layout=folders): fractions of its classes for the
    #: train / val / test splits, drawn from the seed (e.g. [0.64, 0.16, 0.2]); null = the
    #: layout's own train/val/test splits.
    class_split: list[float] | None = None
    #: layout=pickle: the split files, ``{split}`` = train, val, test.
    pickle_file: str = "mini-imagenet-cache-{split}.pkl"
    #: Side of the square images fed to the model (84: miniImageNet; 32: CIFAR-FS, FC100);
    #: null = keep the images' own size (they must all have the same).
    image_size: int | None = num(84, ge=4)
    #: Where the decoded images are cached (keyed by the sources' sha256).
    cache_dir: str = "${paths.data_dir}"
    num_test_tasks: int = num(600, ge=2)


@option("data", builds="pipeline.data.tabular:Tabular")
@dataclass
class TabularDataConfig(DataConfig):
    """Your own tabular tasks on disk (CSV or Parquet), one MLP across them; see
    :mod:`pipeline.data.tabular`. Training episodes are drawn on the fly from the training
    tasks; fixed validation and test episodes are drawn once and stored with the fingerprint
    (keyed by the sources' sha256)."""

    family: str = "tabular"
    #: ``classification`` (each task's own label set, ``k_shot`` per class) or ``regression``.
    task_type: str = choice(CLASSIFICATION, (CLASSIFICATION, REGRESSION))  # type: ignore[misc]
    #: layout=long: the CSV/Parquet file; layout=per_task: the folder of files (required).
    root: str | None = None
    #: ``long``: one file with a task column; ``per_task``: one file per task (name = task).
    layout: str = choice("long", TABULAR_LAYOUTS)
    task_column: str = "task"
    target: str = "target"
    #: Feature columns; null = every column but the task, target and split columns.
    features: list[str] | None = None
    #: Feature columns holding categories (one-hot encoded with the training tasks' categories).
    categorical: list[str] = field(default_factory=list)
    #: Fractions of the tasks (train, val, test) drawn by the seed; null = named splits: the
    #: ``split_column`` (layout=long) or ``<root>/{train,val,test}/`` folders (layout=per_task).
    task_split: list[float] | None = field(default_factory=lambda: [0.6, 0.2, 0.2])
    #: layout=long with task_split=null: the column naming each task's split (train/val/test).
    split_column: str | None = None
    #: N-way of an episode; null = every task's own number of classes (all must have the same).
    num_classes: int | None = num(None, ge=2)
    k_shot: int = num(5, ge=1)
    #: Query rows per class (regression: per task), capped by what the smallest class leaves.
    query_per_class: int = num(15, ge=1)
    #: 0: training episodes drawn on the fly from the seed; > 0: this many fixed ones, cycling
    #: over the training tasks (as many as tasks: one support/query split each, like
    #: data=synthetic).
    num_train_tasks: int = num(0, ge=0)
    #: Fixed test (validation) episodes, cycling over the test (validation) tasks.
    num_test_tasks: int = num(600, ge=2)
    num_val_tasks: int = num(100, ge=0)
    #: Standardise numeric features with the training tasks' statistics (``train``), each
    #: episode's support set's (``support``), or not at all (``none``).
    normalize: str = choice("train", TABULAR_NORMALIZE)
    #: Missing values: ``refuse`` (one line naming file, row and column) or ``impute`` with
    #: the training tasks' medians (categorical: all-zero one-hot).
    missing: str = choice("refuse", TABULAR_MISSING)

    def validation_tasks(self) -> int:
        if self.task_split is not None and len(self.task_split) == 3 and not self.task_split[1]:
            return 0
        return self.num_val_tasks
