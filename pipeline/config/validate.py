"""Pure validation of a composed config: every error names the full dotted key, the bad value
and what is allowed, in one line. Nothing here touches the file system or the network (that is
:mod:`pipeline.run.preflight`)."""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.algorithm import InnerLoopConfig
from pipeline.config.data import (
    ClassificationDataConfig,
    ImagesDataConfig,
    OmniglotDataConfig,
    SinusoidDataConfig,
    SyntheticDataConfig,
    TabularDataConfig,
)
from pipeline.config.fields import BASELINES, REGRESSION
from pipeline.config.model import Conv4Config, ImageModelConfig, MLPConfig, ResNet12Config
from pipeline.config.run import Config
from pipeline.errors import ConfigError

TRACKING_SCHEMES = ("sqlite:///", "http://", "https://")
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


def _check_known_keys(node: DictConfig, obj: Any, prefix: str = "") -> None:
    """Keys added with ``+key=value`` must exist in the schema, like any override."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key in node:
        if key not in fields:
            where = f"{prefix.rstrip('.')} ({type(obj).__name__})" if prefix else "the root config"
            value = node[key]
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{prefix}{key}={value!r} is not a config key: {where} has "
                              f"{', '.join(sorted(fields))}. Remove it or correct its spelling.")
        value = getattr(obj, str(key))
        if dataclasses.is_dataclass(value) and isinstance(node[key], DictConfig):
            _check_known_keys(node[key], value, f"{prefix}{key}.")


def _check_baselines(baselines: list[str]) -> None:
    bad = [b for b in baselines if b not in BASELINES]
    if bad or len(set(baselines)) != len(baselines):
        raise ConfigError(f"meta_test.baselines={baselines} is not allowed: list each of "
                          f"{', '.join(BASELINES)} at most once"
                          + (f" ({', '.join(map(repr, bad))} is not one)." if bad else "."))


def _check_consistency(cfg: Config) -> None:
    data, model, algorithm = cfg.data, cfg.model, cfg.algorithm
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
    if algorithm.classification_only and data.task_type == REGRESSION:
        raise ConfigError(
            f"algorithm={algorithm.name} scores classification tasks only; data={data.family} is "
            f"regression. Choose another algorithm (e.g. maml) or a classification family.")
    eval_steps = list(cfg.meta_test.eval_steps)
    if any(s < 0 for s in eval_steps):
        raise ConfigError(f"meta_test.eval_steps={eval_steps} is not allowed: every entry must be "
                          f">= 0 inner steps.")
    repeated = sorted({s for s in eval_steps if eval_steps.count(s) > 1})
    if repeated:
        raise ConfigError(f"meta_test.eval_steps={eval_steps} is not allowed: {repeated} "
                          f"appear{'s' if len(repeated) == 1 else ''} more than once; each "
                          f"number of inner steps is scored once (e.g. "
                          f"meta_test.eval_steps={sorted(set(eval_steps))}).")
    if eval_steps and not algorithm.has_inner_loop:
        raise ConfigError(f"meta_test.eval_steps={eval_steps} is not allowed with algorithm="
                          f"{algorithm.name}: it has no inner steps to vary. Set "
                          f"meta_test.eval_steps=[].")
    _check_images(cfg)
    _check_meta_batch(cfg)
    if isinstance(data, TabularDataConfig):
        _check_tabular(data)
    _check_sweep(cfg)
    _check_validation(cfg)
    _check_baselines(list(cfg.meta_test.baselines))
    check_tracking_uri(cfg.tracking.uri)
    if isinstance(model, ResNet12Config) and (not model.filters or min(model.filters) < 1):
        raise ConfigError(
            f"model.filters={list(model.filters)} is not allowed: give one width >= 1 per "
            f"residual block, e.g. [64, 160, 320, 640].")
    if isinstance(model, MLPConfig) and any(u < 1 for u in model.hidden_units):
        raise ConfigError(
            f"model.hidden_units={list(model.hidden_units)} is not allowed: every layer width "
            f"must be >= 1."
        )


#: ``sweep.resume``: a parent run id (MLflow's 32 hex characters) or ``last``.
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def check_tracking_uri(uri: str) -> None:
    """Refuse a tracking URI of a scheme the pipeline does not write to (a run checks it with
    its config; a sweep before its parent run or study exist)."""
    if not str(uri).startswith(TRACKING_SCHEMES):
        raise ConfigError(f"tracking.uri={uri!r} is not supported: it must start with one of "
                          f"{', '.join(TRACKING_SCHEMES)} (an embedded SQLite store or an MLflow "
                          f"server).")


def _check_sweep(cfg: Config) -> None:
    for key in cfg.sweep.group_by:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part, _MISSING_KEY)
        if node is _MISSING_KEY or dataclasses.is_dataclass(node):
            raise ConfigError(f"sweep.group_by={list(cfg.sweep.group_by)} is not allowed: "
                              f"{key!r} is not a config value (e.g. seed, data.k_shot).")
    resume = cfg.sweep.resume
    if resume is not None and resume != "last" and not _RUN_ID.match(resume):
        raise ConfigError(f"sweep.resume={resume!r} is not allowed: give a sweep's parent run id "
                          f"(32 hex characters) or last.")


_MISSING_KEY = object()


def _check_images(cfg: Config) -> None:
    images = cfg.data.image_data
    if images != cfg.model.image_model:
        raise ConfigError(
            f"model={cfg.model.name} does not fit data={cfg.data.family}: data=omniglot and "
            f"data=images give images, which need an image model (model=conv4 or resnet12), and "
            f"image models need image data (data=omniglot or data=images)."
        )
    if not images:
        return
    if isinstance(cfg.data, ImagesDataConfig):
        _check_image_collection(cfg.data)
    size = getattr(cfg.data, "image_size", None)
    if size is not None:
        check_image_size(cfg.model, size, f"data.image_size={size}")
    algorithm, data = cfg.algorithm, cfg.data
    if cfg.model.batch_norm == "running" and not algorithm.running_batch_norm:
        raise ConfigError(
            f"model.batch_norm='running' is supported with algorithm=protonet only (it keeps "
            f"running statistics across episodes); algorithm={algorithm.name} adapts per-task "
            f"weights with batch statistics: use model.batch_norm=transductive or none."
        )
    if data.train_num_classes not in (None, data.num_classes) and algorithm.needs_head:
        raise ConfigError(
            f"data.train_num_classes={data.train_num_classes} differs from data.num_classes="
            f"{data.num_classes}: only algorithm=protonet (no classifier head) can train and "
            f"test with different N-way; set data.train_num_classes=null."
        )


def check_image_size(model: ImageModelConfig, side: int, what: str) -> None:
    """``side`` (the images' side, described by ``what``) must be at least ``model``'s minimum."""
    smallest = model.min_image_size()
    if side < smallest:
        raise ConfigError(
            f"{what} is too small for model={model.name}: its {round(math.log2(smallest))} 2x2 "
            f"max-pools need images of at least {smallest}x{smallest} px. Set data.image_size "
            f">= {smallest}" + (" (or model.downsample=stride, which has no minimum)"
                                if isinstance(model, Conv4Config) else "") + ".")


def _check_meta_batch(cfg: Config) -> None:
    """A meta-batch draws distinct training tasks: no more than a fixed training set holds
    (more was silently clamped to it, while the logged param said otherwise)."""
    train, algorithm, tasks = cfg.meta_train, cfg.algorithm, cfg.data.num_train_tasks
    if (algorithm.meta_learns and algorithm.meta_batches and train.iterations and tasks
            and train.meta_batch_size > tasks):
        raise ConfigError(
            f"meta_train.meta_batch_size={train.meta_batch_size} is larger than "
            f"data.num_train_tasks={tasks}: a meta-batch draws distinct training tasks, so it "
            f"must be <= {tasks} (or raise data.num_train_tasks).")


def _is_split(split: Any) -> bool:
    """Three fractions (train, val, test) summing to 1, train and test > 0."""
    return (len(split) == 3 and all(f >= 0 for f in split) and split[0] > 0 and split[2] > 0
            and abs(sum(split) - 1) <= 1e-6)


def _check_image_collection(data: ImagesDataConfig) -> None:
    if not data.root:
        raise ConfigError(
            "data.root is required with data=images: set data.root=/path/to/your/copy, the "
            "folder holding the image collection (docs/task-families.md, 'Image collections on "
            "disk', says how to obtain miniImageNet, CIFAR-FS and FC100, and their layouts).")
    split = data.class_split
    if split is None:
        return
    if data.layout != "folders":
        raise ConfigError(f"data.class_split={list(split)} splits a flat folder of classes and "
                          f"needs data.layout=folders (layout={data.layout} has its own splits); "
                          f"set data.class_split=null.")
    if not _is_split(split):
        raise ConfigError(f"data.class_split={list(split)} is not allowed: give 3 fractions of "
                          f"the classes (train, val, test) that sum to 1, train and test > 0, "
                          f"e.g. [0.64, 0.16, 0.2].")


def _check_tabular(data: TabularDataConfig) -> None:
    if not data.root:
        raise ConfigError(
            "data.root is required with data=tabular: set data.root=/path/to/tasks.csv (a CSV "
            "or Parquet file with a task column, data.layout=long) or data.root=/path/to/folder "
            "(one file per task, data.layout=per_task); docs/task-families.md: 'Tabular tasks "
            "from disk'.")
    split = data.task_split
    if split is not None and not _is_split(split):
        raise ConfigError(f"data.task_split={list(split)} is not allowed: give 3 fractions of "
                          f"the tasks (train, val, test) that sum to 1, train and test > 0, e.g. "
                          f"[0.6, 0.2, 0.2]; or null for named splits.")
    if split is None and data.layout == "long" and not data.split_column:
        raise ConfigError("data.task_split=null with data.layout=long needs data.split_column, "
                          "the column naming each task's split (train, val, test); or set "
                          "data.task_split=[0.6,0.2,0.2] to split the tasks by the seed.")
    if data.categorical and data.features is not None:
        extra = [c for c in data.categorical if c not in data.features]
        if extra:
            raise ConfigError(f"data.categorical={list(data.categorical)} names {extra}, which "
                              f"data.features={list(data.features)} does not list.")


def _check_validation(cfg: Config) -> None:
    every, data = cfg.meta_train.validate_every, cfg.data
    if not every:
        return
    if not cfg.algorithm.meta_learns:
        raise ConfigError(f"meta_train.validate_every={every} selects meta-learned weights; "
                          f"algorithm={cfg.algorithm.name} learns nothing before meta-test: set "
                          f"meta_train.validate_every=0.")
    if data.validation_tasks():
        return
    if isinstance(data, OmniglotDataConfig):
        how = ("set data.num_val_characters (172: the ProtoNets split) and data.num_val_tasks "
               "> 0")
    elif isinstance(data, ImagesDataConfig | SyntheticDataConfig | SinusoidDataConfig):
        how = "set data.num_val_tasks > 0"
    elif isinstance(data, TabularDataConfig):
        how = "set data.num_val_tasks > 0 and a validation fraction in data.task_split"
    else:
        how = "it has no validation split; set meta_train.validate_every=0"
    raise ConfigError(f"meta_train.validate_every={every} needs validation tasks and "
                      f"data={data.family} has none: {how}.")


def warnings(cfg: Config) -> list[str]:
    """Settings that are allowed but likely wrong, one line each (logged when a run starts)."""
    out = []
    algorithm = cfg.algorithm
    if isinstance(algorithm, InnerLoopConfig) and algorithm.learned_inner_rates:
        trained = algorithm.inner_steps
        test = trained if algorithm.test_inner_steps is None else algorithm.test_inner_steps
        more = sorted({n for n in (test, *cfg.meta_test.eval_steps) if n > trained})
        if more:
            out.append(
                f"algorithm={algorithm.name} meta-learns its inner learning rates for "
                f"algorithm.inner_steps={trained} step(s) and is tested with {more} steps "
                f"(algorithm.test_inner_steps, meta_test.eval_steps): rates tuned for fewer "
                f"steps can overshoot, and tasks whose query loss blows up are counted as "
                f"diverged. Train with as many inner steps as you test with.")
    return out


def validate(cfg: DictConfig | Config) -> Config:
    """Return the typed config, or raise :class:`ConfigError` naming the bad key."""
    obj = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(obj, Config), f"expected the root config schema, got {type(obj).__name__}"
    if isinstance(cfg, DictConfig):
        _check_known_keys(cfg, obj)
    _walk(obj, "")
    _check_consistency(obj)
    return obj
