"""A run's memory, estimated from its config before it starts, and the machine's.

A meta-batch of 100,000 image episodes, or a ResNet-12 adapted per task over many inner steps,
does not fit in memory: the kernel's OOM killer ends the process and the run is left RUNNING
with no reason. The estimate finds that before the run, in one line, from tensor sizes alone:

* **per example**, the floats a forward pass keeps for the backward pass (every layer's output:
  convolution, batch norm, activation, pooling; :func:`activations`) and the model's weights
  (:func:`parameters`);
* **the meta-training step**: a meta-batch of ``T`` tasks of ``S`` support and ``Q`` query
  examples. Second-order MAML and Meta-SGD keep every inner step's forward pass and its
  gradient on the tape: ``T x (2 n S + Q)`` examples' activations for ``n`` inner steps, and
  ``n + 1`` copies of the per-task weights (with their gradients); first-order MAML, ANIL and
  ProtoNets ``T x (S + Q)``; Reptile ``T x S`` (its steps are not differentiated);
* **a meta-test chunk** of ``meta_test.task_batch_size`` tasks: one recorded gradient step on
  the support set and the query pass (only its largest layer output counted: nothing is kept);
* **a pre-training step** where a baseline needs the pre-trained body
  (``meta_test.baselines``): a batch of ``meta_test.pretrain.batch_size`` examples (the
  family's default where null) through the model, its weights with their gradient and Adam's
  two moments, and the input batches drawn for one compiled call (at most
  ``pipeline.baselines.pretrain.CHUNK_BYTES``, held twice: drawn and as a tensor);
* **the process**: :data:`BASE_BYTES` for Python, TensorFlow and Keras, plus the task data.

The step's peak is the largest of the three; floats are 4 bytes. Checked against measured peaks
(``ru_maxrss`` of whole runs, as ``bench/memory.py`` measures them) in
``tests/test_memory.py`` and ``bench/README.md`` ("Memory estimate"): within a factor of 1.5
either way where the step dominates. It is logged as ``memory/estimate_gib`` and, before a run,
refused in one line when the step cannot fit in the memory available
(``runtime.memory_check=false`` skips the refusal).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

from pipeline.config import (
    ANILConfig,
    ClassificationDataConfig,
    Config,
    Conv4Config,
    EpisodeDataConfig,
    ImagesDataConfig,
    MAMLConfig,
    MLPConfig,
    NotebookAlgorithmConfig,
    OmniglotDataConfig,
    ProtoNetConfig,
    ReptileConfig,
    ResNet12Config,
    SinusoidDataConfig,
)
from pipeline.config.run import pretrain_batch_size, pretrains
from pipeline.errors import ConfigError

GIB = 2**30
FLOAT_BYTES = 4
#: Python, TensorFlow and Keras imported, a model built and a step compiled, before any data:
#: ~0.5-0.7 GiB measured (bench/memory.py), rounded up.
BASE_BYTES = int(0.75 * GIB)
#: Input bytes a pre-training call draws at most (``pipeline.baselines.pretrain.CHUNK_BYTES``;
#: not imported: that module loads TensorFlow).
PRETRAIN_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Estimate:
    """Bytes of a run's parts; ``total`` is what is logged (``memory/estimate_gib``)."""

    step: int
    data: int = 0
    base: int = BASE_BYTES

    @property
    def total(self) -> int:
        return self.base + self.data + self.step

    @property
    def gib(self) -> float:
        return self.total / GIB


def input_shape(cfg: Config) -> tuple[int, ...] | None:
    """One example's shape, from the data config (None: images kept at their own size)."""
    data = cfg.data
    if isinstance(data, ImagesDataConfig):
        return None if data.image_size is None else (data.image_size, data.image_size, 3)
    if isinstance(data, OmniglotDataConfig):
        return (data.image_size, data.image_size, 1)
    if isinstance(data, SinusoidDataConfig):
        return (1,)
    if isinstance(data, ClassificationDataConfig):
        return (data.num_features,)
    return None


def _outputs(cfg: Config) -> int:
    # Tabular tasks may take their class count from the data (num_classes=None): a layer of a
    # few floats either way, so one stands for it.
    return (getattr(cfg.data, "num_classes", None) or 1) if cfg.algorithm.needs_head else 0


