"""The no-meta-learning baseline: every test task trains a fresh model on its support set.

Each task gets its own initialisation (seeded by the task index, so results do not depend on
how tasks are batched), then ``steps`` full-batch steps of SGD or Adam, all tasks at once.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Algorithm, Context
from pipeline.config import ScratchConfig
from pipeline.models import fresh_weights


class Scratch(Algorithm):
    cfg: ScratchConfig

    def __init__(self, cfg: ScratchConfig, ctx: Context):
        super().__init__(cfg, ctx)
        self._adapt = tf.function(lambda s, x, y: F.finetune(
            self.f, self.loss, s, x, y, cfg.steps, cfg.learning_rate, cfg.optimizer))

    def initial_state(self, task_ids: np.ndarray):
        inits = [fresh_weights(self.model, self.ctx.seed + int(t)) for t in task_ids]
        return [tf.stack(ws) for ws in zip(*inits, strict=True)]

    def adapt(self, state, support_x, support_y):
        return self._adapt(state, support_x, support_y)
