"""The original notebook's data: ``X ~ N(0, 1)`` and labels drawn uniformly at random.

Exactly the notebook's shapes and distributions (100 train and 100 test tasks x 100 samples x 20
features, 2 classes), seeded. Labels are independent of inputs, so nothing can be learned: any
method scores chance on it, which makes it the pipeline's negative control.
"""

from __future__ import annotations

import numpy as np

from pipeline.config.data import NotebookDataConfig
from pipeline.data import CLASSIFICATION, TaskSplit, split_support_query
from pipeline.data.family import FamilyBase, GeneratedTasks


class Notebook(FamilyBase[NotebookDataConfig]):
    """``data=notebook``: every test task is a fresh random task, its own unit."""

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        return generate(self.settings, rng)


def generate(cfg: dict, rng: np.random.Generator) -> GeneratedTasks:
    n, f, c = cfg["samples_per_task"], cfg["num_features"], cfg["num_classes"]
    splits = []
    for num_tasks in (cfg["num_train_tasks"], cfg["num_test_tasks"]):
        x = rng.standard_normal((num_tasks, n, f)).astype(np.float32)
        y = rng.integers(0, c, size=(num_tasks, n)).astype(np.int32)
        splits.append(TaskSplit(*split_support_query(x, y, cfg["k_shot"], c, rng)))
    return GeneratedTasks(splits[0], splits[1], CLASSIFICATION, c)
