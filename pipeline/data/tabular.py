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
in the task file keyed by the sha256 of the sources (:func:`source_digest`).

Every problem with the files is found by :func:`check_sources` before a run starts, each in one
line naming the file (and row, column or task): columns that differ between files, a missing
target, a task with one class or too few rows, a non-numeric value in a numeric column, an empty
folder, mixed task types, a missing value (unless imputed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.data import CLASSIFICATION, REGRESSION, UNITS, decoded
from pipeline.data.episodes import TaskRowSampler
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Bump when reading or preprocessing changes, so old task files are not reused.
READ_VERSION = 2
SPLITS = ("train", "val", "test")
SUFFIXES = (".csv", ".parquet")
#: Targets of a task: class labels (strings, or whole numbers) or real values.
LABELS, REAL = "labels", "real"
#: The task file is stored uncompressed: real-valued rows barely compress (14 MB -> 12 MB for
#: 1,000 tasks of 200 rows x 20 features) and compressing them took a second.
COMPRESS = False


@dataclass(frozen=True)
class Task:
    """One task's rows as read: where they come from, its features and target."""

    name: str
    source: Path
    #: 1-based data row of each row in its file (for messages).
    rows: np.ndarray
    #: [rows, numeric features] float64 (NaN = missing), in ``feature_columns`` order.
    numeric: np.ndarray
    #: [rows, categorical features] str or None (missing), in ``data.categorical`` order.
    categorical: np.ndarray
    #: [rows] the target as text (None = missing).
    target: np.ndarray
    #: The target as numbers, if every value is one (else None).
    target_numbers: np.ndarray | None
    split: str | None
    #: Names of the numeric, then the categorical columns.
    columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)


# --- reading ------------------------------------------------------------------------------------


def _where(path: Path, row: int) -> str:
    line = f" (line {row + 1})" if path.suffix.lower() == ".csv" else ""
    return f"{path}, row {row}{line}"


def _read_file(path: Path, text_columns: list[str], floats: Sequence[str] = ()) -> pa.Table:
    """The table, ``text_columns`` as strings (empty cells and NA markers as nulls); ``floats``:
    columns the first file held as float64, read as such (see :func:`_read_csv`)."""
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            table = _read_csv(path, text_columns, floats)
        for c in text_columns:
            if c in table.column_names and not pa.types.is_string(table.schema.field(c).type):
                i = table.column_names.index(c)
                table = table.set_column(i, c, pc.cast(table.column(c), pa.string()))
        return table
    except (OSError, pa.ArrowException) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"Table {path} cannot be read ({type(e).__name__}: {first}). Fix or "
                          f"remove it.") from e


def _read_csv(path: Path, text_columns: list[str], floats: Sequence[str]) -> pa.Table:
    """A CSV file, with ``floats`` read as float64 without inferring their types (2.5x faster
    for a small file, where inference is most of the reading). A file where one of them holds
    something else (text, a boolean, a date) is read again with inference, so that the checks
    name the value as they would have."""
    big = path.stat().st_size > 1 << 22  # threads pay off on large files only
    text = {c: pa.string() for c in text_columns}

    def read(types: dict[str, pa.DataType]) -> pa.Table:
        return pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=big),
                             convert_options=pcsv.ConvertOptions(column_types=types,
                                                                 strings_can_be_null=True))
    if floats:
        try:
            return read({c: pa.float64() for c in floats} | text)
        except pa.ArrowInvalid:
            pass
    return read(text)


def _text(column: pa.ChunkedArray) -> np.ndarray:
    return np.array([None if v is None else v.strip() for v in column.to_pylist()], dtype=object)


def _numbers(values: np.ndarray) -> np.ndarray | None:
    """Text as float64, or None if some value is not a number (or missing)."""
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return None


def _numeric_column(path: Path, table: pa.Table, col: str, rows: np.ndarray) -> np.ndarray:
    """A numeric feature column as float64 (NaN = missing); a non-numeric value is refused."""
    column = table.column(col)
    kind = column.type
    if kind == pa.float64():  # the usual case: no cast (nulls come out as NaN)
        return column.to_numpy()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) \
            or pa.types.is_null(kind) or pa.types.is_decimal(kind):
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    out = np.full(len(column), np.nan)
    for i, v in enumerate(column.to_pylist()):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"Table {_where(path, int(rows[i]))}, column {col!r}: {v!r} is not "
                              f"a number. Fix the value, or list the column in "
                              f"data.categorical if it holds categories.") from None
    return out


