"""N-way K-shot episodes drawn from a pool of class images, for families too large to enumerate.

Omniglot's meta-training split has 4,800 classes (1,200 characters x 4 rotations): the number of
distinct episodes is astronomical, so training episodes cannot be pre-generated into a fixed
:class:`~pipeline.data.TaskSplit`. An :class:`EpisodeSampler` keeps the pool instead and draws
meta-batches on demand from the caller's generator (the run's ``sampling`` stream), so the
sequence of training episodes is still fixed by the one seed. Test episodes are drawn once with
the same function and stored as an ordinary ``TaskSplit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Extra arrays a sampler is stored as (besides its pool), see :meth:`EpisodeSampler.arrays`.
POOL, SHAPE, ROTATIONS = "pool", "episode_shape", "rotations"


def sample_episodes(pool: np.ndarray, rotations: tuple[int, ...], num_tasks: int, n_way: int,
                    k_shot: int, q_query: int, rng: np.random.Generator):
    """``num_tasks`` episodes as stacked ``(support_x, support_y, query_x, query_y)``.

    ``pool`` is [characters, examples, H, W]. A *class* is a (character, rotation) pair, so there
    are ``characters * len(rotations)`` classes. Per episode: ``n_way`` distinct classes (their
    label order is random), ``k_shot + q_query`` distinct examples of each, the first ``k_shot``
    for the support set; both sets are then shuffled so no position leaks a label. Images get a
    trailing channel axis: [tasks, n_way * k_shot, H, W, 1].
    """
    chars, examples = pool.shape[:2]
    classes = chars * len(rotations)
    if n_way > classes or k_shot + q_query > examples:
        raise ValueError(f"cannot draw {n_way}-way episodes with {k_shot}+{q_query} examples per "
                         f"class from {classes} classes of {examples} examples each")
    cls = np.argsort(rng.random((num_tasks, classes)), axis=1)[:, :n_way]
    ex = np.argsort(rng.random((num_tasks, n_way, examples)), axis=2)[:, :, :k_shot + q_query]
    char, rot = np.divmod(cls, len(rotations))
    images = pool[char[..., None], ex]  # [tasks, n_way, k + q, H, W]
    for r, degrees in enumerate(rotations):
        if degrees % 360:
            hit = rot == r
            images[hit] = np.rot90(images[hit], k=degrees // 90, axes=(-2, -1))
    labels = np.broadcast_to(np.arange(n_way, dtype=np.int32)[None, :, None], images.shape[:3])

    def part(sl: slice, per_class: int):
        x = images[:, :, sl].reshape(num_tasks, n_way * per_class, *pool.shape[2:], 1)
        y = labels[:, :, sl].reshape(num_tasks, n_way * per_class)
        order = np.argsort(rng.random(y.shape), axis=1)
        return (np.take_along_axis(x, order.reshape(*order.shape, 1, 1, 1), axis=1),
                np.take_along_axis(y, order, axis=1))

    sx, sy = part(slice(0, k_shot), k_shot)
    qx, qy = part(slice(k_shot, k_shot + q_query), q_query)
    return sx, np.ascontiguousarray(sy), qx, np.ascontiguousarray(qy)


@dataclass(frozen=True)
class EpisodeSampler:
    """A training split given as a pool of class images, sampled into episodes on demand."""

    #: [characters, examples, H, W] images (uint8).
    pool: np.ndarray
    #: Rotations in degrees (multiples of 90); each (character, rotation) is its own class.
    rotations: tuple[int, ...]
    n_way: int
    k_shot: int
    q_query: int

    @property
    def num_classes(self) -> int:
        return int(self.pool.shape[0]) * len(self.rotations)

    @property
    def num_tasks(self) -> int:
        """Distinct episodes are beyond counting; the class count stands in for log lines."""
        return self.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (*self.pool.shape[2:], 1)

    def sample(self, rng: np.random.Generator, num_tasks: int):
        """A meta-batch of ``num_tasks`` fresh episodes, as a :class:`~pipeline.data.TaskSplit`."""
        from pipeline.data import TaskSplit

        return TaskSplit(*sample_episodes(self.pool, self.rotations, num_tasks, self.n_way,
                                          self.k_shot, self.q_query, rng))

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything that defines the sampler, as arrays (so the fingerprint covers it)."""
        return {POOL: self.pool, SHAPE: np.array([self.n_way, self.k_shot, self.q_query]),
                ROTATIONS: np.array(self.rotations, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EpisodeSampler:
        n, k, q = (int(v) for v in arrays[SHAPE])
        return cls(arrays[POOL], tuple(int(r) for r in arrays[ROTATIONS]), n, k, q)
