"""Classification tasks with shared structure, so that learning to learn pays.

Generative process (all randomness from the data seed):

1. A shared nonlinear feature map, fixed for the whole family::

       phi(x) = tanh(s * A2 @ tanh(s * A1 @ x / sqrt(F)) / sqrt(H)),   A1, A2 ~ N(0, 1)

   with ``F = num_features`` inputs, ``H = 4 * latent_dim`` hidden units, ``s = map_scale``,
   and ``latent_dim`` outputs.
2. A shared prior over task rules: ``W0 ~ N(0, 1)`` of shape [latent_dim, num_classes].
3. Each task t draws its own rule ``W_t = W0 + task_diversity * E_t`` with ``E_t ~ N(0, 1)``.
4. Inputs ``x ~ N(0, I_F)``; logits ``z = phi(x) W_t - b_t``; label ``y = argmax_c z_c``. The
   per-class offsets ``b_t`` start at each class's mean logit over the task's pool of candidate
   inputs and move (Sinkhorn steps, :func:`labels`) until every class wins enough of them,
   so every task keeps ``samples_per_task`` points with balanced classes, for any number of
   classes, features and latent dimensions.
5. Label noise: each label is replaced by a uniformly random class with probability
   ``label_noise``.

A learner that has extracted ``phi`` and ``W0`` from the training tasks only has to fit a small
linear rule from ``k_shot`` examples per class; a learner starting from scratch must also learn
the nonlinear map from those few examples, which it cannot.
"""

from __future__ import annotations

import numpy as np

from pipeline.config.data import SyntheticDataConfig
from pipeline.data import CLASSIFICATION, TaskSplit, split_support_query
from pipeline.data.family import FamilyBase, GeneratedTasks

_POOL_FACTOR = 20  # candidate inputs drawn per kept sample, so every class can be filled
_SOFTNESS = 0.1  # Sinkhorn temperature, relative to the logits' spread
_MAX_STEPS = 5000


def _feature_map(rng: np.random.Generator, f: int, latent: int, scale: float):
    hidden = 4 * latent
    a1 = rng.standard_normal((f, hidden))
    a2 = rng.standard_normal((hidden, latent))

    def phi(x: np.ndarray) -> np.ndarray:
        return np.tanh(scale * np.tanh(scale * x @ a1 / np.sqrt(f)) @ a2 / np.sqrt(hidden))

    return phi


def labels(z: np.ndarray, need: np.ndarray) -> np.ndarray:
    """``argmax_c (z - b)_c`` for class offsets ``b`` under which class ``c`` wins at least
    ``need[c]`` of the rows of ``z`` (a pool of candidate logits, [pool, classes]).

    ``b`` starts at the class means (centred logits). While a class is short, ``b`` takes a
    Sinkhorn step toward offsets that give every class an equal share of the pool's softmax
    mass at temperature ``tau``: ``b_c += tau * log(C * mean_i softmax((z_i - b) / tau)_c)``.
    Once the soft shares are equal but some class still wins too few rows by argmax, ``tau`` is
    halved, so the soft balance approaches the hard one. Each class needs only
    ``1 / _POOL_FACTOR`` of an equal share: tasks need no steps at all or a few dozen.
    """
    b = z.mean(axis=0)
    tau = _SOFTNESS * float(z.std()) + 1e-12
    for _ in range(_MAX_STEPS):
        y = (z - b).argmax(axis=1)
        if (np.bincount(y, minlength=len(b)) >= need).all():
            return y
        scaled = (z - b) / tau
        p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        step = np.log(len(b) * (p / p.sum(axis=1, keepdims=True)).mean(axis=0))
        b += tau * step
        if np.abs(step).max() < 0.01:
            tau /= 2
    raise AssertionError("class offsets did not converge")  # never seen (tests/test_data.py)


def _balanced_task(rng, phi, w, n, f, c):
    """One task's inputs and labels with per-class counts n // c (+1 for the first n % c)."""
    counts = np.full(c, n // c) + (np.arange(c) < n % c)
    x = rng.standard_normal((_POOL_FACTOR * n, f))
    y = labels(phi(x) @ w, counts)
    picks = [np.flatnonzero(y == k)[: counts[k]] for k in range(c)]
    idx = rng.permutation(np.concatenate(picks))
    return x[idx], y[idx]


def draw_tasks(cfg: dict, rng: np.random.Generator, phi, w0: np.ndarray, num_tasks: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """``num_tasks`` tasks of the family (steps 3-5): inputs [tasks, samples, features] and
    labels [tasks, samples]. Also what ``scripts/make_fake_tabular.py`` writes to disk."""
    n, f, c = cfg["samples_per_task"], cfg["num_features"], cfg["num_classes"]
    xs = np.empty((num_tasks, n, f), dtype=np.float32)
    ys = np.empty((num_tasks, n), dtype=np.int32)
    for t in range(num_tasks):
        w = w0 + cfg["task_diversity"] * rng.standard_normal(w0.shape)
        xs[t], ys[t] = _balanced_task(rng, phi, w, n, f, c)
    noisy = rng.random(ys.shape) < cfg["label_noise"]
    return xs, np.where(noisy, rng.integers(0, c, ys.shape), ys).astype(np.int32)


def draw_family(cfg: dict, rng: np.random.Generator):
    """The shared map ``phi`` and prior mean ``W0`` (steps 1-2)."""
    phi = _feature_map(rng, cfg["num_features"], cfg["latent_dim"], cfg["map_scale"])
    return phi, rng.standard_normal((cfg["latent_dim"], cfg["num_classes"]))


class Synthetic(FamilyBase[SyntheticDataConfig]):
    """``data=synthetic``: every test task is a fresh draw of the family, its own unit."""

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        return generate(self.settings, rng)


def generate(cfg: dict, rng: np.random.Generator) -> GeneratedTasks:
    """Train and test tasks, then (``num_val_tasks`` > 0) validation tasks drawn the same way
    from the rest of the stream: train and test do not depend on whether there are any."""
    phi, w0 = draw_family(cfg, rng)
    splits = []
    num_val = cfg.get("num_val_tasks", 0)
    for num_tasks in (cfg["num_train_tasks"], cfg["num_test_tasks"], *([num_val] if num_val
                                                                        else [])):
        xs, ys = draw_tasks(cfg, rng, phi, w0, num_tasks)
        splits.append(TaskSplit(*split_support_query(xs, ys, cfg["k_shot"], cfg["num_classes"],
                                                     rng)))
    return GeneratedTasks(splits[0], splits[1], CLASSIFICATION, cfg["num_classes"],
                          splits[2] if num_val else None)
