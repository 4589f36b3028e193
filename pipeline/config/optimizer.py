"""Schemas of the ``optimizer`` group: the outer-loop (meta-) optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from pipeline.config.fields import LR_SCHEDULES, choice, num
from pipeline.config.registry import option


@dataclass
class OptimizerConfig:
    name: str = MISSING
    learning_rate: float = num(1e-3, gt=0)
    #: Clip each gradient tensor's norm (null = no clipping).
    clipnorm: float | None = num(None, gt=0)
    #: Learning rate over meta-training: ``constant``; ``step`` multiplies it by ``decay_rate``
    #: every ``decay_every`` meta-iterations (ProtoNets: x0.5 every 2,000 episodes); ``cosine``
    #: anneals it to ``learning_rate * min_lr_fraction`` at ``meta_train.iterations``. Logged
    #: as the ``train/learning_rate`` curve.
    schedule: str = choice("constant", LR_SCHEDULES)
    decay_every: int = num(2000, ge=1)
    decay_rate: float = num(0.5, gt=0, le=1)
    min_lr_fraction: float = num(0.0, ge=0, le=1)


@option("optimizer", builds="pipeline.algorithms.optimizers:adam")
@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    beta_1: float = num(0.9, ge=0, lt=1)
    beta_2: float = num(0.999, ge=0, lt=1)
    epsilon: float = num(1e-7, gt=0)


@option("optimizer", builds="pipeline.algorithms.optimizers:sgd")
@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    learning_rate: float = num(0.01, gt=0)
    momentum: float = num(0.0, ge=0, lt=1)
    nesterov: bool = False
