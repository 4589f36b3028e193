"""N-way K-shot episodes drawn from a pool of class images, for families too large to enumerate.

Omniglot's meta-training split has 4,800 classes (1,200 characters x 4 rotations): the number of
distinct episodes is astronomical, so training episodes cannot be pre-generated into a fixed
:class:`~pipeline.data.TaskSplit`. An :class:`EpisodeSampler` keeps the pool instead and draws
meta-batches on demand from the caller's generator (the run's ``sampling`` stream), so the
sequence of training episodes is still fixed by the one seed. Test episodes are drawn once with
the same function and stored as an ordinary ``TaskSplit``, or, for large colour images, as an
:class:`EpisodeSet`: indices into the split's pool (600 miniImageNet test episodes would be
1.7 GB as images; the pool they index is 0.25 GB).

Pools come in two shapes: *dense*, ``[classes, examples, H, W(, C)]`` with the same number of
examples per class (Omniglot's 20 drawings), or *flat*, ``[images, H, W, C]`` with classes
stored one after the other and ``class_sizes`` saying how many each has (image collections on
disk, whose classes need not be the same size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Extra arrays a sampler is stored as (besides its pool), see :meth:`EpisodeSampler.arrays`.
POOL, SHAPE, ROTATIONS, CLASS_SIZES = "pool", "episode_shape", "rotations", "class_sizes"
#: The arrays of an :class:`EpisodeSet` (besides its pool).
INDEX_FIELDS = ("support_idx", "support_y", "query_idx", "query_y")


def _sizes(pool: np.ndarray, class_sizes: np.ndarray | None) -> np.ndarray:
    if class_sizes is None:
        return np.full(pool.shape[0], pool.shape[1], dtype=np.int64)
    return np.asarray(class_sizes, dtype=np.int64)


def draw(sizes: np.ndarray, num_rotations: int, num_tasks: int, n_way: int, k_shot: int,
         q_query: int, rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], ...]:
    """Which images make up ``num_tasks`` episodes, for the support and the query set.

    A *class* is a (pool class, rotation) pair. Per episode: ``n_way`` distinct classes (their
    label order is random), ``k_shot + q_query`` distinct examples of each, the first ``k_shot``
    for the support set; both sets are then shuffled so no position leaks a label. Returns
    ``((cls, example, rotation, label) of the support set, (...) of the query set)``, each
    ``[tasks, n_way * per_class]``.
    """
    classes = len(sizes) * num_rotations
    if n_way > classes or k_shot + q_query > sizes.min():
        raise ValueError(f"cannot draw {n_way}-way episodes with {k_shot}+{q_query} examples per "
                         f"class from {classes} classes of at least {sizes.min()} examples each")
    picked = np.argsort(rng.random((num_tasks, classes)), axis=1)[:, :n_way]
    cls, rot = np.divmod(picked, num_rotations)
    keys = rng.random((num_tasks, n_way, int(sizes.max())))
    if sizes.min() != sizes.max():  # positions past a class's end sort last, never drawn
        keys[np.arange(keys.shape[2]) >= sizes[cls][..., None]] = 2.0
    ex = np.argsort(keys, axis=2)[:, :, :k_shot + q_query]
    labels = np.broadcast_to(np.arange(n_way, dtype=np.int32)[None, :, None], ex.shape)

    def part(sl: slice, per_class: int) -> tuple[np.ndarray, ...]:
        shape = (num_tasks, n_way * per_class)
        c = np.broadcast_to(cls[..., None], ex.shape)[:, :, sl].reshape(shape)
        r = np.broadcast_to(rot[..., None], ex.shape)[:, :, sl].reshape(shape)
        e, y = ex[:, :, sl].reshape(shape), labels[:, :, sl].reshape(shape)
        order = np.argsort(rng.random(shape), axis=1)
        return tuple(np.ascontiguousarray(np.take_along_axis(a, order, axis=1))
                     for a in (c, e, r, y))

    return part(slice(0, k_shot), k_shot), part(slice(k_shot, k_shot + q_query), q_query)


def _images(pool: np.ndarray, class_sizes: np.ndarray | None, rotations: tuple[int, ...],
            cls: np.ndarray, ex: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """The drawn images, rotated, with a channel axis: [tasks, n, H, W, C]."""
    images = pool[cls, ex] if class_sizes is None else pool[flat_index(class_sizes, cls, ex)]
    if images.ndim == 4:  # grayscale: [tasks, n, H, W] -> one channel
        images = images[..., None]
    for r, degrees in enumerate(rotations):
        if degrees % 360:
            hit = rot == r
            images[hit] = np.rot90(images[hit], k=degrees // 90, axes=(-3, -2))
    return images


def flat_index(class_sizes: np.ndarray, cls: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """Position in a flat pool of example ``ex`` of class ``cls``."""
    starts = np.concatenate([[0], np.cumsum(class_sizes)[:-1]]).astype(np.int64)
    return starts[cls] + ex


def sample_episodes(pool: np.ndarray, rotations: tuple[int, ...], num_tasks: int, n_way: int,
                    k_shot: int, q_query: int, rng: np.random.Generator,
                    class_sizes: np.ndarray | None = None):
    """``num_tasks`` episodes as stacked ``(support_x, support_y, query_x, query_y)``.

    ``pool`` is dense ``[classes, examples, H, W(, C)]`` or, with ``class_sizes``, flat
    ``[images, H, W, C]``; there are ``classes * len(rotations)`` classes (see :func:`draw`).
    Images get a channel axis if they have none: [tasks, n_way * k_shot, H, W, C].
    """
    return sample_traced_episodes(pool, rotations, num_tasks, n_way, k_shot, q_query, rng,
                                  class_sizes)[0]


def sample_traced_episodes(pool: np.ndarray, rotations: tuple[int, ...], num_tasks: int,
                           n_way: int, k_shot: int, q_query: int, rng: np.random.Generator,
                           class_sizes: np.ndarray | None = None
                           ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """:func:`sample_episodes`, and the classes each episode drew, [tasks, n_way]: class
    ``c * len(rotations) + r`` is pool class ``c`` rotated by ``rotations[r]``, in label order."""
    support, query = draw(_sizes(pool, class_sizes), len(rotations), num_tasks, n_way, k_shot,
                          q_query, rng)
    sx = _images(pool, class_sizes, rotations, *support[:3])
    qx = _images(pool, class_sizes, rotations, *query[:3])
    classes = episode_classes(support[0] * len(rotations) + support[2], support[3], n_way)
    return (sx, support[3], qx, query[3]), classes


def episode_classes(classes: np.ndarray, labels: np.ndarray, n_way: int) -> np.ndarray:
    """[episodes, n_way]: the class behind each label, read off an episode's examples
    (``classes`` and ``labels`` [episodes, examples], every label present)."""
    out = np.full((classes.shape[0], n_way), -1, dtype=np.int64)
    out[np.arange(classes.shape[0])[:, None], labels] = classes
    return out


def flat_class(class_sizes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The class of each position ``idx`` in a flat pool (inverse of :func:`flat_index`)."""
    return np.searchsorted(np.cumsum(class_sizes), idx, side="right").astype(np.int64)


