"""Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate per parameter.

The rates ``alpha`` (one tensor shaped like each weight, initialised to ``inner_lr``) are
meta-variables: the outer optimizer updates them with the initialisation, from the same
second-order meta-gradient. The inner update is ``theta - alpha * grad`` (elementwise). Their
mean and mean magnitude are logged as training curves (``train/inner_lr_mean``,
``train/inner_lr_abs_mean``); :meth:`MetaSGD.learned_lrs` returns them.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms.base import Batch, Context
from pipeline.algorithms.maml import MAML
from pipeline.config import MetaSGDConfig


class MetaSGD(MAML):
    cfg: MetaSGDConfig

    def __init__(self, cfg: MetaSGDConfig, ctx: Context):
        self.alphas = [
            keras.Variable(np.full(v.shape, cfg.inner_lr), dtype=v.dtype, trainable=True,
                           name=f"inner_lr_{v.name}")
            for v in ctx.model.trainable_variables
        ]
        super().__init__(cfg, ctx)

    @property
    def meta_variables(self) -> list:
        return [*super().meta_variables, *self.alphas]

    @property
    def train_metric_names(self) -> tuple[str, ...]:
        return (*self.loss.metric_names, "inner_lr_mean", "inner_lr_abs_mean")

    def split(self, params):
        n = len(params) - len(self.alphas)
        weights, _ = super().split(params[:n])
        return weights, list(params[n:])

    def learned_lrs(self) -> list[np.ndarray]:
        """The current per-parameter inner learning rates."""
        return [np.asarray(a) for a in self.alphas]

    def meta_loss(self, params, batch: Batch):
        value, metrics = super().meta_loss(params, batch)
        flat = tf.concat([tf.reshape(a, [-1]) for a in self.split(params)[1]], 0)
        metrics["inner_lr_mean"] = tf.reduce_mean(flat)
        metrics["inner_lr_abs_mean"] = tf.reduce_mean(tf.abs(flat))
        return value, metrics