def _numeric_block(path: Path, table: pa.Table, cols: list[str], rows: np.ndarray) -> np.ndarray:
    """[rows, numeric features] float64 (NaN = missing): one conversion of the whole block when
    every column is float64 (the usual case; a column at a time cost more than reading a small
    file), else column by column."""
    if cols and all(table.schema.field(c).type == pa.float64() for c in cols):
        return np.array(table.select(cols).to_tensor(null_to_nan=True))
    return np.column_stack([_numeric_column(path, table, c, rows) for c in cols]
                           or [np.zeros((table.num_rows, 0))])


def _files_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise ConfigError(f"Folder {folder} is empty: it holds no {' or '.join(SUFFIXES)} files "
                          f"(data.layout=per_task reads one file per task).")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ConfigError(f"Tables {seen[f.stem]} and {f} name the same task {f.stem!r}: "
                              f"keep one of them.")
        seen[f.stem] = f
    return files


def source_files(cfg: dict) -> list[tuple[str | None, Path]]:
    """(named split or None, file) of every source, in a fixed order."""
    root = Path(cfg["root"])
    if cfg["layout"] == "long":
        if not root.is_file():
            raise ConfigError(f"data.root={cfg['root']} is not a file: data.layout=long reads "
                              f"one CSV or Parquet file with a task column.")
        if root.suffix.lower() not in SUFFIXES:
            raise ConfigError(f"data.root={cfg['root']} is not a {' or '.join(SUFFIXES)} file.")
        return [(None, root)]
    if not root.is_dir():
        raise ConfigError(f"data.root={cfg['root']} is not a folder: data.layout=per_task reads "
                          f"a folder of CSV or Parquet files, one per task.")
    if cfg["task_split"] is not None:
        return [(None, f) for f in _files_in(root)]
    out = []
    for split in _named_splits(cfg):
        folder = root / split
        if not folder.is_dir():
            raise ConfigError(f"Split folder {folder} is missing: data.task_split=null with "
                              f"data.layout=per_task reads <root>/train, <root>/val and "
                              f"<root>/test{_no_val_hint(split)}, or set data.task_split to "
                              f"split the tasks by the seed.")
        out += [(split, f) for f in _files_in(folder)]
    return out


def _named_splits(cfg: dict) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if s != "val" or cfg["num_val_tasks"] > 0)


def _no_val_hint(split: str) -> str:
    return " (or set data.num_val_tasks=0)" if split == "val" else ""


def source_digest(cfg: dict) -> str:
    """sha256 over every source file's content and place, and the reading version: part of the
    task file's key, so an edited table is never served from a stale file."""
    root = Path(cfg["root"])
    base = root.parent if root.is_file() else root
    entries = [[split, str(path.relative_to(base)), decoded.sha256(path)]
               for split, path in source_files(cfg)]
    return hashlib.sha256(json.dumps([READ_VERSION, entries]).encode()).hexdigest()


def _columns(cfg: dict) -> tuple[list[str], list[str]]:
    """(the columns every file must have, the ones read as text)."""
    text = [cfg["target"], *cfg["categorical"]]
    needed = [cfg["target"]]
    if cfg["layout"] == "long":
        needed.append(cfg["task_column"])
        text.append(cfg["task_column"])
        if cfg["split_column"] and cfg["task_split"] is None:
            needed.append(cfg["split_column"])
            text.append(cfg["split_column"])
    return needed, text


def feature_columns(cfg: dict, columns: list[str]) -> list[str]:
    if cfg["features"] is not None:
        return list(cfg["features"])
    skip = {cfg["target"], cfg["task_column"] if cfg["layout"] == "long" else None,
            cfg["split_column"] if cfg["layout"] == "long" else None}
    return [c for c in columns if c not in skip]


def _check_columns(cfg: dict, path: Path, columns: list[str], first: tuple[Path, list[str]] | None
                   ) -> None:
    if first is not None and columns != first[1]:
        missing = [c for c in first[1] if c not in columns]
        extra = [c for c in columns if c not in first[1]]
        what = "; ".join(filter(None, (f"missing {missing}" if missing else "",
                                       f"extra {extra}" if extra else "")))
        raise ConfigError(f"Table {path} has other columns than {first[0]}: "
                          f"{what or 'same names in another order'}. Every task file needs the "
                          f"same columns.")
    needed, _ = _columns(cfg)
    for key, col in (("data.target", cfg["target"]), ("data.task_column", cfg["task_column"]),
                     ("data.split_column", cfg["split_column"])):
        if col in needed and col not in columns:
            raise ConfigError(f"Table {path} has no column {col!r} ({key}); its columns are "
                              f"{', '.join(columns)}.")
    absent = [c for c in feature_columns(cfg, columns) if c not in columns]
    absent += [c for c in cfg["categorical"] if c not in feature_columns(cfg, columns)]
    if absent:
        raise ConfigError(f"data.features / data.categorical name columns {absent} that table "
                          f"{path} does not have (or that are not features); its columns are "
                          f"{', '.join(columns)}.")
    if not feature_columns(cfg, columns):
        raise ConfigError(f"Table {path} has no feature columns besides the target (and task) "
                          f"columns: add features or list them in data.features.")


