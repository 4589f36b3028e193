"""Checks of tabular tasks before a run: targets present and of one kind, feature values
present (unless imputed) and finite, every task big enough for an episode, and the split of the
tasks into train, validation and test."""

from __future__ import annotations

import numpy as np

from pipeline.data import CLASSIFICATION, REGRESSION
from pipeline.data.tabular.read import SPLITS, Task, no_val_hint, numbers, read_tasks, where
from pipeline.errors import ConfigError

#: Targets of a task: class labels (strings, or whole numbers) or real values.
LABELS, REAL = "labels", "real"


def _target_kind(task: Task) -> str:
    if task.target_numbers is None:
        return LABELS  # text labels
    return LABELS if np.all(np.mod(task.target_numbers, 1) == 0) else REAL


def _missing_features(task: Task) -> np.ndarray:
    """[rows, numeric + categorical columns] True where a feature value is missing."""
    return np.concatenate([np.isnan(task.numeric), task.categorical == None], axis=1)  # noqa: E711


def _check_missing(cfg: dict, tasks: list[Task]) -> None:
    target = cfg["target"]
    for t in tasks:
        holes = t.target == None  # noqa: E711
        if holes.any():
            r = int(np.argmax(holes))
            raise ConfigError(f"Table {where(t.source, int(t.rows[r]))}: the target "
                              f"{target!r} is missing (task {t.name!r}). Every row needs its "
                              f"target: fill or remove the row.")
        if cfg["missing"] != "refuse":
            continue
        holes = _missing_features(t)
        if holes.any():
            r, c = (int(v[0]) for v in np.nonzero(holes))
            raise ConfigError(f"Table {where(t.source, int(t.rows[r]))}, column "
                              f"{t.columns[c]!r}: the value is missing (task {t.name!r}). Fill "
                              f"it, or set data.missing=impute to use the training tasks' "
                              f"medians.")


def _check_finite(cfg: dict, tasks: list[Task]) -> None:
    """No feature or numeric target holds inf or -inf: one would only show up later as a
    diverging meta-training, with the wrong advice."""
    for t in tasks:
        bad = np.isinf(t.numeric)
        if bad.any():
            r, c = (int(v[0]) for v in np.nonzero(bad))
            raise ConfigError(f"Table {where(t.source, int(t.rows[r]))}, column "
                              f"{t.columns[c]!r}: {t.numeric[r, c]} is not a finite number "
                              f"(task {t.name!r}). Replace it with a finite value, or empty the "
                              f"cell and set data.missing=impute.")
        if t.target_numbers is not None and np.isinf(t.target_numbers).any():
            r = int(np.argmax(np.isinf(t.target_numbers)))
            raise ConfigError(f"Table {where(t.source, int(t.rows[r]))}, column "
                              f"{cfg['target']!r}: the target {t.target[r]!r} is not a finite "
                              f"number (task {t.name!r}). Fix or remove the row.")


