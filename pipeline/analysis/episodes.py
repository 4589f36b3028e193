"""The test episodes table (``results/test_episodes.csv``): one row per test episode with its
source task, the classes it drew and every per-episode metric of every method scored on it, so
a result can be traced back to its tasks and broken down by them (``--by-task``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis.stats import Units
from pipeline.errors import PipelineError
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

EPISODE, TASK, CLASSES = "episode", "task", "classes"


class MissingTable(PipelineError, LookupError):
    """A run grouped by source task lacks its test episodes table."""


def table(units: Units, series: dict[str, np.ndarray]) -> pd.DataFrame:
    """``episode``, ``task`` (the source task's name; the episode's index where every episode
    is its own task), ``classes`` (image families: the classes drawn, by name where known,
    ``;``-separated) and one column per per-episode metric, named as its MLflow series
    (``task/query_acc_after``, ``scratch_task/query_acc_after``)."""
    n = len(next(iter(series.values())))
    episode = np.arange(n)
    task = ([units.name(int(u)) for u in units.source] if units.source is not None
            else [str(e) for e in episode])
    df = pd.DataFrame({EPISODE: episode, TASK: task})
    if units.classes is not None:
        df[CLASSES] = [";".join(units.class_name(int(c)) for c in row)
                       for row in np.asarray(units.classes)]
    for name, values in series.items():
        df[name] = np.asarray(values, dtype=np.float64)
    return df


def by_task(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per source task (sorted by name): the number of its episodes and the mean of
    each column over its finite values."""
    grouped = df.groupby(TASK, sort=True)
    out = grouped[columns].mean()
    out.insert(0, "episodes", grouped.size())
    return out.reset_index()


def read(uri: str, run: RunRecord) -> pd.DataFrame | None:
    """A run's test episodes table, or None if it has none (runs recorded before it existed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download_artifacts(uri, run.run_id, keys.EPISODES_TABLE, Path(tmp))
        if path is None or not path.is_file():
            return None
        return pd.read_csv(path, dtype={TASK: str})


def source(uri: str, run: RunRecord) -> np.ndarray | None:
    """Per test episode its source task's name, for runs whose CI unit is the source task;
    None where every episode is its own unit."""
    if run.tags.get(keys.CI_UNIT) != keys.UNIT_TASK:
        return None
    df = read(uri, run)
    if df is None:
        raise MissingTable(f"run {run.run_id} ({run.name}) has {keys.CI_UNIT}=task but no "
                           f"{keys.EPISODES_TABLE} artifact: its episodes cannot be grouped by "
                           f"source task.")
    return df.sort_values(EPISODE)[TASK].to_numpy(dtype=str)
