"""Keras optimizers from the ``optimizer`` config group."""

from __future__ import annotations

import keras

from pipeline.config import AdamConfig, OptimizerConfig, SGDConfig, registry

Schedule = float | keras.optimizers.schedules.LearningRateSchedule


def learning_rate(cfg: OptimizerConfig, total_steps: int) -> Schedule:
    """The outer learning rate, a function of the optimizer's step count when scheduled.

    The schedule reads ``optimizer.iterations``, which checkpoints save, so a resumed run
    continues the same curve.
    """
    if cfg.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            cfg.learning_rate, decay_steps=cfg.decay_every, decay_rate=cfg.decay_rate,
            staircase=True)
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=max(total_steps, 1), alpha=cfg.min_lr_fraction)
    return cfg.learning_rate


def adam(cfg: AdamConfig, total_steps: int) -> keras.optimizers.Adam:
    return keras.optimizers.Adam(learning_rate=learning_rate(cfg, total_steps), beta_1=cfg.beta_1,
                                 beta_2=cfg.beta_2, epsilon=cfg.epsilon, clipnorm=cfg.clipnorm)


def sgd(cfg: SGDConfig, total_steps: int) -> keras.optimizers.SGD:
    return keras.optimizers.SGD(learning_rate=learning_rate(cfg, total_steps),
                                momentum=cfg.momentum, nesterov=cfg.nesterov,
                                clipnorm=cfg.clipnorm)


def build_optimizer(cfg: OptimizerConfig, total_steps: int = 1) -> keras.optimizers.Optimizer:
    """The outer optimizer; ``total_steps`` (meta-iterations) sets a cosine schedule's length."""
    return registry.build("optimizer", cfg.name, cfg, total_steps)


def schedule_of(opt: keras.optimizers.Optimizer
                ) -> keras.optimizers.schedules.LearningRateSchedule | None:
    """``opt``'s learning-rate schedule (a function of the 0-based step), or None if constant."""
    lr = opt._learning_rate
    return lr if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) else None
