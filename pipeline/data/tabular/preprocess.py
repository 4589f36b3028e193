"""Preprocessing fitted on the training tasks only and applied to every split alike:
standardisation, median imputation and one-hot categories."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.tabular.read import Task
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """What the training tasks say about the features: used on every split alike."""

    numeric: list[str]
    categories: dict[str, list[str]]
    medians: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(c) for c in self.categories.values())


def fit(cfg: dict, train: list[Task]) -> Preprocessing:
    numeric = list(train[0].columns[:train[0].numeric.shape[1]])
    values = np.concatenate([t.numeric for t in train])
    empty = np.isnan(values).all(axis=0)
    if empty.any():
        raise ConfigError(f"Column {numeric[int(np.argmax(empty))]!r} has no value in any "
                          f"training task: nothing to impute it with. Remove it from the "
                          f"features.")
    medians = np.nanmedian(values, axis=0) if values.size else np.zeros(len(numeric))
    values = np.where(np.isnan(values), medians, values)
    if cfg["normalize"] == "train":
        mean, std = values.mean(axis=0), values.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
    else:
        mean, std = np.zeros(len(numeric)), np.ones(len(numeric))
    cats = {c: sorted({v for t in train for v in t.categorical[:, j] if v is not None})
            for j, c in enumerate(cfg["categorical"])}
    return Preprocessing(numeric, cats, medians, mean, std)


def transform(prep: Preprocessing, task: Task) -> tuple[np.ndarray, int, int]:
    """A task's feature matrix (float32) and its counts of imputed cells and unseen categories."""
    holes = np.isnan(task.numeric)
    x = (np.where(holes, prep.medians, task.numeric) - prep.mean) / prep.std
    blocks, imputed, unseen = [x], int(holes.sum()), 0
    for j, cats in enumerate(prep.categories.values()):
        index = {c: i for i, c in enumerate(cats)}
        pos = np.array([-2 if v is None else index.get(v, -1) for v in task.categorical[:, j]],
                       dtype=np.int64)
        onehot = np.zeros((len(task), len(cats)))
        hit = pos >= 0
        onehot[np.flatnonzero(hit), pos[hit]] = 1.0
        imputed += int((pos == -2).sum())
        unseen += int((pos == -1).sum())
        blocks.append(onehot)
    return np.concatenate(blocks, axis=1).astype(np.float32), imputed, unseen


