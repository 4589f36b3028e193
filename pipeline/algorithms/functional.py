"""Stateless building blocks shared by the algorithms.

Parameters are lists of tensors. A *stacked* parameter list has a leading task axis, one set of
weights per task, so adaptation and evaluation of a whole batch of tasks is one vectorised call
(``tf.vectorized_map`` over Keras 3 ``stateless_call``), not a Python loop of ``fit`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from pipeline.losses import TaskLoss

Params = list[tf.Tensor]


class FunctionalModel:
    """A Keras model called with explicit weights: ``f(params, x)``."""

    def __init__(self, model: keras.Model):
        self.model = model

    def __call__(self, params: Sequence[tf.Tensor], x: tf.Tensor, training: bool = False):
        return self.call_with_state(params, x, training)[0]

    def call_with_state(self, params: Sequence[tf.Tensor], x: tf.Tensor, training: bool = False,
                        state: Sequence[tf.Tensor] | None = None) -> tuple[tf.Tensor, Params]:
        """Output and updated non-trainable variables (batch-norm running statistics).

        ``state`` defaults to the model's current non-trainable values. The update is returned,
        not applied: callers that keep running statistics average it over the meta-batch and
        :meth:`assign_state` it once per step (see :mod:`pipeline.algorithms.protonet`).
        """
        if state is None:
            state = [v.value for v in self.model.non_trainable_variables]
        out, new_state = self.model.stateless_call(list(params), list(state), x,
                                                   training=training)
        return out, list(new_state)

    @property
    def has_state(self) -> bool:
        """Whether the model keeps non-trainable state (running batch-norm statistics)."""
        return bool(self.model.non_trainable_variables)

    def assign_state(self, stacked: Sequence[tf.Tensor]) -> None:
        """Set the non-trainable variables to the task-axis mean of per-task updates."""
        for var, value in zip(self.model.non_trainable_variables, stacked, strict=True):
            var.assign(tf.reduce_mean(value, axis=0))

    def params(self) -> Params:
        """The current trainable weights as tensors (read inside a tape, so they are tracked)."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]


def tile(params: Sequence[tf.Tensor], n: int) -> Params:
    """Stack ``n`` copies of one parameter set along a new task axis."""
    return [tf.repeat(p[None], n, axis=0) for p in params]


def sgd_adapt(f: FunctionalModel, loss: TaskLoss, params: Sequence[tf.Tensor], x: tf.Tensor,
              y: tf.Tensor, steps: int, lr: float | tf.Tensor, first_order: bool) -> Params:
    """``steps`` differentiable SGD steps on one task (the MAML inner loop).

    With ``first_order`` the inner gradients are constants, which drops the second-order terms
    of the meta-gradient (FOMAML).
    """
    params = list(params)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            value = loss.loss(f(params, x, training=True), y)
        grads = tape.gradient(value, params)
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        params = [p - lr * g for p, g in zip(params, grads, strict=True)]
    return params


def per_task_grads(f: FunctionalModel, loss: TaskLoss, stacked: Params, x: tf.Tensor,
                   y: tf.Tensor) -> Params:
    """Each task's loss gradient w.r.t. its own weights, vectorised over the task axis."""

    def one(args):
        params, xi, yi = args
        with tf.GradientTape() as tape:
            tape.watch(params)
            value = loss.loss(f(params, xi, training=True), yi)
        return tape.gradient(value, params)

    return tf.vectorized_map(one, (stacked, x, y))


def evaluate(f: FunctionalModel, loss: TaskLoss, stacked: Params, x: tf.Tensor,
             y: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-task metrics ([tasks] each) of per-task weights on per-task data."""
    return tf.vectorized_map(lambda a: loss.metrics(f(a[0], a[1]), a[2]), (stacked, x, y))


def finetune(f: FunctionalModel, loss: TaskLoss, stacked: Params, x: tf.Tensor, y: tf.Tensor,
             steps: int, lr: float, optimizer: str) -> Params:
    """Train every task's weights on its own data for ``steps`` full-batch steps.

    ``optimizer`` is ``sgd`` or ``adam`` (Adam is elementwise, so its state simply carries the
    task axis too). The step loop is a graph ``while`` loop, so steps cost no Python overhead.
    """
    if steps == 0:
        return list(stacked)
    use_adam = optimizer == "adam"
    b1, b2, eps = 0.9, 0.999, 1e-7

    def body(i, params, m, v):
        grads = per_task_grads(f, loss, params, x, y)
        if not use_adam:
            return i + 1, [p - lr * g for p, g in zip(params, grads, strict=True)], m, v
        t = tf.cast(i + 1, params[0].dtype)
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads, strict=True)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads, strict=True)]
        scale = lr * tf.sqrt(1 - b2**t) / (1 - b1**t)
        params = [p - scale * mi / (tf.sqrt(vi) + eps)
                  for p, mi, vi in zip(params, m, v, strict=True)]
        return i + 1, params, m, v

    zeros = [tf.zeros_like(p) for p in stacked]
    _, params, _, _ = tf.while_loop(lambda i, *_: i < steps, body,
                                    (tf.constant(0), list(stacked), zeros, list(zeros)))
    return params
