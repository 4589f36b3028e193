"""The original notebook's procedure, as a baseline and negative control.

For each epoch, for each training task in turn: one epoch of minibatch training on all of the
task's samples (Keras ``fit(epochs=1, batch_size=32)``, shuffled). At test time the model is used
as trained, or fine-tuned on each support set if ``finetune_steps > 0``. One compiled graph runs
a whole epoch, so it matches ``fit`` step for step without ``fit``'s per-call overhead.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Algorithm, Context
from pipeline.config import MetaTrainConfig, NotebookAlgorithmConfig
from pipeline.data import TaskSplit
from pipeline.run.checkpoint import Checkpoint, Progress


class Notebook(Algorithm):
    cfg: NotebookAlgorithmConfig

    def __init__(self, cfg: NotebookAlgorithmConfig, ctx: Context):
        super().__init__(cfg, ctx)
        self._adapt = tf.function(lambda s, x, y: F.finetune(
            self.f, self.loss, s, x, y, cfg.finetune_steps, cfg.finetune_lr,
            cfg.finetune_optimizer))

    def _epoch_fn(self, x: tf.Tensor, y: tf.Tensor):
        model, opt, loss, bs = self.model, self.ctx.optimizer, self.loss, self.cfg.batch_size
        num_tasks, n = x.shape[0], x.shape[1]
        num_batches = -(-n // bs)

        @tf.function
        def epoch(seed):
            total, count = tf.constant(0.0), tf.constant(0.0)
            for t in tf.range(num_tasks):
                order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=[seed, t])
                for b in tf.range(num_batches):
                    idx = order[b * bs: tf.minimum((b + 1) * bs, n)]
                    xb, yb = tf.gather(x[t], idx), tf.gather(y[t], idx)
                    with tf.GradientTape() as tape:
                        value = loss.loss(model(xb, training=True), yb)
                    grads = tape.gradient(value, model.trainable_variables)
                    opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
                    total += tf.cast(value, tf.float32)
                    count += 1.0
            return {loss.metric_names[0]: total / count}

        return epoch

    def total_iterations(self, cfg: MetaTrainConfig) -> int:
        return self.cfg.epochs

    def meta_train(self, train: TaskSplit, cfg: MetaTrainConfig, rng: np.random.Generator,
                   resume: Checkpoint | None = None):
        """Yields once per epoch; ``meta_train.iterations`` does not apply (``epochs`` does)."""
        x = tf.constant(np.concatenate([train.support_x, train.query_x], axis=1))
        y = tf.constant(np.concatenate([train.support_y, train.query_y], axis=1))
        epoch = self._epoch_fn(x, y)
        self.ctx.optimizer.build(self.model.trainable_variables)
        for e in range(self.resume_from(resume, rng), self.cfg.epochs):
            metrics = epoch(tf.constant(int(rng.integers(2**31)), dtype=tf.int32))
            self.progress = Progress(e + 1, rng.bit_generator.state)
            yield e, {k: np.atleast_1d(v.numpy()) for k, v in metrics.items()}

    def adapt(self, state, support_x, support_y):
        return self._adapt(state, support_x, support_y)
