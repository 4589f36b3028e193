"""Stateless building blocks shared by the algorithms.

Parameters are lists of tensors. A *stacked* parameter list has a leading task axis, one set of
weights per task, so adaptation and evaluation of a whole batch of tasks is one vectorised call
(``tf.vectorized_map`` over Keras 3 ``stateless_call``), not a Python loop of ``fit`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from pipeline.algorithms import conv4_batched
from pipeline.algorithms.losses import TaskLoss

Params = list[tf.Tensor]


class FunctionalModel:
    """A Keras model called with explicit weights: ``f(params, x)``, or batched over tasks.

    :meth:`batched` runs per-task weights on per-task inputs. For a stack of plain ``Dense``
    layers (the MLPs here) it is a handful of batched matmuls, which differentiate (twice) into
    a few hundred fewer graph ops than ``tf.vectorized_map`` over ``stateless_call``: on a small
    model that is most of a meta-iteration's time. A conv4 runs
    :mod:`~pipeline.algorithms.conv4_batched`'s per-task convolutions (:attr:`conv4`; there each
    parameter may also be shared by every task). Any other model takes the
    ``tf.vectorized_map`` path (or always, with ``fast=False``); all give the same numbers.
    """

    def __init__(self, model: keras.Model, fast: bool = True):
        self.model = model
        self._dense = _dense_stack(model) if fast else None
        #: The conv4's layout where the fast conv path applies, else None.
        self.conv4 = conv4_batched.spec_of(model) if fast else None

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

    def batched(self, stacked: Sequence[tf.Tensor], x: tf.Tensor, training: bool = False):
        """Outputs [tasks, n, ...] of per-task weights ``stacked`` on per-task inputs ``x``."""
        if self.conv4 is not None and conv4_batched.handles(self.conv4, stacked, x):
            moving = [v.value for v in self.model.non_trainable_variables]
            return conv4_batched.batched(self.conv4, stacked, x, training, moving)
        if self._dense is None:
            return tf.vectorized_map(lambda a: self(a[0], a[1], training), (list(stacked), x))
        h, i = x, 0
        for activation, use_bias in self._dense:
            h = tf.linalg.matmul(h, stacked[i])
            if use_bias:
                h = h + tf.expand_dims(stacked[i + 1], -2)
            h = activation(h) if activation is not None else h
            i += 1 + use_bias
        return h

    def params(self) -> Params:
        """The current trainable weights as tensors (read inside a tape, so they are tracked)."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]


def _dense_stack(model: keras.Model) -> list[tuple] | None:
    """``[(activation, use_bias)]`` per layer if ``model`` is a Sequential of plain Dense layers
    on vector inputs (weights in ``trainable_variables`` order), else None."""
    layers = getattr(model, "layers", [])
    if not isinstance(model, keras.Sequential) or not layers or len(model.inputs[0].shape) != 2:
        return None
    expected, out = [], []
    for layer in layers:
        if (type(layer) is not keras.layers.Dense or layer.lora_enabled
                or layer.quantization_mode is not None
                or layer.dtype_policy.compute_dtype != layer.kernel.dtype):
            return None
        expected += [layer.kernel] + ([layer.bias] if layer.use_bias else [])
        act = layer.activation
        out.append((None if act is keras.activations.linear else act, layer.use_bias))
    if [id(v) for v in expected] != [id(v) for v in model.trainable_variables]:
        return None
    return out


def dense(grads: Sequence[tf.Tensor | tf.IndexedSlices]) -> Params:
    """Gradients as dense tensors: with a single task, ``tf.vectorized_map`` slices the stacked
    weights with a gather, whose gradient is ``IndexedSlices`` (meta-batch 1 of a conv model)."""
    return [tf.convert_to_tensor(g) for g in grads]


def tile(params: Sequence[tf.Tensor], n: int | tf.Tensor) -> Params:
    """Stack ``n`` copies of one parameter set along a new task axis.

    Pass ``n`` as a Python int where it is known: static shapes keep the gradient graph small.
    """
    return [tf.tile(p[None], [n] + [1] * p.shape.rank) for p in params]


def num_tasks(x: tf.Tensor) -> int | tf.Tensor:
    """The task axis' length, static if known."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


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


def task_losses(f: FunctionalModel, loss: TaskLoss, stacked: Sequence[tf.Tensor], x: tf.Tensor,
                y: tf.Tensor, training: bool = True) -> tf.Tensor:
    """Each task's loss ([tasks]) of its own weights on its own data."""
    return loss.batch_loss(f.batched(stacked, x, training=training), y)


