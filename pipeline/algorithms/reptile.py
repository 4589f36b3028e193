"""Reptile (Nichol et al., 2018): move the initialisation toward each task's adapted weights.

For a meta-batch: every task runs ``inner_steps`` full-batch SGD or Adam steps on its support
set from the current weights ``theta`` (all tasks at once, batched), then
``theta <- theta + epsilon * (mean_t phi_t - theta)``. ``epsilon`` decays linearly to 0 over
``meta_train.iterations`` when ``anneal`` is set. No second-order terms and no outer optimizer:
the interpolation is the update. :meth:`Reptile.meta_gradients` returns ``theta - mean phi``
(the direction the interpolation moves against), so it can be checked like the others.
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Batch, Context
from pipeline.algorithms.inner_loop import InnerLoop
from pipeline.config import MetaTrainConfig, ReptileConfig


class Reptile(InnerLoop):
    cfg: ReptileConfig

    def __init__(self, cfg: ReptileConfig, ctx: Context):
        super().__init__(cfg, ctx)
        self.anneal_over = 1
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="reptile_iteration")

    def inner_loop(self, stacked, x, y, steps):
        return F.finetune(self.f, self.loss, list(stacked), x, y, steps, self.cfg.inner_lr,
                          self.cfg.inner_optimizer)

    @property
    def train_metric_names(self) -> tuple[str, ...]:
        return (*self.loss.metric_names, "epsilon")

    @property
    def extra_state(self) -> list:
        return [self.iteration]

    def build_for_training(self, cfg: MetaTrainConfig | None) -> None:
        self.anneal_over = max(cfg.iterations, 1) if cfg is not None else 1

    def epsilon(self) -> tf.Tensor:
        """The outer step size at the current iteration (linearly annealed if configured)."""
        eps = tf.constant(self.cfg.epsilon, tf.float64)
        if self.cfg.anneal:
            done = tf.cast(self.iteration, tf.float64) / self.anneal_over
            eps = eps * tf.maximum(1.0 - done, 0.0)
        return eps

    def meta_gradients(self, batch):
        """Query metrics after adaptation, and ``theta - mean_t phi_t`` per weight."""
        sx, sy, qx, qy = Batch.of(batch)
        params = self.f.params()
        adapted = self.inner_loop(F.tile(params, F.num_tasks(sx)), sx, sy, self.cfg.inner_steps)
        per_task = self.loss.batch_metrics(self.f.batched(adapted, qx), qy)
        deltas = [p - tf.reduce_mean(a, axis=0) for p, a in zip(params, adapted, strict=True)]
        return {k: tf.reduce_mean(v) for k, v in per_task.items()}, deltas

    def _apply_step(self, batch):
        metrics, deltas = self.meta_gradients(batch)
        eps = self.epsilon()
        for v, d in zip(self.model.trainable_variables, deltas, strict=True):
            v.assign_sub(tf.cast(eps, d.dtype) * d)
        self.iteration.assign_add(1)
        return {**metrics, "epsilon": tf.cast(eps, tf.float32)}