def _layers(cfg: Config, shape: tuple[int, ...]) -> list[int]:
    """Floats of each tensor one example's forward pass keeps (the input first)."""
    model, out = cfg.model, [math.prod(shape)]
    norm = 1 if getattr(model, "batch_norm", "none") != "none" else 0
    if isinstance(model, MLPConfig):
        for units in model.hidden_units:
            out += [units, units]
    elif isinstance(model, Conv4Config):
        side = shape[0]
        for _ in range(model.blocks):
            if model.downsample == "stride":
                side = math.ceil(side / 2)
                out += [side * side * model.filters] * (2 + norm)
            else:
                out += [side * side * model.filters] * (2 + norm)
                side //= 2
                out.append(side * side * model.filters)
    elif isinstance(model, ResNet12Config):
        side = shape[0]
        for filters in model.filters:  # 3 x [conv, norm, act] (no act after the third),
            out += [side * side * filters] * (5 + 4 * norm)  # shortcut conv + norm, add, act
            side //= 2
            out.append(side * side * filters)
    return [*out, _outputs(cfg)]


def activations(cfg: Config, shape: tuple[int, ...]) -> int:
    """Floats one example's forward pass keeps for the backward pass."""
    return sum(_layers(cfg, shape))


def parameters(cfg: Config, shape: tuple[int, ...]) -> int:
    """Trainable weights of the model (and its head)."""
    model, channels = cfg.model, shape[-1]
    if isinstance(model, MLPConfig):
        sizes = [channels, *model.hidden_units]
        features = sizes[-1]
        body = sum(a * b + b for a, b in itertools.pairwise(sizes))
    elif isinstance(model, Conv4Config | ResNet12Config):
        widths = ([model.filters] * model.blocks if isinstance(model, Conv4Config)
                  else list(model.filters))
        body, previous = 0, channels
        for f in widths:
            per_block = 9 * previous * f + 3 * f if isinstance(model, Conv4Config) else (
                9 * previous * f + 18 * f * f + previous * f + 8 * f)
            body, previous = body + per_block, f
        features = _layers(cfg, shape)[-2] if not (
            getattr(model, "global_pool", False) or getattr(model, "downsample", "") == "stride"
        ) else widths[-1]
    else:
        return 0
    out = _outputs(cfg)
    return body + features * out + out


def examples(cfg: Config) -> tuple[tuple[int, int], tuple[int, int]]:
    """Support and query examples of a training task and of a test task."""
    data = cfg.data
    if isinstance(data, EpisodeDataConfig):
        n, k, q = data.num_classes, data.k_shot, data.query_per_class
        train_n = data.train_num_classes or n
        return (train_n * k, train_n * (data.train_query_per_class or q)), (n * k, n * q)
    if isinstance(data, SinusoidDataConfig):
        return (data.k_shot, data.num_query), (data.k_shot, data.test_grid_points)
    if isinstance(data, ClassificationDataConfig):
        support = data.k_shot * data.num_classes
        return (support, data.samples_per_task - support), (support,
                                                            data.samples_per_task - support)
    return (0, 0), (0, 0)


def train_step_bytes(cfg: Config, shape: tuple[int, ...]) -> int:
    """The meta-training step's tensors (see the module docstring)."""
    algorithm, train = cfg.algorithm, cfg.meta_train
    if not algorithm.meta_learns or train.iterations == 0:
        return 0
    (support, query), _ = examples(cfg)
    per_example, weights = activations(cfg, shape), parameters(cfg, shape)
    tasks = train.meta_batch_size
    if isinstance(algorithm, NotebookAlgorithmConfig):
        return FLOAT_BYTES * (algorithm.batch_size * per_example + 4 * weights)
    if isinstance(algorithm, ReptileConfig):
        kept, copies = support, 2
    elif isinstance(algorithm, ProtoNetConfig | ANILConfig) or (
            isinstance(algorithm, MAMLConfig) and algorithm.first_order):
        kept, copies = support + query, 2
    elif isinstance(algorithm, MAMLConfig):  # second order: every inner step on the tape
        kept, copies = 2 * algorithm.inner_steps * support + query, 2 * (algorithm.inner_steps + 1)
    else:
        kept, copies = support + query, 2
    return FLOAT_BYTES * tasks * (kept * per_example + copies * weights)


