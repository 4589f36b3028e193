"""The one interface every algorithm implements: meta-train, adapt, evaluate.

An algorithm owns a Keras model (its meta-learned weights) and exposes:

* :meth:`Algorithm.meta_train` - an iterator of ``(iteration, metrics)`` over meta-training;
  episodic learners get it for free by implementing :meth:`Algorithm.meta_train_step` (one
  compiled step on a meta-batch of tasks);
* :meth:`Algorithm.initial_state` - the per-task state before adaptation (stacked weights);
* :meth:`Algorithm.adapt` - the per-task state after learning from the support sets;
* :meth:`Algorithm.evaluate` - per-task query metrics of a state.

States are opaque nests of tensors with a leading task axis; every call handles a whole batch
of tasks at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.config import AlgorithmConfig, MetaTrainConfig
from pipeline.data import FIELDS, TaskSplit
from pipeline.data.episodes import EpisodeSampler
from pipeline.losses import TaskLoss


@dataclass
class Context:
    """What an algorithm is built from, besides its own config."""

    model: keras.Model
    loss: TaskLoss
    optimizer: keras.optimizers.Optimizer
    #: Seed for anything the algorithm draws itself (e.g. fresh per-task weights).
    seed: int


class Algorithm(ABC):
    name: ClassVar[str]
    #: False for baselines that learn nothing before meta-test.
    meta_learns: ClassVar[bool] = True
    #: False where "before adaptation" means nothing (ProtoNets: no classifier without a support
    #: set); the meta-test then evaluates only the adapted state and logs no ``_before`` metrics.
    has_before: ClassVar[bool] = True

    def __init__(self, cfg: AlgorithmConfig, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx
        self.model = ctx.model
        self.loss = ctx.loss
        self.f = F.FunctionalModel(ctx.model)
        self._eval = tf.function(lambda params, x, y: F.evaluate(self.f, self.loss, params, x, y))

    # --- meta-training ------------------------------------------------------------------------

    def meta_train(self, train: TaskSplit | EpisodeSampler, cfg: MetaTrainConfig,
                   rng: np.random.Generator) -> Iterator[tuple[int, dict[str, float]]]:
        """Episodic meta-training: ``cfg.iterations`` steps on random meta-batches of tasks.

        Fixed tasks are drawn without replacement within a meta-batch; an episode sampler draws
        ``meta_batch_size`` fresh episodes per step. Either way ``rng`` decides every draw.
        """
        if not self.meta_learns:
            return
        if isinstance(train, EpisodeSampler):
            for it in range(cfg.iterations):
                batch = train.sample(rng, cfg.meta_batch_size)
                yield it, self.meta_train_step(*(tf.constant(getattr(batch, f)) for f in FIELDS))
            return
        data = [tf.constant(getattr(train, f)) for f in ("support_x", "support_y", "query_x",
                                                         "query_y")]
        batch = min(cfg.meta_batch_size, train.num_tasks)
        # Gathering the meta-batch inside the compiled call saves four eager ops per iteration.
        step = tf.function(lambda idx: self.meta_train_step(*(tf.gather(d, idx) for d in data)))
        for it in range(cfg.iterations):
            yield it, step(rng.choice(train.num_tasks, size=batch, replace=False))

    def meta_train_step(self, sx, sy, qx, qy) -> dict[str, tf.Tensor]:
        """One meta-update on a meta-batch of tasks; returns scalar training metrics."""
        raise NotImplementedError(f"{self.name} has no episodic meta-training step")

    # --- meta-testing -------------------------------------------------------------------------

    def initial_state(self, task_ids: np.ndarray) -> Any:
        """Per-task state before adaptation: the meta-learned weights, one copy per task."""
        return F.tile(self.f.params(), len(task_ids))

    @abstractmethod
    def adapt(self, state: Any, support_x: tf.Tensor, support_y: tf.Tensor) -> Any:
        """Per-task state after learning from each task's support set."""

    def evaluate(self, state: Any, x: tf.Tensor, y: tf.Tensor) -> dict[str, np.ndarray]:
        """Per-task metrics of ``state`` on ``(x, y)``, each an array of shape [tasks]."""
        return {k: v.numpy() for k, v in self._eval(state, x, y).items()}