def _task(cfg: dict, name: str, path: Path, rows: np.ndarray, numeric: np.ndarray,
          categorical: np.ndarray, target: np.ndarray, split: str | None,
          columns: tuple[str, ...]) -> Task:
    return Task(name, path, rows, numeric, categorical, target, _numbers(target), split, columns)


def _read_tasks(cfg: dict) -> list[Task]:
    """Every task, as read and checked for columns and numbers (nothing preprocessed yet)."""
    _, text = _columns(cfg)
    tasks: list[Task] = []
    first = None
    sources = source_files(cfg)
    head = _read_file(sources[0][1], text)  # its float columns are the other files' too
    floats = [f.name for f in head.schema if f.type == pa.float64()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Arrow frees the GIL
        rest = pool.map(lambda source: _read_file(source[1], text, floats), sources[1:])
        for (split, path), table in zip(sources, chain([head], rest), strict=True):
            tasks += _tasks_of(cfg, split, path, table, first)
            first = first or (path, [str(c) for c in table.column_names])
    return tasks


def _tasks_of(cfg: dict, split: str | None, path: Path, table: pa.Table,
              first: tuple[Path, list[str]] | None) -> list[Task]:
    """The tasks of one file (per_task: one; long: every task it names)."""
    columns = [str(c) for c in table.column_names]
    _check_columns(cfg, path, columns, first)
    rows = np.arange(1, table.num_rows + 1)
    numeric_cols = [c for c in feature_columns(cfg, columns) if c not in cfg["categorical"]]
    numeric = _numeric_block(path, table, numeric_cols, rows)
    categorical = np.column_stack([_text(table.column(c)) for c in cfg["categorical"]]
                                  or [np.zeros((table.num_rows, 0), dtype=object)])
    target = _text(table.column(cfg["target"]))
    names_of = (*numeric_cols, *cfg["categorical"])
    if cfg["layout"] == "per_task":
        if not table.num_rows:
            raise ConfigError(f"Table {path} has no rows: task {path.stem!r} needs at least "
                              f"data.k_shot + 1 rows per class.")
        return [_task(cfg, path.stem, path, rows, numeric, categorical, target, split,
                      names_of)]
    if not table.num_rows:
        raise ConfigError(f"Table {path} has no rows.")
    ids = _text(table.column(cfg["task_column"]))
    if any(v is None or v == "" for v in ids):
        i = next(i for i, v in enumerate(ids) if v is None or v == "")
        raise ConfigError(f"Table {_where(path, int(rows[i]))}: the task column "
                          f"{cfg['task_column']!r} is empty. Every row needs its task.")
    splits = (_text(table.column(cfg["split_column"])) if cfg["task_split"] is None
              else None)
    tasks = []
    names, which = np.unique(ids.astype(str), return_inverse=True)
    order = np.argsort(which, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=len(names)))])
    for t, name in enumerate(names):
        idx = order[bounds[t]:bounds[t + 1]]
        split_of = _split_value(cfg, path, splits, str(name), idx)
        tasks.append(_task(cfg, str(name), path, rows[idx], numeric[idx], categorical[idx],
                           target[idx], split_of, names_of))
    return tasks


def _split_value(cfg: dict, path: Path, splits: np.ndarray | None, name: str,
                 idx: np.ndarray) -> str | None:
    if splits is None:
        return None
    values = sorted({str(v) for v in splits[idx]})
    if len(values) != 1 or values[0] not in SPLITS:
        raise ConfigError(f"Task {name!r} in {path}: its split column {cfg['split_column']!r} "
                          f"holds {values}; each task needs one of {', '.join(SPLITS)} on all "
                          f"its rows.")
    return values[0]


