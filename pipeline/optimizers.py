"""Keras optimizers from the ``optimizer`` config group."""

from __future__ import annotations

import keras

from pipeline.config import AdamConfig, OptimizerConfig, SGDConfig


def build_optimizer(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    if isinstance(cfg, AdamConfig):
        return keras.optimizers.Adam(learning_rate=cfg.learning_rate, beta_1=cfg.beta_1,
                                     beta_2=cfg.beta_2, epsilon=cfg.epsilon, clipnorm=cfg.clipnorm)
    if isinstance(cfg, SGDConfig):
        return keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov, clipnorm=cfg.clipnorm)
    raise ValueError(f"optimizer.name={cfg.name!r} is unknown: choose one of adam, sgd.")
