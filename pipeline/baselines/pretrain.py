"""Supervised pre-training of the run's backbone on the training split, for the ``finetune`` and
``linear_probe`` baselines (Chen et al. 2019; Tian et al. 2020; Finn et al. 2017's sinusoid
"pretrained" network).

How depends on the family (``DataConfig.pretraining``):

* ``classes`` (Omniglot, image folders): one classifier over every training class, a class
  being a (character, rotation) pair as the family's episodes draw them;
* ``multitask`` (synthetic, notebook, tabular): labels are each task's own, so a shared body
  with one linear head per training task;
* ``joint`` (sinusoid): one network, one head, fitted to every training task's points.

Only the training split is read: never the validation or test tasks. The body is cached under
``paths.data_dir``/pretrained, keyed by what determines it (data fingerprint, model config,
pre-training config and budget, seed), so a sweep over meta-learning settings pre-trains once;
concurrent jobs wait on a file lock instead of pre-training twice.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.algorithms.losses import SOFTMAX, TaskLoss, output_units
from pipeline.config import Config, PretrainConfig
from pipeline.config.fields import PRETRAIN_CLASSES, PRETRAIN_JOINT, PRETRAIN_MULTITASK
from pipeline.config.run import pretrain_batch_size
from pipeline.data import TaskSet, TaskSplit, derive_seed, stream_rng
from pipeline.data.episodes import EpisodeSampler, TaskRowSampler, _images
from pipeline.errors import DataError
from pipeline.models import build_model

log = logging.getLogger(__name__)

#: Bumped when what a cached body means changes (the training procedure), so old files are
#: not served for new code.
FORMAT = 1
CACHE_DIR = "pretrained"
#: Training tasks per step of multi-task pre-training (at most).
TASKS_PER_STEP = 32
#: At most this many bytes of input batches drawn for one compiled call: ``steps_per_call``
#: steps of 128 images of 84x84x3 would be 2 GiB of float32 held at once.
CHUNK_BYTES = 256 * 2**20


@dataclass
class Pretrained:
    """A pre-trained body (the model without its head: it outputs the embedding)."""

    body: keras.Model
    #: Training examples the pre-training saw, and its wall time when it ran (a cached body
    #: keeps the time it took then).
    examples: int
    seconds: float
    cached: bool
    path: Path | None
    key: dict


@dataclass
class Examples:
    """Every training example a pre-training samples from: inputs, the head each one is scored
    by (its task; 0 for one shared head) and its target."""

    x: np.ndarray | None
    head: np.ndarray
    y: np.ndarray
    heads: int
    units: int
    loss: TaskLoss
    #: Classes mode: the sampler whose pool makes images on demand (``x`` is None).
    sampler: EpisodeSampler | None = None

    @property
    def count(self) -> int:
        return int(self.y.shape[0])

    def tasks_per_step(self, batch: int) -> int:
        """Several heads: each step draws this many tasks and ``batch // tasks`` examples of
        each, so a head is gathered once per task, not once per example (a quarter less CPU
        on the synthetic default)."""
        return min(self.heads, TASKS_PER_STEP, batch) if self.heads > 1 else 1

    def batches(self, rng: np.random.Generator, steps: int, batch: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``steps`` batches drawn uniformly with replacement: ``[steps, batch, ...]`` each,
        or with several heads ``[steps, tasks, batch // tasks, ...]`` (heads ``[steps,
        tasks]``); examples are stored grouped by head."""
        if self.heads > 1:
            tasks = self.tasks_per_step(batch)
            counts = np.bincount(self.head, minlength=self.heads)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            head = rng.integers(0, self.heads, size=(steps, tasks))
            offset = (rng.random((steps, tasks, batch // tasks)) * counts[head][..., None])
            idx = starts[head][..., None] + offset.astype(np.int64)
            return self.x[idx], head, self.y[idx]
        idx = rng.integers(0, self.count, size=(steps, batch))
        if self.sampler is None:
            x = self.x[idx]
        else:
            s = self.sampler
            sizes = (np.full(s.pool.shape[0], s.pool.shape[1]) if s.class_sizes is None
                     else np.asarray(s.class_sizes))
            cls, rot = np.divmod(idx, len(s.rotations))  # label = class * rotations + rotation
            ex = (rng.random(idx.shape) * sizes[cls]).astype(np.int64)
            x = _images(s.pool, s.class_sizes, s.rotations, cls, ex, rot)
        return x, self.head[idx], self.y[idx]


def examples(tasks: TaskSet, mode: str, loss: TaskLoss) -> Examples:
    """The training split as examples for ``mode`` (never the validation or test split)."""
    train = tasks.train
    if mode == PRETRAIN_CLASSES:
        if not isinstance(train, EpisodeSampler):
            raise DataError(f"pre-training over classes needs a pool of training classes; this "
                            f"family's training split is a {type(train).__name__}.")
        labels = np.arange(train.num_classes, dtype=np.int64)  # class * rotations + rotation
        return Examples(None, np.zeros_like(labels), labels, 1, train.num_classes,
                        TaskLoss(SOFTMAX), sampler=train)
    if isinstance(train, TaskRowSampler):
        x, y = train.rows, train.targets
        task = np.repeat(np.arange(train.num_tasks), train.class_sizes.sum(axis=1))
        if train.standardize is not None:  # as episodes are: by the task's own rows
            x = _standardize_per_task(x, task, train.standardize)
        heads = train.num_tasks
    elif isinstance(train, TaskSplit):
        x = np.concatenate([train.support_x, train.query_x], axis=1)
        y = np.concatenate([train.support_y, train.query_y], axis=1)
        task = np.repeat(np.arange(train.num_tasks), x.shape[1])
        x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
        heads = train.num_tasks
    else:
        raise DataError(f"multi-task pre-training needs fixed training tasks; this family's "
                        f"training split is a {type(train).__name__}.")
    if mode == PRETRAIN_JOINT:
        task, heads = np.zeros_like(task), 1
    units = output_units(loss.kind, tasks.num_outputs)
    return Examples(x, task.astype(np.int64), y, heads, units, loss)


def _standardize_per_task(x: np.ndarray, task: np.ndarray, columns: np.ndarray) -> np.ndarray:
    x = x.copy()
    for t in np.unique(task):
        rows = task == t
        block = x[np.ix_(rows, columns)]
        sd = block.std(axis=0)
        x[np.ix_(rows, columns)] = (block - block.mean(axis=0)) / np.where(sd > 1e-6, sd, 1.0)
    return x


def _per_task(train) -> int:
    """A training task's examples: support + query (episodes: n_way x (k_shot + q_query))."""
    if isinstance(train, TaskSplit):
        return int(train.support_x.shape[1] + train.query_x.shape[1])
    return train.n_way * (train.k_shot + train.q_query)


def examples_per_iteration(cfg: Config, tasks: TaskSet) -> int:
    """One meta-iteration's training examples: meta-batch x (support + query) per task."""
    train = tasks.train
    batch = cfg.meta_train.meta_batch_size
    if isinstance(train, TaskSplit):
        batch = min(batch, train.num_tasks)
    return batch * _per_task(train)


def meta_training_examples(cfg: Config, tasks: TaskSet) -> int:
    """How many training examples the run's meta-training sees: meta-iterations x one
    iteration's examples, or epochs x the split for an algorithm that trains in epochs."""
    if not cfg.algorithm.meta_batches:
        return int(getattr(cfg.algorithm, "epochs", 1) * _per_task(tasks.train)
                   * tasks.train.num_tasks)
    return int(cfg.meta_train.iterations * examples_per_iteration(cfg, tasks))


def steps_per_call(configured: int, batch: int, input_shape: tuple[int, ...]) -> int:
    """``meta_test.pretrain.steps_per_call``, fewer where their inputs would pass
    :data:`CHUNK_BYTES` (images)."""
    per_step = 4 * batch * math.prod(input_shape)
    return max(1, min(configured, CHUNK_BYTES // max(per_step, 1)))


def cache_key(cfg: Config, tasks: TaskSet, mode: str, budget: int, ex: Examples) -> dict:
    """Everything that determines the pre-trained body (and nothing that does not)."""
    pretrain = dataclasses.asdict(cfg.meta_test.pretrain)
    pretrain.pop("cache")
    pretrain["batch_size"] = pretrain_batch_size(  # null resolved: a meta-iteration's
        cfg, examples_per_iteration(cfg, tasks))
    pretrain["steps_per_call"] = steps_per_call(pretrain["steps_per_call"],
                                                pretrain["batch_size"], tasks.input_shape)
    model = dataclasses.asdict(cfg.model)
    model.pop("init_from")  # the body always starts from its own seeded draw
    return {"format": FORMAT, "data_fingerprint": tasks.fingerprint, "family": cfg.data.family,
            "mode": mode, "model": model, "pretrain": pretrain, "examples": budget,
            "seed": cfg.seed, "input_shape": list(tasks.input_shape), "heads": ex.heads,
            "units": ex.units, "loss": ex.loss.kind}


def cache_path(data_dir: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data_dir) / CACHE_DIR / f"{key['family']}-{key['mode']}-{digest}.npz"


def run(cfg: Config, tasks: TaskSet, loss: TaskLoss) -> Pretrained:
    """The pre-trained body for this run: from the cache if there, else trained (and cached)."""
    pcfg = cfg.meta_test.pretrain
    mode = cfg.data.pretraining
    if mode == PRETRAIN_CLASSES and not isinstance(tasks.train, EpisodeSampler):
        mode = PRETRAIN_MULTITASK  # fixed training episodes (data.num_train_tasks > 0): their
        # labels are the episode's own, so one head per episode
    ex = examples(tasks, mode, loss)
    budget = pcfg.examples or meta_training_examples(cfg, tasks)
    key = cache_key(cfg, tasks, mode, budget, ex)
    body = build_model(cfg.model, tasks.input_shape, None, derive_seed(cfg.seed, "pretrain"))
    train = dataclasses.replace(pcfg, batch_size=key["pretrain"]["batch_size"],
                                steps_per_call=key["pretrain"]["steps_per_call"])
    if not pcfg.cache:
        seconds = _train(body, ex, train, budget, cfg.seed)
        return Pretrained(body, budget, seconds, False, None, key)
    path = cache_path(cfg.paths.data_dir, key)
    with _locked(path):  # parallel jobs of a sweep: one trains, the others wait and load
        if path.exists():
            seconds = _load(path, body, key)
            log.info("pre-trained body: cache hit %s (%d examples, trained in %.1f s)",
                     path, budget, seconds)
            return Pretrained(body, budget, seconds, True, path, key)
        log.info("pre-trained body: cache miss, pre-training (%s, %d examples) -> %s", mode,
                 budget, path)
        seconds = _train(body, ex, train, budget, cfg.seed)
        _save(path, body, key, seconds)
    return Pretrained(body, budget, seconds, False, path, key)


def _train(body: keras.Model, ex: Examples, cfg: PretrainConfig, budget: int, seed: int) -> float:
    """Minibatch training of body + heads, ``cfg.steps_per_call`` steps per compiled call
    (``cfg``'s batch size and steps per call resolved)."""
    start = time.perf_counter()
    rng = stream_rng(seed, "pretrain")
    embed = int(body.output_shape[-1])
    init = keras.initializers.GlorotUniform(seed=derive_seed(seed, "pretrain"))
    w = tf.Variable(tf.stack([init((embed, ex.units)) for _ in range(ex.heads)]), name="heads")
    b = tf.Variable(tf.zeros((ex.heads, ex.units)), name="head_biases")
    variables = [*body.trainable_variables, w, b]
    opt = (keras.optimizers.Adam(cfg.learning_rate) if cfg.optimizer == "adam"
           else keras.optimizers.SGD(cfg.learning_rate))
    opt.build(variables)
    shared_head = ex.heads == 1

    def step(x, head, y):
        with tf.GradientTape() as tape:
            if shared_head:
                out = tf.linalg.matmul(body(x, training=True), w[0]) + b[0]
            else:  # x [tasks, examples, ...]: each task's examples through its own head
                e = body(tf.reshape(x, [-1, *x.shape[2:]]), training=True)
                e = tf.reshape(e, [tf.shape(x)[0], tf.shape(x)[1], embed])
                out = (tf.einsum("tne,teu->tnu", e, tf.gather(w, head))
                       + tf.gather(b, head)[:, None])
            value = tf.reduce_mean(ex.loss.pointwise(out, y))
        opt.apply_gradients(zip(tape.gradient(value, variables), variables, strict=True))
        return value

    def chunk(xs, heads, ys):  # an explicit graph loop over a call's steps
        n = tf.shape(xs)[0]

        def loop(i, total):
            return i + 1, total + step(xs[i], heads[i], ys[i])

        _, total = tf.while_loop(lambda i, _: i < n, loop, (tf.constant(0), tf.constant(0.0)))
        return total / tf.cast(n, tf.float32)

    per_step = cfg.batch_size // ex.tasks_per_step(cfg.batch_size) * ex.tasks_per_step(
        cfg.batch_size)
    steps = max(1, math.ceil(budget / per_step))
    done, last, compiled = 0, math.nan, None
    while done < steps:
        n = min(cfg.steps_per_call, steps - done)
        x, head, y = ex.batches(rng, n, cfg.batch_size)
        if compiled is None:  # one trace, whatever the steps in a call (the last is shorter)
            compiled = tf.function(chunk, autograph=False, input_signature=[
                tf.TensorSpec([None, *x.shape[1:]], tf.float32),
                tf.TensorSpec([None, *head.shape[1:]], tf.int64),
                tf.TensorSpec([None, *y.shape[1:]], tf.as_dtype(y.dtype))])
        last = float(compiled(tf.convert_to_tensor(x, tf.float32), tf.constant(head),
                              tf.convert_to_tensor(y)))
        done += n
    seconds = time.perf_counter() - start
    log.info("pre-trained %d steps of %d examples in %.1f s (last chunk's loss %.4f)", steps,
             per_step, seconds, last)
    return seconds


def _save(path: Path, body: keras.Model, key: dict, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    weights = {f"w{i:03d}": w for i, w in enumerate(body.get_weights())}
    meta = {"key": key, "seconds": seconds}
    np.savez(tmp, **weights, meta=np.array(json.dumps(meta, sort_keys=True)))
    tmp.replace(path)


def _load(path: Path, body: keras.Model, key: dict) -> float:
    """Load a cached body into ``body``; refuse one made from anything else than ``key``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            weights = [f[k] for k in sorted(k for k in f.files if k != "meta")]
    except Exception as e:
        raise DataError(f"Pre-trained body {path} is unreadable or corrupt ({e}). Delete it to "
                        f"pre-train again.") from e
    stored = json.loads(json.dumps(meta.get("key", {})))
    wanted = json.loads(json.dumps(key))
    if stored != wanted:
        diff = [f"{k}={stored.get(k)!r} (this run: {wanted.get(k)!r})"
                for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
        raise DataError(f"Pre-trained body {path} was trained on other data or settings: "
                        f"{'; '.join(diff)}. It is not used; delete it to pre-train again.")
    shapes = [tuple(w.shape) for w in body.get_weights()]
    if shapes != [tuple(w.shape) for w in weights]:
        raise DataError(f"Pre-trained body {path} holds weights of other shapes than the "
                        f"configured model's; delete it to pre-train again.")
    body.set_weights(weights)
    return float(meta.get("seconds", math.nan))


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
