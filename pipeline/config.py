"""Config schemas: one dataclass per Hydra group option, registered in Hydra's ConfigStore.

Hydra/OmegaConf check key names and types while composing (a mistyped key or a non-numeric
learning rate stops composition). Ranges and choice lists live in each field's metadata and are
checked by :func:`validate` before any stage runs, so every error names the full dotted key, the
bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError

# --- field helpers: constraints travel as metadata so one walker checks them all --------------


def num(default: Any, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None) -> Any:
    """A numeric field with bounds (inclusive ``ge``/``le``, exclusive ``gt``/``lt``)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt})


def choice(default: str, choices: tuple[str, ...]) -> Any:
    """A string field restricted to ``choices``."""
    return field(default=default, metadata={"choices": choices})


ACTIVATIONS = ("relu", "tanh", "gelu", "elu", "sigmoid", "swish", "leaky_relu", "linear")
HEADS = ("softmax", "sigmoid")
INNER_OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "step", "cosine")
HEAD_INITS = ("glorot_uniform", "zeros")


# --- data -------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Common to every task family."""

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


@dataclass
class NotebookDataConfig(ClassificationDataConfig):
    """The notebook's data: Gaussian inputs, labels drawn at random (a negative control)."""

    family: str = "notebook"


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


@dataclass
class SinusoidDataConfig(DataConfig):
    """The MAML sinusoid regression benchmark (Finn et al. 2017), see :mod:`pipeline.data.sinusoid`.

    Train tasks: ``k_shot`` support and ``num_query`` query points drawn from U[x_min, x_max].
    Test tasks: ``k_shot`` random support points and a ``test_grid_points`` grid as query set.
    """

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


@dataclass
class OmniglotDataConfig(DataConfig):
    """Omniglot from the official zips; see :mod:`pipeline.data.omniglot` for the protocols."""

    family: str = "omniglot"
    #: Folder holding the zips (and optionally a SHA256SUMS file).
    root: str = MISSING
    background_zip: str = "images_background.zip"
    evaluation_zip: str = "images_evaluation.zip"
    #: Expected sha256 by zip name (also read from ``<root>/SHA256SUMS``); a mismatch is an error.
    checksums: dict[str, str] = field(default_factory=dict)
    #: Fetch missing zips from ``url`` (the official repository's python/ folder).
    download: bool = False
    url: str = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
    #: Where the decoded 28x28 images are cached (keyed by the zips' sha256).
    cache_dir: str = MISSING
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


# --- model ------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = MISSING
    #: Initial weights of the classification/regression head: ``glorot_uniform`` (Keras'
    #: default) or ``zeros`` (the "zeroing trick" for MAML: every class starts equal).
    head_init: str = choice("glorot_uniform", HEAD_INITS)
    #: Start from a logged model's weights instead of the seeded draw: an MLflow model URI
    #: (``runs:/<run_id>/model``, ``models:/<name>/<version>``) or a local model folder. With
    #: ``meta_train.iterations=0`` the run only meta-tests that model (e.g. other meta_test
    #: settings on the same episodes).
    init_from: str | None = None


@dataclass
class MLPConfig(ModelConfig):
    """Fully connected network; the notebook's 64-64 ReLU MLP is the default."""

    name: str = "mlp"
    hidden_units: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = choice("relu", ACTIVATIONS)
    #: ``softmax``: one logit per class; ``sigmoid``: one logit for 2 classes (the notebook's head).
    head: str = choice("softmax", HEADS)


BATCH_NORM = ("transductive", "running", "none")


@dataclass
class Conv4Config(ModelConfig):
    """The standard few-shot CNN: ``blocks`` x (3x3 conv, batch norm, ReLU, 2x2 max-pool).

    ``batch_norm``: ``transductive`` normalises with the statistics of the batch at hand, at
    meta-training and meta-test alike (the MAML paper's choice; no running averages exist);
    ``running`` normalises training-mode passes (meta-training, inner-loop adaptation) with batch
    statistics, keeps running averages from meta-training, and evaluates queries with them;
    ``none`` drops the normalisation.
    """

    name: str = "conv4"
    filters: int = num(64, ge=1)
    blocks: int = num(4, ge=1)
    batch_norm: str = choice("transductive", BATCH_NORM)
    #: Running-average momentum (``running`` only).
    bn_momentum: float = num(0.9, ge=0, lt=1)
    #: Inputs are multiplied by this first (uint8 images in 0..255 -> 0..1).
    input_scale: float = num(1 / 255, gt=0)


