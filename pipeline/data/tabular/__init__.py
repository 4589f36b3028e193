"""Your own tabular tasks from CSV or Parquet files (``data=tabular``).

Layouts (``data.layout``):

* ``long``: ``data.root`` is one file; ``data.task_column`` names each row's task,
  ``data.target`` its label (or value), ``data.features`` its features (null: every other
  column but the split column);
* ``per_task``: ``data.root`` is a folder of ``*.csv`` / ``*.parquet`` files, one per task, the
  file name (without its suffix) the task's name; every file has the same columns.

Splits: ``data.task_split`` fractions of the tasks (sorted by name) drawn by the data seed (its
first draw, so preflight checks the same split), or, with ``task_split=null``, named ones: the
``data.split_column`` of a long file (one value per task: train, val or test), or per-task files
in ``<root>/train``, ``<root>/val``, ``<root>/test``.

Preprocessing sees the training tasks only: numeric features are standardised with their mean
and std (``normalize=train``) or each episode with its own support set's
(``normalize=support``); ``data.categorical`` columns are one-hot encoded with the training
tasks' sorted categories (a category unseen there is all zeros, and counted); missing values
are refused (file, row, column) or imputed with the training tasks' medians (``missing=impute``;
a missing category is all zeros). The features are the numeric columns in their order, then
each categorical column's one-hot block. What was done (tasks per split, features, counts of
unseen categories and imputed cells, the query size) is returned as the task set's ``info``
and recorded as the run's ``data_prep/*`` tags.

Classification: each task's own labels (sorted) are classes 0..C-1; an episode takes
``num_classes`` of them (null: all, and every task must have the same number) in that order,
``k_shot`` support and ``q`` query rows each, where ``q`` is ``query_per_class`` capped by what
the smallest class of any task leaves. Regression: ``k_shot`` support and ``q`` query rows,
labelled with their target. Training episodes are drawn on the fly
(:class:`~pipeline.data.episodes.TaskRowSampler`); ``num_test_tasks`` test and
``num_val_tasks`` validation episodes are drawn once, cycling over the split's tasks, and stored
in the task file keyed by the sha256 of the sources (:func:`source_digest`). The independent
unit of the test CI is the source task (``ci_unit=task``): each test episode records its task
(``test_source``, an index into the test tasks' names).

Every problem with the files is found by :func:`check_sources` before a run starts, each in one
line naming the file (and row, column or task): columns that differ between files, a missing
target, a task with one class or too few rows, a non-numeric value in a numeric column, an
infinite value, a column name given twice, an empty folder, mixed task types, a missing value
(unless imputed).

Modules: :mod:`~pipeline.data.tabular.read` (files, columns, tasks as read),
:mod:`~pipeline.data.tabular.checks` (refusals before a run, the split),
:mod:`~pipeline.data.tabular.preprocess` (fitted on the training tasks) and
:mod:`~pipeline.data.tabular.episodes` (samplers and fixed episodes); this one puts them
together.
"""


from __future__ import annotations

import logging

import numpy as np

from pipeline.config.data import TabularDataConfig
from pipeline.data import CLASSIFICATION, REGRESSION
from pipeline.data.family import CI_TASK, FamilyBase, GeneratedTasks
from pipeline.data.tabular.checks import check_sizes, check_sources
from pipeline.data.tabular.episodes import fixed_episodes, query_size, split_sampler
from pipeline.data.tabular.preprocess import fit
from pipeline.data.tabular.read import read_tasks, source_digest, source_files

log = logging.getLogger(__name__)

__all__ = ["Tabular", "check_sources", "generate", "read_tasks", "source_digest",
           "source_files"]


class Tabular(FamilyBase[TabularDataConfig]):
    """``data=tabular``: episodes drawn from a handful of source tasks, so the unit of the test
    CI is the source task."""

    #: The task file is stored uncompressed: real-valued rows barely compress (14 MB -> 12 MB
    #: for 1,000 tasks of 200 rows x 20 features) and compressing them took a second.
    compress = False

    def source_digest(self) -> str:
        return source_digest(self.settings)

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        return generate(self.settings, rng)


def generate(cfg: dict, rng: np.random.Generator) -> GeneratedTasks:
    splits = check_sources(cfg, rng)
    every = [t for ts in splits.values() for t in ts]
    ways = check_sizes(cfg, every)
    q = query_size(cfg, every)
    prep = fit(cfg, splits["train"])
    samplers, imputed, unseen = {}, {}, {}
    for split, tasks in splits.items():
        if tasks:
            samplers[split], imputed[split], unseen[split] = split_sampler(cfg, prep, tasks,
                                                                           ways, q)
    test, test_source = fixed_episodes(samplers["test"], cfg["num_test_tasks"], rng)
    val = val_source = None
    if cfg["num_val_tasks"] and "val" in samplers:
        val, val_source = fixed_episodes(samplers["val"], cfg["num_val_tasks"], rng)
    train = samplers["train"]
    if cfg["num_train_tasks"]:  # fixed episodes, cycling over the training tasks like the test
        train = fixed_episodes(train, cfg["num_train_tasks"], rng)[0]
    info = {f"tasks_{s}": len(ts) for s, ts in splits.items()} | {
        "files": len({str(t.source) for t in every}),
        "rows": sum(len(t) for t in every),
        "features_numeric": len(prep.numeric),
        "features_categorical": len(prep.categories),
        "input_width": prep.width,
        "normalize": cfg["normalize"], "missing": cfg["missing"],
        "imputed_cells": sum(imputed.values()),
        "unseen_categories": sum(unseen.values()),
        "n_way": ways, "k_shot": cfg["k_shot"], "query_per_class": q,
    }
    log.info("tabular %s: %s", cfg["root"], ", ".join(f"{k}={v}" for k, v in info.items()))
    if info["unseen_categories"]:
        log.warning("tabular: %d categorical cells of validation/test tasks hold categories "
                    "the training tasks lack; they are encoded as all zeros",
                    info["unseen_categories"])
    task_type = REGRESSION if cfg["task_type"] == REGRESSION else CLASSIFICATION
    names = {s: [t.name for t in ts] for s, ts in splits.items() if ts}
    return GeneratedTasks(train, test, task_type, 1 if task_type == REGRESSION else ways, val,
                          info, ci_unit=CI_TASK, test_source=test_source,
                          val_source=val_source if val is not None else None, splits=names,
                          unit_names=names["test"])
