"""The base of every algorithm that adapts by gradient steps on a task's support set: MAML,
FOMAML, ANIL, Meta-SGD and Reptile.

A subclass gives :meth:`InnerLoop.inner_loop`, the test-time update of a whole batch of tasks
(stacked per-task weights, a graph loop over the step count); the base owns how many steps the
test takes (``test_inner_steps``), :meth:`~InnerLoop.adapt` and :meth:`~InnerLoop.adapt_steps`.
Gradient-based meta-learners also give :meth:`InnerLoop.meta_loss`, a pure function of the
meta-parameters, whose gradient :meth:`InnerLoop.meta_gradients` is; Reptile, whose update is
no loss's gradient, overrides :meth:`~InnerLoop.meta_gradients` instead.
"""

from __future__ import annotations

from abc import abstractmethod

import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms import outer
from pipeline.algorithms.base import Algorithm, Batch, Context
from pipeline.config import InnerLoopConfig


class InnerLoop(Algorithm):
    cfg: InnerLoopConfig

    def __init__(self, cfg: InnerLoopConfig, ctx: Context):
        super().__init__(cfg, ctx)
        self.test_steps = cfg.inner_steps if cfg.test_inner_steps is None else cfg.test_inner_steps
        self._adapt = tf.function(self.inner_loop)
        self._step = tf.function(self._apply_step, jit_compile=ctx.jit_compile)

    # --- meta-testing -------------------------------------------------------------------------

    @abstractmethod
    def inner_loop(self, stacked: F.Params, x: tf.Tensor, y: tf.Tensor,
                   steps: tf.Tensor) -> F.Params:
        """``steps`` (a scalar tensor) inner steps on every task's support set at once, from
        per-task weights ``stacked``; nothing differentiates through it."""

    def adapt(self, state, support_x, support_y):
        return self.adapt_steps(state, support_x, support_y, self.test_steps)

    def adopt(self, fresh: Algorithm) -> bool:
        if not super().adopt(fresh):
            return False
        assert isinstance(fresh, InnerLoop)
        self.test_steps = fresh.test_steps
        return True

    def adapt_steps(self, state, support_x, support_y, steps: int):
        return self._adapt(list(state), support_x, support_y, tf.constant(steps))

    # --- meta-training ------------------------------------------------------------------------

    def meta_loss(self, params: F.Params, batch: Batch) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """The meta-objective as a pure function of ``params`` (tensors in
        :attr:`meta_variables` order): the mean post-adaptation query loss of ``batch``, and its
        scalar training metrics."""
        raise NotImplementedError(f"{self.name} has no meta-loss")

    def meta_gradients(self, batch: Batch | tuple) -> tuple[dict[str, tf.Tensor], F.Params]:
        """Training metrics and the gradient of :meth:`meta_loss` at the current
        :attr:`meta_variables`."""
        params = [tf.convert_to_tensor(v) for v in self.meta_variables]
        with tf.GradientTape() as tape:
            tape.watch(params)
            value, metrics = self.meta_loss(params, Batch.of(batch))
        # Zeros, not None, for meta-parameters that provably do not move the loss (Meta-SGD's
        # body rates when a zero head leaves the body's first inner step at exactly zero).
        return metrics, tape.gradient(value, params,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _apply_step(self, batch: Batch) -> dict[str, tf.Tensor]:
        metrics, grads = self.meta_gradients(batch)
        outer.apply(self.ctx.optimizer, grads, self.meta_variables)
        return metrics

    def meta_train_step(self, batch: Batch) -> dict[str, tf.Tensor]:
        # Inside the compiled chunk loop a plain call is inlined; the jitted function only
        # when XLA is asked for.
        step = self._step if self.ctx.jit_compile else self._apply_step
        return step(Batch.of(batch))
