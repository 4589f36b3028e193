"""The ``finetune`` baseline (Chen et al. 2019's "Baseline", the body unfrozen): the pre-trained
body with a new head, trained on each test task's support set as ``meta_test.finetune`` says:
the head alone for ``freeze_body_steps`` steps at ``learning_rate`` (Chen et al. train only a
new head), then every weight, the body at ``body_learning_rate`` (linear probing then
fine-tuning, Kumar et al. 2022). A body trained from the first step at the head's rate follows
a random head's gradients and loses what it learned (bench/README.md)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Algorithm, Context
from pipeline.algorithms.losses import TaskLoss, output_units
from pipeline.config import Config, FinetuneConfig, ScratchConfig
from pipeline.data import TaskSet, derive_seed
from pipeline.models import HEAD, build_model
from pipeline.tracking.keys import FINETUNE


class Finetune(Algorithm):
    cfg: ScratchConfig

    def __init__(self, cfg: FinetuneConfig, ctx: Context, body: keras.Model):
        super().__init__(ScratchConfig(name=FINETUNE, steps=cfg.steps,
                                       learning_rate=cfg.learning_rate,
                                       optimizer=cfg.optimizer), ctx)
        for src, dst in zip(body.layers, ctx.model.layers[:-1], strict=True):
            dst.set_weights(src.get_weights())
        head = ctx.model.get_layer(HEAD)
        self._head_ids = [i for i, v in enumerate(ctx.model.trainable_variables)
                          if any(v is w for w in head.trainable_variables)]
        self._head_init = keras.initializers.get(head.kernel_initializer).get_config()
        self._head_init_cls = type(keras.initializers.get(head.kernel_initializer))
        head_ids = set(self._head_ids)
        rates = [cfg.learning_rate if i in head_ids else cfg.body_learning_rate
                 for i in range(len(ctx.model.trainable_variables))]
        frozen = [i not in head_ids for i in range(len(rates))]
        self._adapt = tf.function(lambda s, x, y: train_support(
            self.f, self.loss, s, x, y, cfg, rates, frozen))

    def _fresh_head(self, task: int) -> list[tf.Tensor]:
        """A new head for one task, drawn from the head's initialiser, seeded by the task."""
        out = []
        for j, i in enumerate(self._head_ids):
            var = self.model.trainable_variables[i]
            if len(var.shape) == 1:  # bias
                out.append(tf.zeros(var.shape, var.dtype))
                continue
            config = dict(self._head_init)
            if "seed" in config:
                config["seed"] = int(np.random.SeedSequence([self.ctx.seed + task, j])
                                     .generate_state(1)[0] >> 1)
            out.append(self._head_init_cls.from_config(config)(var.shape, dtype=var.dtype))
        return out

    def initial_state(self, task_ids: np.ndarray):
        state = F.tile(self.f.params(), len(task_ids))
        heads = [self._fresh_head(int(t)) for t in task_ids]
        for j, i in enumerate(self._head_ids):
            state[i] = tf.stack([h[j] for h in heads])
        return state

    def adapt(self, state, support_x, support_y):
        return self._adapt(state, support_x, support_y)


def train_support(f: F.FunctionalModel, loss: TaskLoss, stacked: F.Params, x: tf.Tensor,
                  y: tf.Tensor, cfg: FinetuneConfig, rates: list[float], frozen: list[bool]
                  ) -> F.Params:
    """``cfg.steps`` full-batch steps on every task at once, each weight at its own rate; the
    weights marked ``frozen`` sit out the first ``cfg.freeze_body_steps`` (not differentiated
    then: a head-only step costs a forward pass) and start their optimizer state when they
    join."""
    params = list(stacked)
    state = [tf.zeros_like(p) for p in params], [tf.zeros_like(p) for p in params]
    head = [i for i, fixed in enumerate(frozen) if not fixed]
    first = min(cfg.freeze_body_steps, cfg.steps)
    joined = [first if fixed else 0 for fixed in frozen]  # Adam's step count starts there
    params, state = _steps(f, loss, params, state, x, y, cfg.optimizer, rates, joined, head,
                           0, first)
    return _steps(f, loss, params, state, x, y, cfg.optimizer, rates, joined,
                  list(range(len(params))), first, cfg.steps)[0]


def _steps(f, loss, params, state, x, y, optimizer: str, rates: list[float], joined: list[int],
           ids: list[int], start: int, stop: int):
    """Steps ``start``..``stop`` on the weights ``ids`` (SGD or Adam, whose bias correction
    counts each weight's steps from the one it ``joined`` at)."""
    if stop <= start:
        return params, state
    b1, b2, eps = 0.9, 0.999, 1e-7

    def body(i, params, m, v):
        with tf.GradientTape() as tape:
            watched = [params[j] for j in ids]
            tape.watch(watched)
            total = tf.reduce_sum(F.task_losses(f, loss, params, x, y))
        grads = dict(zip(ids, F.dense(tape.gradient(total, watched)), strict=True))
        params, m, v = list(params), list(m), list(v)
        for j, g in grads.items():
            if optimizer != "adam":
                params[j] = params[j] - rates[j] * g
                continue
            t = tf.cast(i + 1 - joined[j], g.dtype)
            m[j] = b1 * m[j] + (1 - b1) * g
            v[j] = b2 * v[j] + (1 - b2) * g * g
            scale = rates[j] * tf.sqrt(1 - b2**t) / (1 - b1**t)
            params[j] = params[j] - scale * m[j] / (tf.sqrt(v[j]) + eps)
        return i + 1, params, m, v

    _, params, m, v = tf.while_loop(lambda i, *_: i < stop, body,
                                    (tf.constant(start), params, *state))
    return params, (m, v)


def build(cfg: Config, tasks: TaskSet, loss: TaskLoss, body: keras.Model) -> Finetune:
    units = output_units(loss.kind, tasks.num_outputs)
    model = build_model(cfg.model, tasks.input_shape, units, derive_seed(cfg.seed, "init"))
    ctx = Context(model=model, loss=loss, optimizer=keras.optimizers.SGD(),
                  seed=derive_seed(cfg.seed, "baselines"))
    return Finetune(cfg.meta_test.finetune, ctx, body)
