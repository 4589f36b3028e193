"""Classification tasks with shared structure, so that learning to learn pays.

Generative process (all randomness from the data seed):

1. A shared nonlinear feature map, fixed for the whole family::

       phi(x) = tanh(s * A2 @ tanh(s * A1 @ x / sqrt(F)) / sqrt(H)),   A1, A2 ~ N(0, 1)

   with ``F = num_features`` inputs, ``H = 4 * latent_dim`` hidden units, ``s = map_scale``,
   and ``latent_dim`` outputs.
2. A shared prior over task rules: ``W0 ~ N(0, 1)`` of shape [latent_dim, num_classes].
3. Each task t draws its own rule ``W_t = W0 + task_diversity * E_t`` with ``E_t ~ N(0, 1)``.
4. Inputs ``x ~ N(0, I_F)``; logits ``z = phi(x) W_t + b_t`` where ``b_t`` centres each class's
   logit over the task's pool of inputs; label ``y = argmax_c z_c``. Each task keeps
   ``samples_per_task`` points with classes as balanced as possible.
5. Label noise: each label is replaced by a uniformly random class with probability
   ``label_noise``.

A learner that has extracted ``phi`` and ``W0`` from the training tasks only has to fit a small
linear rule from ``k_shot`` examples per class; a learner starting from scratch must also learn
the nonlinear map from those few examples, which it cannot.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import ConfigError
from pipeline.data import CLASSIFICATION, TaskSplit, split_support_query

_POOL_FACTOR = 20  # candidate inputs drawn per kept sample, so every class can be filled
_MAX_TRIES = 20


def _feature_map(rng: np.random.Generator, f: int, latent: int, scale: float):
    hidden = 4 * latent
    a1 = rng.standard_normal((f, hidden))
    a2 = rng.standard_normal((hidden, latent))

    def phi(x: np.ndarray) -> np.ndarray:
        return np.tanh(scale * np.tanh(scale * x @ a1 / np.sqrt(f)) @ a2 / np.sqrt(hidden))

    return phi


def _balanced_task(rng, phi, w, n, f, c):
    """One task's inputs and labels with per-class counts n // c (+1 for the first n % c)."""
    counts = np.full(c, n // c) + (np.arange(c) < n % c)
    for _ in range(_MAX_TRIES):
        x = rng.standard_normal((_POOL_FACTOR * n, f))
        z = phi(x) @ w
        y = np.argmax(z - z.mean(axis=0), axis=1)
        picks = [np.flatnonzero(y == k)[: counts[k]] for k in range(c)]
        if all(len(p) == counts[k] for k, p in enumerate(picks)):
            idx = rng.permutation(np.concatenate(picks))
            return x[idx], y[idx]
    raise ConfigError(
        f"data.num_classes={c} cannot be balanced with data.latent_dim and data.task_diversity "
        f"as set: a task's rule leaves some class nearly empty. Lower data.num_classes or raise "
        f"data.latent_dim."
    )


def generate(cfg: dict, rng: np.random.Generator) -> tuple[TaskSplit, TaskSplit, str, int]:
    n, f, c = cfg["samples_per_task"], cfg["num_features"], cfg["num_classes"]
    latent = cfg["latent_dim"]
    phi = _feature_map(rng, f, latent, cfg["map_scale"])
    w0 = rng.standard_normal((latent, c))
    splits = []
    for num_tasks in (cfg["num_train_tasks"], cfg["num_test_tasks"]):
        xs = np.empty((num_tasks, n, f), dtype=np.float32)
        ys = np.empty((num_tasks, n), dtype=np.int32)
        for t in range(num_tasks):
            w = w0 + cfg["task_diversity"] * rng.standard_normal((latent, c))
            xs[t], ys[t] = _balanced_task(rng, phi, w, n, f, c)
        noisy = rng.random(ys.shape) < cfg["label_noise"]
        ys = np.where(noisy, rng.integers(0, c, ys.shape), ys).astype(np.int32)
        splits.append(TaskSplit(*split_support_query(xs, ys, cfg["k_shot"], c, rng)))
    return splits[0], splits[1], CLASSIFICATION, c
