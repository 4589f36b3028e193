"""Task losses and per-task metrics, written for logits so every algorithm shares them."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

SOFTMAX, SIGMOID, MSE = "softmax", "sigmoid", "mse"


@dataclass(frozen=True)
class TaskLoss:
    """``softmax``: one logit per class; ``sigmoid``: one logit, 2 classes; ``mse``: regression."""

    kind: str

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Per-task metrics, the loss first; also the suffixes of the MLflow metric names."""
        return ("mse",) if self.kind == MSE else ("loss", "acc")

    @property
    def higher_is_better(self) -> bool:
        """Whether the main metric (:attr:`main_metric`) improves upward."""
        return self.kind != MSE

    @property
    def main_metric(self) -> str:
        return self.metric_names[-1]

    def pointwise(self, out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Loss of each example: ``out`` [..., n, k] against ``y`` [..., n] -> [..., n]."""
        if self.kind == SOFTMAX:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32),
                                                                  logits=out)
        if self.kind == SIGMOID:
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(y, out.dtype),
                                                           logits=out[..., 0])
        diff = out - tf.reshape(tf.cast(y, out.dtype), tf.shape(out))
        return tf.reduce_mean(tf.square(diff), axis=-1)

    def loss(self, out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Mean loss of one task's predictions ``out`` [n, k] against targets ``y``."""
        return tf.reduce_mean(self.pointwise(out, y))

    def batch_loss(self, out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Each task's mean loss ([tasks]) of ``out`` [tasks, n, k] against ``y`` [tasks, n]."""
        return tf.reduce_mean(self.pointwise(out, y), axis=-1)

    def metrics(self, out: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """One task's metrics (scalars); :meth:`batch_metrics` for [tasks, ...] inputs."""
        return self.batch_metrics(out, y)

    def batch_metrics(self, out: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per-task metrics over the example axis: [tasks, n, k] -> [tasks] (or [n, k] -> [])."""
        loss = tf.reduce_mean(self.pointwise(out, y), axis=-1)
        if self.kind == MSE:
            return {"mse": loss}
        if self.kind == SOFTMAX:
            pred = tf.argmax(out, axis=-1, output_type=tf.int32)
        else:
            pred = tf.cast(out[..., 0] > 0, tf.int32)
        acc = tf.reduce_mean(tf.cast(tf.equal(pred, tf.cast(y, tf.int32)), out.dtype), axis=-1)
        return {"loss": loss, "acc": acc}


def output_units(kind: str, num_outputs: int) -> int:
    """Width of the model's last layer for a loss kind."""
    return 1 if kind == SIGMOID else num_outputs
