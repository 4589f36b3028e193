"""The ``linear_probe`` baseline (Tian et al. 2020): the frozen pre-trained body embeds each
test task's support and query sets, and scikit-learn's ``LogisticRegression`` fitted on the
support embeddings classifies the queries (regression: ``Ridge``). Nothing is trained by
gradient at test time."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms.base import Algorithm, Context
from pipeline.algorithms.losses import MSE, SIGMOID, TaskLoss
from pipeline.config import LinearProbeConfig
from pipeline.config.algorithm import ScratchConfig
from pipeline.tracking.keys import LINEAR_PROBE

#: log of the probability given to a class the support set did not have (never in N-way
#: episodes, which hold every class).
_ABSENT = np.log(1e-12)


@dataclass
class ProbeAlgorithmConfig(ScratchConfig):
    """What generic meta-test code reads of an algorithm's config (not a Hydra option)."""

    meta_learns: ClassVar[bool] = False
    name: str = LINEAR_PROBE


class LinearProbe(Algorithm):
    #: No classifier exists before the support set is seen.
    has_before = False

    def __init__(self, cfg: LinearProbeConfig, body: keras.Model, loss: TaskLoss,
                 num_classes: int):
        super().__init__(ProbeAlgorithmConfig(), Context(model=body, loss=loss,
                                                         optimizer=keras.optimizers.SGD(),
                                                         seed=0))
        self.probe = cfg
        self.num_classes = num_classes
        self._embed = tf.function(lambda x: body(x, training=False), reduce_retracing=True)

    def embed(self, x: tf.Tensor) -> np.ndarray:
        """Per-task embeddings [tasks, n, features], each task's set embedded on its own (as
        the method sees it: batch statistics, where the model uses them, are the task's)."""
        out = np.stack([self._embed(x[t]).numpy() for t in range(x.shape[0])])
        if self.probe.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return out.astype(np.float64)

    def initial_state(self, task_ids: np.ndarray):
        return None

    def adapt(self, state, support_x, support_y):
        from sklearn.exceptions import ConvergenceWarning  # here: only runs that probe pay
        from sklearn.linear_model import LogisticRegression, Ridge

        emb, y = self.embed(support_x), support_y.numpy()
        fitted = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for t in range(emb.shape[0]):
                if self.loss.kind == MSE:
                    model = Ridge(alpha=1.0 / self.probe.C)
                    model.fit(emb[t], y[t].reshape(len(emb[t]), -1))
                else:
                    model = LogisticRegression(C=self.probe.C, max_iter=self.probe.max_iter,
                                               random_state=0)
                    model.fit(emb[t], y[t].reshape(-1).astype(np.int64))
                fitted.append(model)
        return fitted

    def _outputs(self, model, emb: np.ndarray, units: int) -> np.ndarray:
        """What the task loss scores: log-probabilities as logits (softmax), the log-odds of
        class 1 (sigmoid), predictions (regression)."""
        if self.loss.kind == MSE:
            return model.predict(emb).reshape(len(emb), -1)
        logp = np.full((len(emb), units), _ABSENT)
        logp[:, model.classes_] = np.log(np.clip(model.predict_proba(emb), 1e-12, None))
        if self.loss.kind == SIGMOID:
            return (logp[:, 1] - logp[:, 0])[:, None]
        return logp

    def evaluate(self, state, x: tf.Tensor, y: tf.Tensor) -> dict[str, np.ndarray]:
        emb = self.embed(x)
        out = np.stack([self._outputs(m, e, self.num_classes)
                        for m, e in zip(state, emb, strict=True)])
        return {k: v.numpy() for k, v in
                self.loss.batch_metrics(tf.constant(out, tf.float32), y).items()}


def build(cfg: LinearProbeConfig, body: keras.Model, loss: TaskLoss,
          num_outputs: int) -> LinearProbe:
    return LinearProbe(cfg, body, loss, 2 if loss.kind == SIGMOID else num_outputs)
