"""The one interface every algorithm implements: meta-train, adapt, evaluate.

An algorithm owns a Keras model (its meta-learned weights) and exposes:

* :meth:`Algorithm.meta_train` - an iterator of ``(first iteration, metrics per iteration)``,
  one item per compiled chunk; episodic learners get it for free by implementing
  :meth:`Algorithm.meta_train_step` (one compiled step on a meta-batch of tasks);
* :meth:`Algorithm.initial_state` - the per-task state before adaptation (stacked weights);
* :meth:`Algorithm.adapt` - the per-task state after learning from the support sets;
* :meth:`Algorithm.evaluate` - per-task query metrics of a state.

States are opaque nests of tensors with a leading task axis; every call handles a whole batch
of tasks at once. What generic code must know about an algorithm (it needs a head, it has an
inner loop, ...) is a class attribute of its config schema (:mod:`pipeline.config.algorithm`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.losses import TaskLoss
from pipeline.config import AlgorithmConfig, MetaTrainConfig
from pipeline.data import FIELDS, TaskSplit
from pipeline.data.episodes import EpisodeSampler, TaskRowSampler
from pipeline.errors import ConfigError
from pipeline.run import checkpoint
from pipeline.run.checkpoint import Checkpoint, Progress

#: What :meth:`Algorithm.meta_train` yields: the chunk's first iteration and each metric's
#: values, one per iteration of the chunk.
Chunk = tuple[int, dict[str, np.ndarray]]


class Batch(NamedTuple):
    """A meta-batch of tasks as tensors with a leading task axis (a ``tf.nest`` structure)."""

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor

    @classmethod
    def of(cls, tasks: TaskSplit | Sequence[Any]) -> Batch:
        """Tensors of a task split (numpy) or of any 4-sequence in :data:`FIELDS` order."""
        if isinstance(tasks, TaskSplit):
            tasks = [getattr(tasks, f) for f in FIELDS]
        return cls(*(tf.convert_to_tensor(t) for t in tasks))


@dataclass
class Context:
    """What an algorithm is built from, besides its own config."""

    model: keras.Model
    loss: TaskLoss
    optimizer: keras.optimizers.Optimizer
    #: Seed for anything the algorithm draws itself (e.g. fresh per-task weights).
    seed: int
    #: XLA-compile the meta-training step (``meta_train.jit_compile``).
    jit_compile: bool = False


class Algorithm(ABC):
    #: False where "before adaptation" means nothing (ProtoNets: no classifier without a support
    #: set); the meta-test then evaluates only the adapted state and logs no ``_before`` metrics.
    has_before: ClassVar[bool] = True

    def __init__(self, cfg: AlgorithmConfig, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx
        self.model = ctx.model
        self.loss = ctx.loss
        self.f = F.FunctionalModel(ctx.model)
        #: Meta-training progress at the last chunk boundary (what a checkpoint records).
        self.progress: Progress | None = None
        self._eval = tf.function(lambda params, x, y: F.evaluate(self.f, self.loss, params, x, y))
        #: The compiled meta-training chunk and episode step, traced once per object (a warm
        #: sweep worker reuses the object for later jobs: :meth:`adopt`).
        self._chunk = None
        self._episode_step = None

    @property
    def name(self) -> str:
        """The configured option (``fomaml`` is :class:`~pipeline.algorithms.maml.MAML`)."""
        return self.cfg.name

    @property
    def meta_learns(self) -> bool:
        return self.cfg.meta_learns

    def total_iterations(self, cfg: MetaTrainConfig) -> int:
        """How many meta-iterations :meth:`meta_train` runs."""
        return cfg.iterations

    # --- meta-training ------------------------------------------------------------------------

    def meta_train(self, train: TaskSplit | EpisodeSampler | TaskRowSampler, cfg: MetaTrainConfig,
                   rng: np.random.Generator, resume: Checkpoint | None = None
                   ) -> Iterator[Chunk]:
        """Episodic meta-training: ``cfg.iterations`` steps on random meta-batches of tasks.

        ``cfg.steps_per_call`` meta-iterations run inside one compiled call (a graph loop over
        pre-sampled task indices), so Python and the host sync once per chunk, not per
        iteration. Each iteration still draws its own meta-batch from ``rng``, so results do
        not depend on the chunk size. With ``resume``, the saved state is restored and training
        continues where it stopped. An episode sampler (families too large to enumerate) draws
        ``meta_batch_size`` fresh episodes per iteration from ``rng`` instead.

        :attr:`progress` is updated before each chunk is yielded: a caller that stops after
        consuming a chunk (and holds signals back meanwhile) checkpoints a consistent state.
        """
        if not self.meta_learns:
            return
        self.build_for_training(cfg)
        start = self.resume_from(resume, rng)
        if isinstance(train, EpisodeSampler | TaskRowSampler):
            yield from self._meta_train_episodes(train, cfg, rng, start)
            return
        batch = min(cfg.meta_batch_size, train.num_tasks)
        if self._chunk is None:
            self._chunk = self._chunk_fn()
        chunk = self._chunk
        lo = start
        while lo < cfg.iterations:
            n = min(cfg.steps_per_call, cfg.iterations - lo)
            if cfg.validate_every:  # a chunk ends at each validation point
                n = min(n, cfg.validate_every - lo % cfg.validate_every)
            idx = np.stack([rng.choice(train.num_tasks, size=batch, replace=False)
                            for _ in range(n)])
            # Only the chunk's meta-batches go to TensorFlow ([n, batch, ...]), so the whole
            # training split is never held twice (numpy and a TensorFlow copy).
            out = chunk(Batch.of([getattr(train, f)[idx] for f in FIELDS]))
            metrics = {k: v.numpy() for k, v in out.items()}
            self.progress = Progress(lo + n, rng.bit_generator.state)
            yield lo, metrics
            lo += n

    def _meta_train_episodes(self, train: EpisodeSampler | TaskRowSampler, cfg: MetaTrainConfig,
                             rng: np.random.Generator, start: int) -> Iterator[Chunk]:
        """One compiled step per iteration on ``meta_batch_size`` freshly sampled episodes."""
        if self._episode_step is None:
            self._episode_step = tf.function(self.meta_train_step, reduce_retracing=True)
        step = self._episode_step
        for it in range(start, cfg.iterations):
            metrics = step(Batch.of(train.sample(rng, cfg.meta_batch_size)))
            self.progress = Progress(it + 1, rng.bit_generator.state)
            yield it, {k: np.atleast_1d(v.numpy()) for k, v in metrics.items()}

    def resume_from(self, resume: Checkpoint | None, rng: np.random.Generator) -> int:
        """Restore a checkpoint (if any) after the training state is built; return the start."""
        start = 0 if resume is None else checkpoint.restore(resume, self.state_variables, rng)
        self.progress = Progress(start, rng.bit_generator.state)
        return start

    @property
    def state_variables(self) -> list:
        """Everything meta-training changes, for checkpoints: meta-parameters, batch-norm
        statistics, the meta-optimizer's variables and :attr:`extra_state`."""
        return [*self.meta_variables, *self.model.non_trainable_variables,
                *self.ctx.optimizer.variables, *self.extra_state]

    @property
    def model_state(self) -> list:
        """What meta-testing uses: the meta-learned variables and batch-norm statistics (not
        the optimizer's), i.e. what model selection keeps of the best-scoring iteration."""
        return [*self.meta_variables, *self.model.non_trainable_variables]

    @property
    def extra_state(self) -> list:
        """Algorithm-specific variables (counters, schedules) that a checkpoint must keep."""
        return []

    @property
    def fed_variables(self) -> list:
        """Variables holding config values (:attr:`AlgorithmConfig.fed_values`) that the
        compiled steps read at run time instead of baking them in as constants."""
        return []

    def _job_state(self) -> list:
        """Every variable a job starts from: the model's (batch-norm statistics and seed
        states included), the meta-parameters, :attr:`extra_state` and :attr:`fed_variables`."""
        seen, out = set(), []
        for v in [*self.model.variables, *self.meta_variables, *self.extra_state,
                  *self.fed_variables]:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def adopt(self, fresh: Algorithm) -> bool:
        """Become ``fresh`` (built for a new job from a config that differs from this one's only
        in :attr:`AlgorithmConfig.fed_values`, the seed and the initial weights) while keeping
        this object's compiled steps: every variable takes ``fresh``'s value, the
        meta-optimizer starts over (step 0, zero slots, ``fresh``'s learning rate), and the
        per-job Python state follows ``fresh``. The job then computes exactly what ``fresh``
        would have, without tracing again. False (nothing changed) if the variables differ."""
        mine, theirs = self._job_state(), fresh._job_state()
        if len(mine) != len(theirs) or any(
                tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype
                for a, b in zip(mine, theirs, strict=True)):
            return False
        opt, new_opt = self.ctx.optimizer, fresh.ctx.optimizer
        rate = getattr(opt, "_learning_rate", None)
        if type(opt) is not type(new_opt) or (
                isinstance(rate, keras.Variable)
                != isinstance(getattr(new_opt, "_learning_rate", None), keras.Variable)):
            return False
        for a, b in zip(mine, theirs, strict=True):
            a.assign(tf.convert_to_tensor(b))
        for v in opt.variables:
            if v is opt.iterations:
                v.assign(0)
            elif v is rate:
                v.assign(tf.convert_to_tensor(new_opt._learning_rate))
            else:
                v.assign(tf.zeros(v.shape, v.dtype))
        self.cfg, self.ctx.seed, self.progress = fresh.cfg, fresh.ctx.seed, None
        return True

    def build_for_training(self, cfg: MetaTrainConfig | None) -> None:
        """Create any state the step needs before it is traced (variables cannot be created
        inside a graph loop): by default, the meta-optimizer's slots."""
        self.ctx.optimizer.build(self.meta_variables)

    @property
    def meta_variables(self) -> list:
        """What the outer loop learns: the model's weights (plus any meta-parameters)."""
        return list(self.model.trainable_variables)

    @property
    def train_metric_names(self) -> tuple[str, ...]:
        """Keys of :meth:`meta_train_step`'s metrics (logged as ``train/<name>``)."""
        return self.loss.metric_names

    def _chunk_fn(self):
        names = self.train_metric_names

        @tf.function(reduce_retracing=True)
        def chunk(batches: Batch):
            n = tf.shape(batches.support_x)[0]
            arrays = {k: tf.TensorArray(tf.float32, size=n) for k in names}

            def body(i, arrays):
                m = self.meta_train_step(Batch(*(b[i] for b in batches)))
                return i + 1, {k: arrays[k].write(i, tf.cast(m[k], tf.float32)) for k in names}

            _, arrays = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), arrays))
            return {k: a.stack() for k, a in arrays.items()}

        return chunk

    def meta_train_step(self, batch: Batch) -> dict[str, tf.Tensor]:
        """One meta-update on a meta-batch of tasks; returns scalar training metrics."""
        raise NotImplementedError(f"{self.name} has no episodic meta-training step")

    # --- meta-testing -------------------------------------------------------------------------

    def initial_state(self, task_ids: np.ndarray) -> Any:
        """Per-task state before adaptation: the meta-learned weights, one copy per task."""
        return F.tile(self.f.params(), len(task_ids))

    @abstractmethod
    def adapt(self, state: Any, support_x: tf.Tensor, support_y: tf.Tensor) -> Any:
        """Per-task state after learning from each task's support set."""

    def adapt_steps(self, state: Any, support_x: tf.Tensor, support_y: tf.Tensor,
                    steps: int) -> Any:
        """Per-task state after exactly ``steps`` inner steps (``meta_test.eval_steps``)."""
        raise ConfigError(f"algorithm={self.name} has no inner steps to vary: set "
                          f"meta_test.eval_steps=[] (got a request for {steps} steps).")

    def predict(self, state: Any, x: tf.Tensor) -> np.ndarray:
        """Per-task model outputs [tasks, n, ...] of ``state`` on ``x`` (for plots)."""
        return self.f.batched(state, x).numpy()

    def evaluate(self, state: Any, x: tf.Tensor, y: tf.Tensor) -> dict[str, np.ndarray]:
        """Per-task metrics of ``state`` on ``(x, y)``, each an array of shape [tasks]."""
        return {k: v.numpy() for k, v in self._eval(state, x, y).items()}