def per_task_grads(f: FunctionalModel, loss: TaskLoss, stacked: Params, x: tf.Tensor,
                   y: tf.Tensor) -> Params:
    """Each task's loss gradient w.r.t. its own weights, vectorised over the task axis.

    Tasks are independent, so the gradient of the *sum* of task losses w.r.t. the stacked
    weights is, slice by slice, each task's own gradient.
    """
    stacked = list(stacked)
    with tf.GradientTape() as tape:
        tape.watch(stacked)
        total = tf.reduce_sum(task_losses(f, loss, stacked, x, y))
    return dense(tape.gradient(total, stacked))


def batched_sgd(f: FunctionalModel, loss: TaskLoss, stacked: Sequence[tf.Tensor], x: tf.Tensor,
                y: tf.Tensor, steps: int, lr: float | tf.Tensor | Sequence[tf.Tensor],
                first_order: bool, mask: Sequence[bool] | None = None) -> Params:
    """``steps`` differentiable SGD steps on every task at once (the MAML inner loop, batched).

    ``lr`` is a scalar or one tensor per parameter (Meta-SGD's learned rates, broadcast over the
    task axis). Parameters whose ``mask`` entry is False stay fixed (ANIL's body). With
    ``first_order`` the inner gradients are constants (FOMAML).
    """
    params = list(stacked)
    mask = list(mask) if mask is not None else [True] * len(params)
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(params)
    for _ in range(steps):
        active = [p for p, m in zip(params, mask, strict=True) if m]
        with tf.GradientTape() as tape:
            tape.watch(active)
            total = tf.reduce_sum(task_losses(f, loss, params, x, y))
        grads = iter(dense(tape.gradient(total, active)))
        new = []
        for p, m, a in zip(params, mask, lrs, strict=True):
            if not m:
                new.append(p)
                continue
            g = next(grads)
            new.append(p - a * (tf.stop_gradient(g) if first_order else g))
        params = new
    return params


def first_step_shared(f: FunctionalModel, loss: TaskLoss, params: Sequence[tf.Tensor],
                      x: tf.Tensor, y: tf.Tensor, lr: float | tf.Tensor | Sequence[tf.Tensor],
                      first_order: bool, mask: Sequence[bool] | None = None) -> Params:
    """The first inner SGD step from weights every task shares, for a Dense stack.

    Same result as ``batched_sgd(f, loss, tile(params, tasks), x, y, 1, ...)``, cheaper: while
    the weights are shared, the forward and backward passes are single large matmuls over all
    tasks' examples, and only each task's weight gradient (inputs^T @ d pre-activations, the
    one per-task quantity) is a batched matmul. Under an outer tape this saves about half of
    the per-task matmuls of a second-order MAML step.
    """
    assert f._dense is not None, "first_step_shared needs a Dense stack"
    params = list(params)
    mask = list(mask) if mask is not None else [True] * len(params)
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(params)
    tasks, n = num_tasks(x), x.shape[1]
    with tf.GradientTape() as tape:
        h = tf.reshape(x, [-1, x.shape[-1]])
        inputs, pre = [], []
        i = 0
        for activation, use_bias in f._dense:
            inputs.append(h)
            z = tf.linalg.matmul(h, params[i]) + (params[i + 1] if use_bias else 0)
            tape.watch(z)
            pre.append(z)
            h = activation(z) if activation is not None else z
            i += 1 + use_bias
        out = tf.reshape(h, [tasks, n, h.shape[-1]])
        total = tf.reduce_sum(loss.batch_loss(out, y))
    dpre = tape.gradient(total, pre)
    new, i = [], 0
    for (_, use_bias), h_in, dz in zip(f._dense, inputs, dpre, strict=True):
        dz = tf.reshape(dz, [tasks, n, dz.shape[-1]])
        grads = [tf.linalg.matmul(tf.reshape(h_in, [tasks, n, h_in.shape[-1]]), dz,
                                  transpose_a=True)]
        if use_bias:
            grads.append(tf.reduce_sum(dz, axis=1))
        for g in grads:
            p = params[i]
            if mask[i]:
                g = tf.stop_gradient(g) if first_order else g
                new.append(p[None] - lrs[i] * g)
            else:
                new.append(tile([p], tasks)[0])
            i += 1
    return new


def evaluate(f: FunctionalModel, loss: TaskLoss, stacked: Params, x: tf.Tensor,
             y: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-task metrics ([tasks] each) of per-task weights on per-task data."""
    return loss.batch_metrics(f.batched(stacked, x), y)


def finetune(f: FunctionalModel, loss: TaskLoss, stacked: Params, x: tf.Tensor, y: tf.Tensor,
             steps: int, lr: float, optimizer: str) -> Params:
    """Train every task's weights on its own data for ``steps`` full-batch steps.

    ``optimizer`` is ``sgd`` or ``adam`` (Adam is elementwise, so its state simply carries the
    task axis too). The step loop is a graph ``while`` loop, so steps cost no Python overhead.
    """
    if isinstance(steps, int) and steps == 0:
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