# --- optimizer (outer loop / meta-optimizer) --------------------------------------------------


@dataclass
class OptimizerConfig:
    name: str = MISSING
    learning_rate: float = num(1e-3, gt=0)
    #: Clip each gradient tensor's norm (null = no clipping).
    clipnorm: float | None = num(None, gt=0)
    #: Learning rate over meta-training: ``constant``; ``step`` multiplies it by ``decay_rate``
    #: every ``decay_every`` meta-iterations (ProtoNets: x0.5 every 2,000 episodes); ``cosine``
    #: anneals it to ``learning_rate * min_lr_fraction`` at ``meta_train.iterations``.
    schedule: str = choice("constant", LR_SCHEDULES)
    decay_every: int = num(2000, ge=1)
    decay_rate: float = num(0.5, gt=0, le=1)
    min_lr_fraction: float = num(0.0, ge=0, le=1)


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    beta_1: float = num(0.9, ge=0, lt=1)
    beta_2: float = num(0.999, ge=0, lt=1)
    epsilon: float = num(1e-7, gt=0)


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    learning_rate: float = num(0.01, gt=0)
    momentum: float = num(0.0, ge=0, lt=1)
    nesterov: bool = False


# --- algorithm --------------------------------------------------------------------------------


@dataclass
class AlgorithmConfig:
    name: str = MISSING


@dataclass
class ScratchConfig(AlgorithmConfig):
    """No meta-learning: a fresh model per test task, trained on its support set only."""

    name: str = "scratch"
    steps: int = num(100, ge=0)
    learning_rate: float = num(0.01, gt=0)
    optimizer: str = choice("adam", INNER_OPTIMIZERS)


@dataclass
class NotebookAlgorithmConfig(AlgorithmConfig):
    """The notebook's procedure: one model fitted on each training task in turn, every epoch."""

    name: str = "notebook"
    epochs: int = num(10, ge=1)
    batch_size: int = num(32, ge=1)
    #: Test-time fine-tuning on the support set (0 = evaluate as trained, like the notebook).
    finetune_steps: int = num(0, ge=0)
    finetune_lr: float = num(0.01, gt=0)
    finetune_optimizer: str = choice("sgd", INNER_OPTIMIZERS)


@dataclass
class MAMLConfig(AlgorithmConfig):
    """Model-Agnostic Meta-Learning (Finn et al. 2017), second order unless ``first_order``."""

    name: str = "maml"
    inner_lr: float = num(0.1, gt=0)
    inner_steps: int = num(1, ge=1)
    #: Inner steps at meta-test time (null = same as ``inner_steps``).
    test_inner_steps: int | None = num(None, ge=0)
    first_order: bool = False
    #: The zeroing trick of Kao et al. (2022): the ``head`` layer starts every task at zero
    #: and is not meta-learned, so no class is favoured before the support set is seen.
    zero_head: bool = False


@dataclass
class FOMAMLConfig(MAMLConfig):
    """First-order MAML: the inner gradients are constants, so no second-order terms."""

    name: str = "fomaml"
    first_order: bool = True


@dataclass
class ANILConfig(MAMLConfig):
    """ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the head (last layer)."""

    name: str = "anil"


@dataclass
class MetaSGDConfig(MAMLConfig):
    """Meta-SGD (Li et al. 2017): per-parameter inner learning rates, meta-learned with the init.

    ``inner_lr`` is the initial value of every learned rate.
    """

    name: str = "metasgd"


@dataclass
class ReptileConfig(AlgorithmConfig):
    """Reptile (Nichol et al. 2018): move the init toward each task's adapted weights.

    Inner loop: ``inner_steps`` full-batch steps of ``inner_optimizer`` on the support set; outer
    step: ``theta += epsilon * (mean adapted weights - theta)``, with ``epsilon`` linearly
    annealed to 0 over ``meta_train.iterations`` when ``anneal`` is set. The outer step is the
    interpolation itself: the ``optimizer`` group is not used.
    """

    name: str = "reptile"
    inner_lr: float = num(0.01, gt=0)
    inner_steps: int = num(5, ge=1)
    inner_optimizer: str = choice("sgd", INNER_OPTIMIZERS)
    #: Inner steps at meta-test time (null = same as ``inner_steps``), with the same optimizer.
    test_inner_steps: int | None = num(None, ge=0)
    epsilon: float = num(1.0, gt=0, le=1)
    anneal: bool = True


