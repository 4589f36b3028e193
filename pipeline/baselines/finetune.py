"""The ``finetune`` baseline (Chen et al. 2019's "Baseline"): the pre-trained body with a new
head, every weight trained on each test task's support set with the scratch baseline's steps,
rate and optimizer, so the two differ only in where the body starts."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Algorithm, Context
from pipeline.algorithms.losses import TaskLoss, output_units
from pipeline.config import Config, ScratchConfig
from pipeline.data import TaskSet, derive_seed
from pipeline.models import HEAD, build_model
from pipeline.tracking.keys import FINETUNE


class Finetune(Algorithm):
    cfg: ScratchConfig

    def __init__(self, cfg: ScratchConfig, ctx: Context, body: keras.Model):
        super().__init__(dataclasses.replace(cfg, name=FINETUNE), ctx)
        for src, dst in zip(body.layers, ctx.model.layers[:-1], strict=True):
            dst.set_weights(src.get_weights())
        head = ctx.model.get_layer(HEAD)
        self._head_ids = [i for i, v in enumerate(ctx.model.trainable_variables)
                          if any(v is w for w in head.trainable_variables)]
        self._head_init = keras.initializers.get(head.kernel_initializer).get_config()
        self._head_init_cls = type(keras.initializers.get(head.kernel_initializer))
        self._adapt = tf.function(lambda s, x, y: F.finetune(
            self.f, self.loss, s, x, y, cfg.steps, cfg.learning_rate, cfg.optimizer))

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


def build(cfg: Config, tasks: TaskSet, loss: TaskLoss, body: keras.Model) -> Finetune:
    units = output_units(loss.kind, tasks.num_outputs)
    model = build_model(cfg.model, tasks.input_shape, units, derive_seed(cfg.seed, "init"))
    ctx = Context(model=model, loss=loss, optimizer=keras.optimizers.SGD(),
                  seed=derive_seed(cfg.seed, "baselines"))
    return Finetune(cfg.meta_test.scratch, ctx, body)