def test_chunk_bytes(cfg: Config, shape: tuple[int, ...]) -> int:
    """A meta-test chunk: a gradient step on each task's support set, then its query pass."""
    _, (support, query) = examples(cfg)
    layers = sorted(_layers(cfg, shape))
    tasks = min(cfg.meta_test.task_batch_size, cfg.data.num_test_tasks)
    return FLOAT_BYTES * tasks * (support * sum(layers) + query * layers[-1]
                                  + 2 * parameters(cfg, shape))


def pretrain_per_iteration(cfg: Config) -> int:
    """One meta-iteration's training examples (the pre-training's default batch)."""
    (support, query), _ = examples(cfg)
    tasks = cfg.meta_train.meta_batch_size
    if not isinstance(cfg.data, EpisodeDataConfig) or cfg.data.num_train_tasks:
        tasks = min(tasks, cfg.data.num_train_tasks)  # fixed training tasks
    return tasks * (support + query)


def pretrain_step_bytes(cfg: Config, shape: tuple[int, ...]) -> int:
    """A pre-training step (0 when no baseline needs the pre-trained body)."""
    if not pretrains(cfg):
        return 0
    batch = pretrain_batch_size(cfg, pretrain_per_iteration(cfg))
    per_call = min(cfg.meta_test.pretrain.steps_per_call * batch * math.prod(shape)
                   * FLOAT_BYTES, PRETRAIN_CHUNK_BYTES)
    return (FLOAT_BYTES * (batch * activations(cfg, shape) + 4 * parameters(cfg, shape))
            + 2 * per_call)


def estimate(cfg: Config, shape: tuple[int, ...] | None = None, data_bytes: int = 0
             ) -> Estimate | None:
    """The run's estimate (``shape``: one example's, when the config does not fix it; None if
    it is unknown)."""
    shape = shape or input_shape(cfg)
    if shape is None:
        return None
    return Estimate(max(train_step_bytes(cfg, shape), test_chunk_bytes(cfg, shape),
                        pretrain_step_bytes(cfg, shape)), data_bytes)


def available_bytes() -> int | None:
    """Memory this process may still take: ``MemAvailable`` (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check(cfg: Config, shape: tuple[int, ...] | None = None, data_bytes: int = 0,
          available: int | None = None) -> Estimate | None:
    """Refuse, in one line, a run whose step cannot fit in the memory available (naming the
    batch size that sets it and the largest that fits); return the estimate."""
    shape = shape or input_shape(cfg)
    found = estimate(cfg, shape, data_bytes)
    available = available_bytes() if available is None else available
    if found is None or shape is None or available is None or not cfg.runtime.memory_check:
        return found
    if found.total <= available:
        return found
    parts = {"train": train_step_bytes(cfg, shape), "test": test_chunk_bytes(cfg, shape),
             "pretrain": pretrain_step_bytes(cfg, shape)}
    largest = max(parts, key=parts.get)  # ties: the first (meta-training, as before)
    if largest == "pretrain":
        key, value, what = ("meta_test.pretrain.batch_size",
                            pretrain_batch_size(cfg, pretrain_per_iteration(cfg)),
                            "a pre-training step")
    elif largest == "train":
        key, value, what = ("meta_train.meta_batch_size", cfg.meta_train.meta_batch_size,
                            "the meta-training step")
    else:
        key, value, what = ("meta_test.task_batch_size",
                            min(cfg.meta_test.task_batch_size, cfg.data.num_test_tasks),
                            "a meta-test chunk")
    fits = max(0, (available - found.base - found.data) * value // max(found.step, 1))
    raise ConfigError(
        f"{key}={value} does not fit in memory: {what} needs about {found.step / GIB:.1f} GiB "
        f"(run: {found.gib:.1f} GiB estimated) and this machine has {available / GIB:.1f} GiB "
        f"available, so it must be <= {fits}" + (" (nothing fits: use a smaller model or image "
                                                  "size)" if not fits else "")
        + "; or set runtime.memory_check=false to run anyway.")
