"""Reading tabular tasks: the source files of a layout, their columns, and each task's rows
as read (nothing preprocessed yet), with the problems a reader meets named in one line (a file
that cannot be read, duplicated or missing columns, a non-numeric value in a numeric column,
an empty folder or file, a task without its split)."""

from __future__ import annotations

import hashlib
import json
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

from pipeline.data import decoded
from pipeline.errors import ConfigError

#: Bump when reading or preprocessing changes, so old task files are not reused.
READ_VERSION = 1
SPLITS = ("train", "val", "test")
SUFFIXES = (".csv", ".parquet")


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


def where(path: Path, row: int) -> str:
    line = f" (line {row + 1})" if path.suffix.lower() == ".csv" else ""
    return f"{path}, row {row}{line}"


def read_file(path: Path, text_columns: list[str], floats: Sequence[str] = ()) -> pa.Table:
    """The table, ``text_columns`` as strings (empty cells and NA markers as nulls); ``floats``:
    columns the first file held as float64, read as such (see :func:`_read_csv`)."""
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            table = _read_csv(path, text_columns, floats)
        _check_unique_columns(path, [str(c) for c in table.column_names])
        for c in text_columns:
            if c in table.column_names and not pa.types.is_string(table.schema.field(c).type):
                i = table.column_names.index(c)
                table = table.set_column(i, c, pc.cast(table.column(c), pa.string()))
        return table
    except (OSError, pa.ArrowException) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"Table {path} cannot be read ({type(e).__name__}: {first}). Fix or "
                          f"remove it.") from e


def _check_unique_columns(path: Path, columns: list[str]) -> None:
    """Every column name once: a name given twice would pick either column."""
    seen: dict[str, int] = {}
    for i, c in enumerate(columns, start=1):
        if c in seen:
            line = " (line 1)" if path.suffix.lower() == ".csv" else ""
            raise ConfigError(f"Table {path}, header row{line}, column {c!r}: the name is given "
                              f"twice (columns {seen[c]} and {i}). Give every column its own "
                              f"name, or remove one of them.")
        seen[c] = i


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


def numbers(values: np.ndarray) -> np.ndarray | None:
    """Text as float64, or None if some value is not a number (or missing)."""
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return None


def numeric_column(path: Path, table: pa.Table, col: str, rows: np.ndarray) -> np.ndarray:
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
            raise ConfigError(f"Table {where(path, int(rows[i]))}, column {col!r}: {v!r} is not "
                              f"a number. Fix the value, or list the column in "
                              f"data.categorical if it holds categories.") from None
    return out


def _numeric_block(path: Path, table: pa.Table, cols: list[str], rows: np.ndarray) -> np.ndarray:
    """[rows, numeric features] float64 (NaN = missing): one conversion of the whole block when
    every column is float64 (the usual case; a column at a time cost more than reading a small
    file), else column by column."""
    if cols and all(table.schema.field(c).type == pa.float64() for c in cols):
        return np.array(table.select(cols).to_tensor(null_to_nan=True))
    return np.column_stack([numeric_column(path, table, c, rows) for c in cols]
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
                              f"<root>/test{no_val_hint(split)}, or set data.task_split to "
                              f"split the tasks by the seed.")
        out += [(split, f) for f in _files_in(folder)]
    return out


def _named_splits(cfg: dict) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if s != "val" or cfg["num_val_tasks"] > 0)


def no_val_hint(split: str) -> str:
    return " (or set data.num_val_tasks=0)" if split == "val" else ""


def source_digest(cfg: dict) -> str:
    """sha256 over every source file's content and place, and the reading version: part of the
    task file's key, so an edited table is never served from a stale file."""
    root = Path(cfg["root"])
    base = root.parent if root.is_file() else root
    entries = [[split, str(path.relative_to(base)), decoded.sha256(path)]
               for split, path in source_files(cfg)]
    return hashlib.sha256(json.dumps([READ_VERSION, entries]).encode()).hexdigest()


def columns_of(cfg: dict) -> tuple[list[str], list[str]]:
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
    needed, _ = columns_of(cfg)
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
    return Task(name, path, rows, numeric, categorical, target, numbers(target), split, columns)


def _read_tasks(cfg: dict) -> list[Task]:
    """Every task, as read and checked for columns and numbers (nothing preprocessed yet)."""
    _, text = columns_of(cfg)
    tasks: list[Task] = []
    first = None
    sources = source_files(cfg)
    head = read_file(sources[0][1], text)  # its float columns are the other files' too
    floats = [f.name for f in head.schema if f.type == pa.float64()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Arrow frees the GIL
        rest = pool.map(lambda source: read_file(source[1], text, floats), sources[1:])
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
        raise ConfigError(f"Table {where(path, int(rows[i]))}: the task column "
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