@dataclass(frozen=True)
class EpisodeSet:
    """Fixed episodes stored as indices into a flat pool of images; :meth:`take` materialises
    the ones asked for, so only a chunk of episodes is ever held as images."""

    #: [images, H, W, C] (uint8).
    pool: np.ndarray
    #: [tasks, n_way * k_shot] positions in ``pool`` and labels; likewise for the query set.
    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray

    @classmethod
    def sample(cls, pool: np.ndarray, class_sizes: np.ndarray, num_tasks: int, n_way: int,
               k_shot: int, q_query: int, rng: np.random.Generator) -> EpisodeSet:
        (sc, se, _, sy), (qc, qe, _, qy) = draw(np.asarray(class_sizes, np.int64), 1, num_tasks,
                                                n_way, k_shot, q_query, rng)
        return cls(pool, flat_index(class_sizes, sc, se), sy, flat_index(class_sizes, qc, qe), qy)

    @property
    def num_tasks(self) -> int:
        return int(self.support_idx.shape[0])

    def classes(self, class_sizes: np.ndarray) -> np.ndarray:
        """[tasks, n_way] the class (of a pool of ``class_sizes``) behind each label."""
        return episode_classes(flat_class(class_sizes, self.support_idx), self.support_y,
                               int(self.support_y.max()) + 1)

    def take(self, idx: np.ndarray | slice):
        """The episodes at ``idx`` as images, a :class:`~pipeline.data.TaskSplit`."""
        from pipeline.data import TaskSplit

        return TaskSplit(self.pool[self.support_idx[idx]], self.support_y[idx],
                         self.pool[self.query_idx[idx]], self.query_y[idx])

    def arrays(self) -> dict[str, np.ndarray]:
        return {POOL: self.pool} | {f: getattr(self, f) for f in INDEX_FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EpisodeSet:
        return cls(arrays[POOL], *(arrays[f] for f in INDEX_FIELDS))


@dataclass(frozen=True)
class EpisodeSampler:
    """A training split given as a pool of class images, sampled into episodes on demand."""

    #: Dense [characters, examples, H, W(, C)] or, with ``class_sizes``, flat [images, H, W, C]
    #: images (uint8).
    pool: np.ndarray
    #: Rotations in degrees (multiples of 90); each (character, rotation) is its own class.
    rotations: tuple[int, ...]
    n_way: int
    k_shot: int
    q_query: int
    #: Images per class of a flat pool (None: a dense pool).
    class_sizes: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(_sizes(self.pool, self.class_sizes)) * len(self.rotations)

    @property
    def num_tasks(self) -> int:
        """Distinct episodes are beyond counting; the class count stands in for log lines."""
        return self.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        image = self.pool.shape[2:] if self.class_sizes is None else self.pool.shape[1:]
        return (*image, 1) if len(image) == 2 else tuple(image)

    def sample(self, rng: np.random.Generator, num_tasks: int):
        """A meta-batch of ``num_tasks`` fresh episodes, as a :class:`~pipeline.data.TaskSplit`."""
        from pipeline.data import TaskSplit

        return TaskSplit(*sample_episodes(self.pool, self.rotations, num_tasks, self.n_way,
                                          self.k_shot, self.q_query, rng, self.class_sizes))

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything that defines the sampler, as arrays (so the fingerprint covers it)."""
        out = {POOL: self.pool, SHAPE: np.array([self.n_way, self.k_shot, self.q_query]),
               ROTATIONS: np.array(self.rotations, dtype=np.int64)}
        if self.class_sizes is not None:
            out[CLASS_SIZES] = np.asarray(self.class_sizes, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EpisodeSampler:
        n, k, q = (int(v) for v in arrays[SHAPE])
        return cls(arrays[POOL], tuple(int(r) for r in arrays[ROTATIONS]), n, k, q,
                   arrays.get(CLASS_SIZES))


# --- episodes within tasks: rows of a table grouped by task and class ----------------------------

#: The arrays a :class:`TaskRowSampler` is stored as (``rows`` is its pool of feature rows).
ROW_FIELDS = ("rows", "row_targets", "row_class_sizes", "row_standardize", "row_shape")


def standardize_by_support(sx: np.ndarray, qx: np.ndarray, columns: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Standardise ``columns`` of each episode with its own support set's mean and std (a
    constant column keeps std 1), so nothing of the query set or other tasks leaks in."""
    if not columns.any():
        return sx, qx
    mu = sx[..., columns].mean(axis=1, keepdims=True)
    sd = sx[..., columns].std(axis=1, keepdims=True)
    sd = np.where(sd > 1e-6, sd, 1.0).astype(sx.dtype)
    sx, qx = sx.copy(), qx.copy()
    sx[..., columns] = (sx[..., columns] - mu) / sd
    qx[..., columns] = (qx[..., columns] - mu) / sd
    return sx, qx


@dataclass(frozen=True)
class TaskRowSampler:
    """Episodes drawn within one task each, from a flat pool of table rows grouped by task and,
    within a task, by class (regression: one group per task). An episode takes ``n_way`` of
    its task's classes (in their order: label ``i`` is the task's ``i``-th chosen class),
    ``k_shot`` support and ``q_query`` query rows of each; a regression episode ``k_shot``
    support and ``q_query`` query rows, labelled with their targets."""

    #: [rows, features] float32, rows grouped by task, then class.
    rows: np.ndarray
    #: [rows] the rows' targets (regression) or class indices within their task.
    targets: np.ndarray
    #: [tasks, max classes] rows per class (0 past a task's last class); regression [tasks, 1].
    class_sizes: np.ndarray
    n_way: int
    k_shot: int
    q_query: int
    regression: bool = False
    #: [features] bool: columns standardised per episode by its support set.
    standardize: np.ndarray | None = None

    @property
    def num_tasks(self) -> int:
        return int(self.class_sizes.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.rows.shape[1]),)

    def draw(self, rng: np.random.Generator, num_tasks: int,
             tasks: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """``(support rows, support y, query rows, query y)`` of ``num_tasks`` episodes, of the
        given ``tasks`` (default: drawn uniformly): row positions [episodes, n_way * k]."""
        sizes = self.class_sizes
        if tasks is None:
            tasks = rng.integers(0, self.num_tasks, size=num_tasks)
        n, k, q = self.n_way, self.k_shot, self.q_query
        keys = rng.random((num_tasks, sizes.shape[1]))
        keys[sizes[tasks] == 0] = 2.0  # past a task's classes: never chosen
        picked = np.sort(np.argsort(keys, axis=1)[:, :n], axis=1)
        per_class = sizes[tasks[:, None], picked]
        ex_keys = rng.random((num_tasks, n, int(sizes.max())))
        ex_keys[np.arange(ex_keys.shape[2]) >= per_class[..., None]] = 2.0
        ex = np.argsort(ex_keys, axis=2)[:, :, :k + q]
        starts = np.concatenate([[0], np.cumsum(sizes.ravel())[:-1]]).reshape(sizes.shape)
        pos = starts[tasks[:, None], picked][..., None] + ex
        labels = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :, None], ex.shape)

        def part(sl: slice, m: int) -> tuple[np.ndarray, np.ndarray]:
            p = pos[:, :, sl].reshape(num_tasks, n * m)
            y = labels[:, :, sl].reshape(num_tasks, n * m)
            order = np.argsort(rng.random(p.shape), axis=1)
            p, y = np.take_along_axis(p, order, 1), np.take_along_axis(y, order, 1)
            return p, (self.targets[p].astype(np.float32) if self.regression else y)

        return (*part(slice(0, k), k), *part(slice(k, k + q), q))

    def episodes(self, rng: np.random.Generator, num_tasks: int,
                 tasks: np.ndarray | None = None):
        """Episodes as a :class:`~pipeline.data.TaskSplit` (support-standardised if asked)."""
        from pipeline.data import TaskSplit

        sp, sy, qp, qy = self.draw(rng, num_tasks, tasks)
        sx, qx = self.rows[sp], self.rows[qp]
        if self.standardize is not None:
            sx, qx = standardize_by_support(sx, qx, self.standardize)
        return TaskSplit(sx, sy, qx, qy)

    def sample(self, rng: np.random.Generator, num_tasks: int):
        """A meta-batch of ``num_tasks`` fresh episodes (training)."""
        return self.episodes(rng, num_tasks)

    def arrays(self) -> dict[str, np.ndarray]:
        std = (self.standardize if self.standardize is not None
               else np.zeros(self.rows.shape[1], dtype=bool))
        return dict(zip(ROW_FIELDS, (self.rows, self.targets, self.class_sizes, std,
                                     np.array([self.n_way, self.k_shot, self.q_query,
                                               int(self.regression)])), strict=True))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TaskRowSampler:
        n, k, q, regression = (int(v) for v in arrays["row_shape"])
        std = arrays["row_standardize"]
        return cls(arrays["rows"], arrays["row_targets"], arrays["row_class_sizes"], n, k, q,
                   bool(regression), std if std.any() else None)