def _check_task_types(cfg: dict, tasks: list[Task]) -> None:
    kinds = {t.name: _target_kind(t) for t in tasks}
    real = [n for n, k in kinds.items() if k == REAL]
    labels = [n for n, k in kinds.items() if k == LABELS]
    target = cfg["target"]
    if real and labels:
        raise ConfigError(
            f"Mixed task types: target {target!r} holds real values (regression) in tasks "
            f"{_names(real)} and class labels (classification) in tasks {_names(labels)}. All "
            f"tasks need the same kind of target.")
    if cfg["task_type"] == CLASSIFICATION and real:
        raise ConfigError(f"Target {target!r} holds real values in every task (e.g. task "
                          f"{real[0]!r}), not class labels: set data.task_type=regression.")
    if cfg["task_type"] == REGRESSION:
        for t in tasks:
            if t.target_numbers is None:
                r = next(i for i, v in enumerate(t.target) if numbers(np.array([v])) is None)
                raise ConfigError(
                    f"Table {where(t.source, int(t.rows[r]))}, column {target!r}: "
                    f"{t.target[r]!r} is not a number, and data.task_type=regression needs "
                    f"numeric targets (or set data.task_type=classification).")


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def classes_of(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """A task's classes (sorted: numerically for numbers, else as text) and each row's class."""
    keys = task.target_numbers if task.target_numbers is not None else task.target.astype(str)
    classes, y = np.unique(keys, return_inverse=True)
    return classes, y.astype(np.int64)


def check_sizes(cfg: dict, tasks: list[Task]) -> int:
    """Classes and rows per task are enough for an episode; return the episodes' N-way."""
    k = cfg["k_shot"]
    if cfg["task_type"] == REGRESSION:
        for t in tasks:
            if len(t) < k + 1:
                raise ConfigError(f"Task {t.name!r} ({t.source}) has {len(t)} rows, fewer "
                                  f"than data.k_shot + 1 = {k + 1} (support and at least one "
                                  f"query row): lower data.k_shot or remove the task.")
        return 1
    counts = {}
    for t in tasks:
        classes, y = classes_of(t)
        if len(classes) < 2:
            raise ConfigError(f"Task {t.name!r} ({t.source}) has one class in its target "
                              f"{cfg['target']!r} ({classes[0]!r}): a classification task "
                              f"needs at least 2. Remove the task or fix its labels.")
        sizes = np.bincount(y)
        small = int(np.argmin(sizes))
        if sizes[small] < k + 1:
            raise ConfigError(f"Task {t.name!r} ({t.source}) has {int(sizes[small])} rows of "
                              f"class {classes[small]!r}, fewer than data.k_shot + 1 = {k + 1} "
                              f"per class: lower data.k_shot or remove the task.")
        counts[t.name] = len(classes)
    ways = cfg["num_classes"]
    if ways is None and len(set(counts.values())) > 1:
        lo, hi = min(counts, key=counts.get), max(counts, key=counts.get)
        raise ConfigError(f"Tasks differ in their number of classes ({lo!r}: {counts[lo]}, "
                          f"{hi!r}: {counts[hi]}) and data.num_classes=null takes them all: set "
                          f"data.num_classes to at most {counts[lo]} for N-way episodes.")
    if ways is not None:
        few = [n for n, c in counts.items() if c < ways]
        if few:
            raise ConfigError(f"Task {few[0]!r} has {counts[few[0]]} classes, fewer than "
                              f"data.num_classes={ways}: lower it or remove the task.")
        return ways
    return next(iter(counts.values()))


def assign_splits(cfg: dict, tasks: list[Task], rng: np.random.Generator
                  ) -> dict[str, list[Task]]:
    """Split -> its tasks: named ones, or ``task_split`` fractions of the tasks (sorted by name)
    drawn by the data seed (its first draw)."""
    if cfg["task_split"] is None:
        out = {s: [t for t in tasks if t.split == s] for s in SPLITS}
    else:
        order = rng.permutation(len(tasks))
        ranked = sorted(tasks, key=lambda t: t.name)
        fr = cfg["task_split"]
        train, val = round(fr[0] * len(tasks)), round(fr[1] * len(tasks))
        cut = {"train": order[:train], "val": order[train:train + val],
               "test": order[train + val:]}
        out = {s: sorted((ranked[i] for i in idx), key=lambda t: t.name) for s, idx in cut.items()}
    for split in ("train", "test", *(("val",) if cfg["num_val_tasks"] > 0 and (
            cfg["task_split"] is None or cfg["task_split"][1] > 0) else ())):
        if not out[split]:
            raise ConfigError(f"The {split} split has no tasks ({len(tasks)} tasks in all): "
                              f"{'adjust data.task_split' if cfg['task_split'] else 'name some'}"
                              f"{no_val_hint(split)}.")
    return out


def check_sources(cfg: dict, rng: np.random.Generator) -> dict[str, list[Task]]:
    """Before a run: every file there, readable and consistent, every task big enough for an
    episode, the split non-empty. ``rng`` is a fresh data stream (it splits the tasks)."""
    tasks = read_tasks(cfg)
    _check_missing(cfg, tasks)
    _check_finite(cfg, tasks)
    _check_task_types(cfg, tasks)
    check_sizes(cfg, tasks)
    return assign_splits(cfg, tasks, rng)


