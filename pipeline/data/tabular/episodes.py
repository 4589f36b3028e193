"""Episodes of tabular tasks: each split's preprocessed rows as one sampler, and the fixed
test and validation episodes drawn from it, each traced to its source task."""

from __future__ import annotations

import numpy as np

from pipeline.data import REGRESSION, TaskSplit
from pipeline.data.episodes import TaskRowSampler
from pipeline.data.tabular.checks import classes_of
from pipeline.data.tabular.preprocess import Preprocessing, transform
from pipeline.data.tabular.read import Task


def split_sampler(cfg: dict, prep: Preprocessing, tasks: list[Task], ways: int, q: int
          ) -> tuple[TaskRowSampler, int, int]:
    """A split's tasks as one sampler: rows grouped by task and class."""
    regression = cfg["task_type"] == REGRESSION
    xs, ys, sizes, imputed, unseen = [], [], [], 0, 0
    for t in tasks:
        x, i, u = transform(prep, t)
        imputed, unseen = imputed + i, unseen + u
        if regression:
            xs.append(x)
            ys.append(t.target_numbers.astype(np.float32))
            sizes.append([len(x)])
            continue
        _, y = classes_of(t)
        order = np.argsort(y, kind="stable")
        xs.append(x[order])
        ys.append(y[order])
        sizes.append(np.bincount(y).tolist())
    widest = max(len(s) for s in sizes)
    class_sizes = np.array([s + [0] * (widest - len(s)) for s in sizes], dtype=np.int64)
    std = np.zeros(prep.width, dtype=bool)
    if cfg["normalize"] == "support":
        std[:len(prep.numeric)] = True
    sampler = TaskRowSampler(np.concatenate(xs), np.concatenate(ys), class_sizes, ways,
                             cfg["k_shot"], q, regression, std if std.any() else None)
    return sampler, imputed, unseen


def query_size(cfg: dict, tasks: list[Task]) -> int:
    """``query_per_class``, capped by what the smallest class (regression: task) leaves."""
    if cfg["task_type"] == REGRESSION:
        smallest = min(len(t) for t in tasks)
    else:
        smallest = min(int(np.bincount(classes_of(t)[1]).min()) for t in tasks)
    return min(cfg["query_per_class"], smallest - cfg["k_shot"])


def fixed_episodes(sampler: TaskRowSampler, num: int, rng: np.random.Generator
                   ) -> tuple[TaskSplit, np.ndarray]:
    """``num`` episodes cycling over the split's tasks (in an order drawn from ``rng``), and
    each episode's task: its index in the split's tasks."""
    tasks = np.resize(rng.permutation(sampler.num_tasks), num)
    return sampler.episodes(rng, num, tasks), tasks.astype(np.int64)


