"""Stage 1, generate: build (or reuse) the task data set and record it as the run's input."""

from __future__ import annotations

import dataclasses
import logging

from pipeline import data
from pipeline.config import Config
from pipeline.data import TaskSet, TaskSplit
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)


def run(cfg: Config, tracker: Tracker | None) -> TaskSet:
    data_cfg = dataclasses.asdict(cfg.data)
    data_cfg.pop("cache")
    tasks = data.generate_or_load(data_cfg, cfg.seed, cfg.paths.data_dir, cfg.data.cache)
    log.info("data %s: %d train / %d test tasks, fingerprint %s (%s)", cfg.data.family,
             tasks.train.num_tasks, tasks.test.num_tasks, tasks.fingerprint[:12], tasks.path)
    if tracker is not None:
        tracker.set_tags({"data_fingerprint": tasks.fingerprint, "data_file": tasks.path})
        small = tasks.path.stat().st_size <= cfg.tracking.log_dataset_max_mb * 2**20
        arrays = None
        if small:  # named views of the arrays already in memory, not a copy
            splits = {n: s for n, s in (("train", tasks.train), ("test", tasks.test))
                      if isinstance(s, TaskSplit)}
            arrays = {
                "features": {f"{n}_{f}": getattr(s, f"{f}_x") for n, s in splits.items()
                             for f in ("support", "query")},
                "targets": {f"{n}_{f}": getattr(s, f"{f}_y") for n, s in splits.items()
                            for f in ("support", "query")},
            }
        tracker.log_dataset(tasks.path, tasks.fingerprint, f"{cfg.data.family}-{cfg.seed}",
                            {"data": data_cfg, "seed": cfg.seed}, arrays)
    return tasks
