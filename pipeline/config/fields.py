"""Field helpers: ranges and choice lists travel as field metadata, so one walker
(:func:`pipeline.config.validate.validate`) checks them all and names the full dotted key."""

from __future__ import annotations

from dataclasses import field
from typing import Any


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
BATCH_NORM = ("transductive", "running", "none")
IMAGE_LAYOUTS = ("folders", "csv", "pickle")
DOWNSAMPLE = ("maxpool", "stride")
CLASSIFICATION, REGRESSION = "classification", "regression"
# Tabular tasks on disk (pipeline/data/tabular/).
TABULAR_LAYOUTS = ("long", "per_task")
TABULAR_NORMALIZE = ("train", "support", "none")
TABULAR_MISSING = ("refuse", "impute")
# Baselines scored on the same test episodes as the method (pipeline/baselines/).
BASELINES = ("scratch", "finetune", "linear_probe")
#: Those of them that need the pre-trained body.
PRETRAINED_BASELINES = ("finetune", "linear_probe")
#: How a family's training split is pre-trained on for those baselines: ``classes`` (one
#: classifier over every training class), ``multitask`` (a shared body, one head per training
#: task) or ``joint`` (one network on every training task's points).
PRETRAIN_CLASSES, PRETRAIN_MULTITASK, PRETRAIN_JOINT = "classes", "multitask", "joint"
