"""Prototypical networks (Snell et al., 2017): meta-learn an embedding where classes cluster.

A task's *prototypes* are the mean embeddings of its support examples, one per class; a query's
logits are its negative squared Euclidean distances to them, trained with softmax cross-entropy.
The embedding is the configured model without its head (``build_model(..., None)``): conv4's 64
flattened features, or an MLP's last hidden layer. Adaptation is the prototype computation, so
the per-task state after adaptation is ``[tasks, classes, dim]`` prototypes; there is no state
*before* adaptation (:attr:`has_before` is False) and the meta-test logs only ``_after`` metrics.

Batch norm: support and query sets are embedded as separate batches, at meta-training and
meta-test alike, so ``batch_norm=transductive`` means the same thing in both. With
``batch_norm=running`` the running statistics are updated from every episode of a meta-step
(support pass, then query pass; averaged over the meta-batch) and queries and supports are
embedded with them at meta-test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from pipeline.algorithms import conv4_batched
from pipeline.algorithms.base import Algorithm, Batch, Context
from pipeline.algorithms.losses import MSE, SOFTMAX, TaskLoss
from pipeline.config import ProtoNetConfig
from pipeline.errors import ConfigError


def prototypes(emb: tf.Tensor, labels: tf.Tensor, num_classes: tf.Tensor) -> tf.Tensor:
    """Class means of support embeddings: [tasks, support, dim] -> [tasks, classes, dim]."""
    onehot = tf.one_hot(labels, num_classes, dtype=emb.dtype)
    sums = tf.einsum("tsc,tsd->tcd", onehot, emb)
    return sums / tf.reduce_sum(onehot, axis=1)[..., None]


def logits(protos: tf.Tensor, emb: tf.Tensor) -> tf.Tensor:
    """Negative squared Euclidean distances: [tasks, query, dim] x [tasks, classes, dim]."""
    diff = emb[:, :, None, :] - protos[:, None, :, :]
    return -tf.reduce_sum(tf.square(diff), axis=-1)


class ProtoNet(Algorithm):
    has_before = False
    cfg: ProtoNetConfig

    def __init__(self, cfg: ProtoNetConfig, ctx: Context):
        if ctx.loss.kind == MSE:
            raise ConfigError("algorithm=protonet classifies by nearest class prototype and needs "
                              "classification data; this data family is regression. Choose "
                              "another algorithm (e.g. maml) or a classification family.")
        # The loss is always softmax over prototype distances, whatever head the config names.
        ctx = dataclasses.replace(ctx, loss=TaskLoss(SOFTMAX))
        super().__init__(cfg, ctx)
        self._step = tf.function(self._apply_step, jit_compile=ctx.jit_compile)
        self._adapt = tf.function(lambda sx, sy: prototypes(
            self._embed(self.f.params(), sx, False)[0], sy, self._ways(sy)))
        self._score = tf.function(self._metrics)
        self._query_emb = tf.function(lambda x: self._embed(self.f.params(), x, False)[0])

    @staticmethod
    def _ways(labels: tf.Tensor) -> tf.Tensor:
        return tf.reduce_max(labels) + 1

    def _embed(self, params, x, training: bool, state=None):
        """Embeddings of every task's batch (per-task batch statistics) and per-task BN state.

        The state is only tracked in training mode with running statistics; otherwise the model's
        own (running or absent) statistics are used and no state is returned. A conv4 embeds all
        tasks' images with plain convolutions at once (batch statistics still per task).
        """
        if self.f.conv4 is not None:
            moving = [v.value for v in self.model.non_trainable_variables]
            return conv4_batched.shared_features(self.f.conv4, params, x, training, moving,
                                                 state, track=True)
        if not (training and self.f.has_state):
            return tf.vectorized_map(lambda xi: self.f(params, xi, training), x), []
        if state is None:
            state = [v.value for v in self.model.non_trainable_variables]

        def one(args):
            xi, si = args
            return self.f.call_with_state(params, xi, training, si)

        # Each task starts from the shared running statistics (tiled) or from its own update.
        if state[0].shape.rank == self.model.non_trainable_variables[0].shape.rank:
            state = [tf.repeat(s[None], tf.shape(x)[0], axis=0) for s in state]
        return tf.vectorized_map(one, (x, state))

    def _metrics(self, protos, emb, y):
        return tf.vectorized_map(lambda a: self.loss.metrics(a[0], a[1]),
                                 (logits(protos, emb), y))

    def _apply_step(self, batch: Batch):
        sx, sy, qx, qy = batch
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            params = self.f.params()
            s_emb, state = self._embed(params, sx, True)
            q_emb, state = self._embed(params, qx, True, state or None)
            per_task = self._metrics(prototypes(s_emb, sy, self._ways(sy)), q_emb, qy)
            meta_loss = tf.reduce_mean(per_task["loss"])
        grads = tape.gradient(meta_loss, variables)
        self.ctx.optimizer.apply_gradients(zip(grads, variables, strict=True))
        if state:
            self.f.assign_state(state)
        return {k: tf.reduce_mean(v) for k, v in per_task.items()}

    def meta_train_step(self, batch: Batch):
        return self._step(Batch.of(batch))

    def initial_state(self, task_ids) -> None:
        return None

    def adapt(self, state: Any, support_x: tf.Tensor, support_y: tf.Tensor) -> tf.Tensor:
        """The prototypes of every task's support set."""
        return self._adapt(support_x, support_y)

    def evaluate(self, state: tf.Tensor, x: tf.Tensor, y: tf.Tensor):
        """Per-task query metrics against the prototypes in ``state``."""
        return {k: v.numpy() for k, v in self._score(state, self._query_emb(x), y).items()}
