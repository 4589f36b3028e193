"""MAML (Finn et al., 2017): meta-learn an initialisation that a few SGD steps adapt to a task.

The whole meta-batch is one compiled step: the inner loop of every task runs inside
``tf.vectorized_map``, and the outer tape differentiates through it (second order), or through
constant inner gradients when ``first_order`` is set (FOMAML).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Algorithm, Context
from pipeline.config import MAMLConfig


class MAML(Algorithm):
    name = "maml"
    cfg: MAMLConfig

    def __init__(self, cfg: MAMLConfig, ctx: Context, jit_compile: bool = False):
        super().__init__(cfg, ctx)
        self._grads = tf.function(self.meta_gradients, jit_compile=jit_compile)
        self._step = tf.function(self._apply_step, jit_compile=jit_compile)
        test_steps = cfg.inner_steps if cfg.test_inner_steps is None else cfg.test_inner_steps
        self._adapt = tf.function(lambda s, x, y: F.finetune(
            self.f, self.loss, s, x, y, test_steps, cfg.inner_lr, "sgd"))

    def meta_gradients(self, sx, sy, qx, qy):
        """Mean post-adaptation query loss over the meta-batch, its metrics, and its gradient."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            params = self.f.params()

            def task(args):
                sxi, syi, qxi, qyi = args
                adapted = F.sgd_adapt(self.f, self.loss, params, sxi, syi, self.cfg.inner_steps,
                                      self.cfg.inner_lr, self.cfg.first_order)
                out, state = self.f.call_with_state(adapted, qxi, training=True)
                return self.loss.metrics(out, qyi), state

            per_task, state = tf.vectorized_map(task, (sx, sy, qx, qy))
            meta_loss = tf.reduce_mean(per_task[self.loss.metric_names[0]])
        grads = tape.gradient(meta_loss, variables)
        if state:  # running batch-norm statistics: the adapted models' query passes, averaged
            self.f.assign_state(state)
        return {k: tf.reduce_mean(v) for k, v in per_task.items()}, grads

    def _apply_step(self, sx, sy, qx, qy):
        metrics, grads = self.meta_gradients(sx, sy, qx, qy)
        self.ctx.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return metrics

    def meta_train_step(self, sx, sy, qx, qy):
        return self._step(sx, sy, qx, qy)

    def adapt(self, state, support_x, support_y):
        return self._adapt(state, support_x, support_y)