@dataclass
class ProtoNetConfig(AlgorithmConfig):
    """Prototypical networks (Snell et al. 2017): classify queries by the nearest class mean."""

    name: str = "protonet"


# --- stages, tracking, paths, runtime ---------------------------------------------------------


@dataclass
class MetaTrainConfig:
    iterations: int = num(1000, ge=0)
    meta_batch_size: int = num(25, ge=1)
    #: Log training curves every this many meta-iterations (averaged over the window).
    log_every: int = num(10, ge=1)
    #: XLA-compile the meta-training step.
    jit_compile: bool = False
    #: Meta-iterations run inside one compiled call (a graph loop): fewer Python round trips.
    steps_per_call: int = num(100, ge=1)


@dataclass
class MetaTestConfig:
    #: Also evaluate the no-meta-learning baseline on the same test tasks.
    compare_to_scratch: bool = True
    #: Test tasks adapted together in one vectorised call.
    task_batch_size: int = num(200, ge=1)
    #: Also score the algorithm after exactly these many inner steps (an adaptation curve).
    eval_steps: list[int] = field(default_factory=list)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)


@dataclass
class TrackingConfig:
    #: MLflow tracking URI: ``sqlite:///...`` (embedded) or ``http://host:port`` (a server).
    uri: str = MISSING
    #: Artifact root for new experiments on an embedded store (null = the server decides).
    artifact_location: str | None = None
    experiment_name: str = "meta-learning"
    run_name: str | None = None
    log_model: bool = True
    #: Data files up to this size are logged as artifacts; larger ones by fingerprint only.
    log_dataset_max_mb: float = num(50.0, ge=0)
    #: Seconds an HTTP tracking call may wait / how often it is retried (bounded, not minutes).
    http_timeout_s: int = num(10, ge=1)
    http_max_retries: int = num(2, ge=0)


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    mlruns_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class RuntimeConfig:
    #: TensorFlow op determinism: same seed, same numbers.
    deterministic: bool = True
    #: Threads per op; 1 is fastest for small models and keeps parallel jobs from fighting.
    intra_op_threads: int = num(1, ge=0)
    inter_op_threads: int = num(1, ge=0)


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    algorithm: AlgorithmConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    tracking: TrackingConfig = MISSING
    paths: PathsConfig = MISSING
    meta_train: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    #: The one seed behind data, initialisation and task sampling.
    seed: int = num(0, ge=0, lt=2**31)


#: Group name -> {option name -> schema}. The YAML option of the same name extends the schema.
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"notebook": NotebookDataConfig, "synthetic": SyntheticDataConfig,
             "sinusoid": SinusoidDataConfig, "omniglot": OmniglotDataConfig},
    "model": {"mlp": MLPConfig, "conv4": Conv4Config},
    "optimizer": {"adam": AdamConfig, "sgd": SGDConfig},
    "algorithm": {
        "scratch": ScratchConfig,
        "notebook": NotebookAlgorithmConfig,
        "maml": MAMLConfig,
        "fomaml": FOMAMLConfig,
        "anil": ANILConfig,
        "metasgd": MetaSGDConfig,
        "reptile": ReptileConfig,
        "protonet": ProtoNetConfig,
    },
    "tracking": {"base": TrackingConfig},
    "paths": {"base": PathsConfig},
}


