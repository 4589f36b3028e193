"""Stage 1, generate: build (or reuse) the task data set and record it as the run's input."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline import data
from pipeline.config import DataConfig
from pipeline.data import TaskSet, TaskSplit
from pipeline.data.episodes import EpisodeSet, TaskRowSampler
from pipeline.data.family import CI_TASK
from pipeline.tracking import Tracker, keys

log = logging.getLogger(__name__)


def run(cfg: DataConfig, seed: int, data_dir: str | Path, tracker: Tracker | None,
        log_dataset_max_mb: float = 0.0) -> TaskSet:
    """The family's tasks from ``seed`` (cached in ``data_dir``); with a ``tracker``, their
    fingerprint as tags and the data as the run's input (the file itself if it is at most
    ``log_dataset_max_mb``)."""
    data_cfg = dataclasses.asdict(cfg)
    data_cfg.pop("cache")
    tasks = data.generate_or_load(data_cfg, seed, Path(data_dir), cfg.cache)
    log.info("data %s: %s, fingerprint %s (%s)", cfg.family, describe(tasks),
             tasks.fingerprint[:12], tasks.path)
    if tracker is not None:
        tracker.set_tags({keys.DATA_FINGERPRINT: tasks.fingerprint, keys.DATA_FILE: tasks.path}
                         | {f"{keys.DATA_PREP_PREFIX}{k}": v for k, v in tasks.info.items()})
        small = tasks.path.stat().st_size <= log_dataset_max_mb * 2**20
        arrays = _named_views(tasks) if small else None
        tracker.log_dataset(tasks.path, tasks.fingerprint, f"{cfg.family}-{seed}",
                            {"data": data_cfg, "seed": seed}, arrays)
        if tasks.splits:  # each split's tasks (or classes) by name
            tracker.log_dict(tasks.splits, keys.SPLITS_FILE)
    return tasks


def describe(tasks: TaskSet) -> str:
    """The splits' sizes, episodes told apart from the tasks or classes they were drawn from:
    ``27 train tasks, 600 test episodes from 9 tasks, 100 validation episodes from 9 tasks``."""
    if not tasks.splits:  # every episode is a task of its own (or a file without names)
        val = f" / {tasks.val.num_tasks} validation" if tasks.val is not None else ""
        return f"{tasks.train.num_tasks} train / {tasks.test.num_tasks} test{val} tasks"
    what = "tasks" if tasks.ci_unit == CI_TASK else "classes"
    sources = {s: f"{len(names)} {what}" for s, names in tasks.splits.items()}
    train = (f"{tasks.train.num_tasks} train episodes from {sources['train']}"
             if isinstance(tasks.train, TaskSplit) else f"train episodes from {sources['train']}")
    parts = [train, f"{tasks.test.num_tasks} test episodes from {sources['test']}"]
    if tasks.val is not None:
        parts.append(f"{tasks.val.num_tasks} validation episodes from {sources['val']}")
    return ", ".join(parts)


def _named_views(tasks: TaskSet) -> dict[str, dict]:
    """Named views of the arrays already in memory (not a copy), as the run's dataset input:
    inputs as features, labels as targets (episodes stored as indices: their pool and labels)."""
    features, targets = {}, {}
    for name, split in (("train", tasks.train), ("test", tasks.test), ("val", tasks.val)):
        if isinstance(split, TaskSplit):
            for f in ("support", "query"):
                features[f"{name}_{f}"] = getattr(split, f"{f}_x")
                targets[f"{name}_{f}"] = getattr(split, f"{f}_y")
        elif isinstance(split, EpisodeSet):
            features[f"{name}_pool"] = split.pool
            targets |= {f"{name}_{f}": getattr(split, f"{f}_y") for f in ("support", "query")}
        elif isinstance(split, TaskRowSampler):
            features[f"{name}_rows"], targets[f"{name}_rows"] = split.rows, split.targets
    return {"features": features, "targets": targets}
