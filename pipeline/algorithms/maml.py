"""MAML (Finn et al., 2017): meta-learn an initialisation that a few SGD steps adapt to a task.

The whole meta-batch is one compiled step, batched over tasks: the inner SGD steps of every
task run at once on stacked per-task weights, and the outer tape differentiates through them
(second order), or through constant inner gradients when ``first_order`` is set (FOMAML,
``algorithm=fomaml``). ANIL and Meta-SGD are this class with another inner update rule
(:meth:`MAML.inner_lrs`, :meth:`MAML.inner_mask`).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms import outer
from pipeline.algorithms.base import Algorithm, Context
from pipeline.config import MAMLConfig
from pipeline.errors import ConfigError
from pipeline.models import HEAD


def head_variables(model, key: str) -> list:
    """The weights of the model's ``head`` layer; ``key`` names the option that needs them."""
    heads = [layer for layer in model.layers if layer.name == HEAD and layer.trainable_variables]
    if not heads:
        raise ConfigError(f"{key} needs a model with a '{HEAD}' layer (the last, per-class layer); "
                         f"{model.name} has none: its layers are "
                         f"{[layer.name for layer in model.layers]}.")
    return list(heads[0].trainable_variables)


class MAML(Algorithm):
    name = "maml"
    cfg: MAMLConfig

    def __init__(self, cfg: MAMLConfig, ctx: Context, jit_compile: bool = False):
        super().__init__(cfg, ctx)
        head = head_variables(ctx.model, "algorithm.zero_head") if cfg.zero_head else []
        for v in head:
            v.assign(tf.zeros_like(v))
        self._frozen = {id(v) for v in head}  # held at zero: not meta-learned
        self.jit_compile = jit_compile
        self._grads = tf.function(self.meta_gradients, jit_compile=jit_compile)
        self._step = tf.function(self._apply_step, jit_compile=jit_compile)
        self.test_steps = cfg.inner_steps if cfg.test_inner_steps is None else cfg.test_inner_steps
        self._adapt = tf.function(self._adapt_loop)

    @property
    def meta_variables(self) -> list:
        """The model's weights, less the head when it is held at zero (``zero_head``)."""
        return [v for v in self.model.trainable_variables if id(v) not in self._frozen]

    # --- the inner update: overridden by ANIL (mask) and Meta-SGD (learned rates) -------------

    def inner_lrs(self) -> float | list[tf.Tensor]:
        """The inner learning rate: one scalar, or one tensor per parameter."""
        return self.cfg.inner_lr

    def inner_mask(self) -> list[bool] | None:
        """Which parameters the inner loop adapts (None = all)."""
        return None

    def inner_loop(self, stacked: F.Params, x: tf.Tensor, y: tf.Tensor, steps: int,
                   first_order: bool) -> F.Params:
        """``steps`` inner SGD steps on every task's support set, batched over tasks."""
        return F.batched_sgd(self.f, self.loss, stacked, x, y, steps, self.inner_lrs(),
                             first_order, self.inner_mask())

    # --- meta-training ------------------------------------------------------------------------

    def meta_gradients(self, sx, sy, qx, qy):
        """Mean post-adaptation query loss over the meta-batch, its metrics, and its gradient
        with respect to :attr:`meta_variables`."""
        variables = self.meta_variables
        with tf.GradientTape() as tape:
            adapted = self._differentiable_inner(self.f.params(), sx, sy)
            per_task = self.loss.batch_metrics(self.f.batched(adapted, qx, training=True), qy)
            meta_loss = tf.reduce_mean(per_task[self.loss.metric_names[0]])
        grads = tape.gradient(meta_loss, variables)
        return {k: tf.reduce_mean(v) for k, v in per_task.items()}, grads

    def _differentiable_inner(self, params, sx, sy) -> F.Params:
        steps, first_order = self.cfg.inner_steps, self.cfg.first_order
        if self.f._dense is None:
            return self.inner_loop(F.tile(params, F.num_tasks(sx)), sx, sy, steps, first_order)
        adapted = F.first_step_shared(self.f, self.loss, params, sx, sy, self.inner_lrs(),
                                      first_order, self.inner_mask())
        return self.inner_loop(adapted, sx, sy, steps - 1, first_order)

    def _apply_step(self, sx, sy, qx, qy):
        metrics, grads = self.meta_gradients(sx, sy, qx, qy)
        outer.apply(self.ctx.optimizer, grads, self.meta_variables)
        return metrics

    def meta_train_step(self, sx, sy, qx, qy):
        # Inside the compiled chunk loop a plain call is inlined; the jitted function only
        # when XLA is asked for.
        step = self._step if self.jit_compile else self._apply_step
        return step(sx, sy, qx, qy)

    # --- meta-testing -------------------------------------------------------------------------

    def _adapt_loop(self, state, x, y, steps):
        def body(i, params):
            return i + 1, self.inner_loop(params, x, y, 1, first_order=True)

        _, params = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), list(state)))
        return params

    def adapt(self, state, support_x, support_y):
        return self.adapt_steps(state, support_x, support_y, self.test_steps)

    def adapt_steps(self, state, support_x, support_y, steps: int):
        return self._adapt(state, support_x, support_y, tf.constant(steps))