def register_configs() -> None:
    """Store the schemas as ``<group>/schema_<option>`` and the root as ``config_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            cs.store(group=group, name=f"schema_{option}", node=schema)


def default_tracking_uri() -> str:
    """The tracking store a plain ``python -m pipeline`` writes to (from the composed config)."""
    from hydra import compose, initialize_config_dir

    from pipeline import CONFIG_DIR

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return str(compose("config").tracking.uri)


def _project_root() -> str:
    return str(PROJECT_ROOT)


if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", _project_root)


# --- validation -------------------------------------------------------------------------------


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _check_field(key: str, value: Any, meta: Any) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(choices)}.")
    bounds = {op: meta.get(name) for name, op in _BOUNDS.items() if meta.get(name) is not None}
    if not bounds:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a finite number.")
    for op, bound in bounds.items():
        if not _COMPARE[op](value, bound):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {op} {bound}.")


def _walk(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _walk(value, f"{key}.")
        else:
            _check_field(key, value, f.metadata)


def _check_consistency(cfg: Config) -> None:
    data, model = cfg.data, cfg.model
    if isinstance(data, ClassificationDataConfig):
        support = data.k_shot * data.num_classes
        if support >= data.samples_per_task:
            raise ConfigError(
                f"data.k_shot={data.k_shot} with data.num_classes={data.num_classes} puts "
                f"{support} of data.samples_per_task={data.samples_per_task} samples in the "
                f"support set, leaving no query set: k_shot * num_classes must be < "
                f"samples_per_task."
            )
        if isinstance(model, MLPConfig) and model.head == "sigmoid" and data.num_classes != 2:
            raise ConfigError(
                f"model.head='sigmoid' must have data.num_classes=2, got {data.num_classes}: "
                f"use model.head=softmax for more classes."
            )
    if isinstance(data, SinusoidDataConfig):
        for name in ("amplitude", "phase", "x"):
            low, high = getattr(data, f"{name}_min"), getattr(data, f"{name}_max")
            if not low < high:
                raise ConfigError(f"data.{name}_min={low} must be < data.{name}_max={high}.")
    if any(s < 0 for s in cfg.meta_test.eval_steps):
        raise ConfigError(f"meta_test.eval_steps={list(cfg.meta_test.eval_steps)} is not "
                          f"allowed: every entry must be >= 0 inner steps.")
    _check_omniglot(cfg)
    if isinstance(model, MLPConfig) and any(u < 1 for u in model.hidden_units):
        raise ConfigError(
            f"model.hidden_units={list(model.hidden_units)} is not allowed: every layer width "
            f"must be >= 1."
        )


TRACKING_SCHEMES = ("sqlite:///", "http://", "https://")


def _check_folder(key: str, value: str, folder: Path) -> None:
    """``folder`` must be a folder we can read and write, or creatable under one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={value!r} cannot be used: {existing} exists and is not a "
                          f"folder. Point {key} at a folder (it is created if missing).")
    if not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value!r} cannot be used: {existing} is not readable and "
                          f"writable by this user. Point {key} at a folder you can write.")


def _check_environment(cfg: Config) -> None:
    uri = cfg.tracking.uri
    if not uri.startswith(TRACKING_SCHEMES):
        raise ConfigError(f"tracking.uri={uri!r} is not supported: it must start with one of "
                          f"{', '.join(TRACKING_SCHEMES)} (an embedded SQLite store or an MLflow "
                          f"server).")
    _check_folder("paths.data_dir", cfg.paths.data_dir, Path(cfg.paths.data_dir))
    if uri.startswith("sqlite:///"):
        _check_folder("tracking.uri", uri, Path(uri.removeprefix("sqlite:///")).parent)
        if cfg.tracking.artifact_location:
            _check_folder("tracking.artifact_location", cfg.tracking.artifact_location,
                          Path(cfg.tracking.artifact_location))


def _check_omniglot(cfg: Config) -> None:
    images = isinstance(cfg.data, OmniglotDataConfig)
    if images != isinstance(cfg.model, Conv4Config):
        raise ConfigError(
            f"model={cfg.model.name} does not fit data={cfg.data.family}: data=omniglot gives "
            f"28x28x1 images, which need model=conv4, and model=conv4 needs image data "
            f"(data=omniglot)."
        )
    if not images:
        return
    if cfg.model.batch_norm == "running" and cfg.algorithm.name != "protonet":
        raise ConfigError(
            f"model.batch_norm='running' is supported with algorithm=protonet only (it keeps "
            f"running statistics across episodes); algorithm={cfg.algorithm.name} adapts per-task "
            f"weights with batch statistics: use model.batch_norm=transductive or none."
        )
    data = cfg.data
    if data.train_num_classes not in (None, data.num_classes) and cfg.algorithm.name != "protonet":
        raise ConfigError(
            f"data.train_num_classes={data.train_num_classes} differs from data.num_classes="
            f"{data.num_classes}: only algorithm=protonet (no classifier head) can train and "
            f"test with different N-way; set data.train_num_classes=null."
        )
    if not data.download:  # refuse missing or corrupt zips now, before anything is written
        from pipeline.data.omniglot import check_sources

        check_sources(dataclasses.asdict(data))


def validate(cfg: DictConfig | Config) -> Config:
    """Return the typed config, or raise :class:`ConfigError` naming the bad key."""
    obj = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(obj, Config), f"expected the root config schema, got {type(obj).__name__}"
    _walk(obj, "")
    _check_consistency(obj)
    _check_environment(obj)
    return obj