# --- checks -------------------------------------------------------------------------------------


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
            raise ConfigError(f"Table {_where(t.source, int(t.rows[r]))}: the target "
                              f"{target!r} is missing (task {t.name!r}). Every row needs its "
                              f"target: fill or remove the row.")
        if cfg["missing"] != "refuse":
            continue
        holes = _missing_features(t)
        if holes.any():
            r, c = (int(v[0]) for v in np.nonzero(holes))
            raise ConfigError(f"Table {_where(t.source, int(t.rows[r]))}, column "
                              f"{t.columns[c]!r}: the value is missing (task {t.name!r}). Fill "
                              f"it, or set data.missing=impute to use the training tasks' "
                              f"medians.")


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
                r = next(i for i, v in enumerate(t.target) if _numbers(np.array([v])) is None)
                raise ConfigError(
                    f"Table {_where(t.source, int(t.rows[r]))}, column {target!r}: "
                    f"{t.target[r]!r} is not a number, and data.task_type=regression needs "
                    f"numeric targets (or set data.task_type=classification).")


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _classes(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """A task's classes (sorted: numerically for numbers, else as text) and each row's class."""
    keys = task.target_numbers if task.target_numbers is not None else task.target.astype(str)
    classes, y = np.unique(keys, return_inverse=True)
    return classes, y.astype(np.int64)


def _check_sizes(cfg: dict, tasks: list[Task]) -> int:
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
        classes, y = _classes(t)
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
                              f"{_no_val_hint(split)}.")
    return out


_READ_MEMO: dict[str, list[Task]] = {}


def read_tasks(cfg: dict) -> list[Task]:
    """Every task, read once per process for unchanged sources and reading settings."""
    keys = ("root", "layout", "task_column", "target", "features", "categorical", "split_column",
            "task_split")
    key = json.dumps([source_digest(cfg), {k: cfg[k] for k in keys}], sort_keys=True)
    if key not in _READ_MEMO:
        _READ_MEMO.clear()  # one set of tables at a time
        _READ_MEMO[key] = _read_tasks(cfg)
    return _READ_MEMO[key]


def check_sources(cfg: dict, rng: np.random.Generator) -> dict[str, list[Task]]:
    """Before a run: every file there, readable and consistent, every task big enough for an
    episode, the split non-empty. ``rng`` is a fresh data stream (it splits the tasks)."""
    tasks = read_tasks(cfg)
    _check_missing(cfg, tasks)
    _check_task_types(cfg, tasks)
    _check_sizes(cfg, tasks)
    return assign_splits(cfg, tasks, rng)


# --- preprocessing ------------------------------------------------------------------------------


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


def _pool(cfg: dict, prep: Preprocessing, tasks: list[Task], ways: int, q: int
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
        _, y = _classes(t)
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


def _query_size(cfg: dict, tasks: list[Task]) -> int:
    """``query_per_class``, capped by what the smallest class (regression: task) leaves."""
    if cfg["task_type"] == REGRESSION:
        smallest = min(len(t) for t in tasks)
    else:
        smallest = min(int(np.bincount(_classes(t)[1]).min()) for t in tasks)
    return min(cfg["query_per_class"], smallest - cfg["k_shot"])


def _fixed(sampler: TaskRowSampler, num: int, rng: np.random.Generator):
    """``num`` episodes cycling over the split's tasks (in an order drawn from ``rng``)."""
    tasks = np.resize(rng.permutation(sampler.num_tasks), num)
    return sampler.episodes(rng, num, tasks), tasks


def generate(cfg: dict, rng: np.random.Generator) -> tuple:
    splits = check_sources(cfg, rng)
    every = [t for ts in splits.values() for t in ts]
    ways = _check_sizes(cfg, every)
    q = _query_size(cfg, every)
    prep = fit(cfg, splits["train"])
    samplers, imputed, unseen = {}, {}, {}
    for split, tasks in splits.items():
        if tasks:
            samplers[split], imputed[split], unseen[split] = _pool(cfg, prep, tasks, ways, q)
    test, test_source = _fixed(samplers["test"], cfg["num_test_tasks"], rng)
    val = None
    if cfg["num_val_tasks"] and "val" in samplers:
        val, _ = _fixed(samplers["val"], cfg["num_val_tasks"], rng)
    train = samplers["train"]
    if cfg["num_train_tasks"]:  # fixed episodes, cycling over the training tasks like the test
        train, _ = _fixed(train, cfg["num_train_tasks"], rng)
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
    info[UNITS] = {"ci_unit": "task", "test_source": test_source,  # the test unit: source task
                   "unit_names": [t.name for t in splits["test"]],
                   "splits": {s: [t.name for t in ts] for s, ts in splits.items()}}
    return train, test, task_type, 1 if task_type == REGRESSION else ways, val, info
