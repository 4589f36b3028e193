"""Task data: every family produces a :class:`TaskSet` of fixed-shape support/query arrays.

A task family is a class registered on its schema in :mod:`pipeline.config.data` (the contract:
:mod:`pipeline.data.family`): made from its typed config, it generates a
:class:`~pipeline.data.family.GeneratedTasks`. Sizes are fixed per family config, so a whole
split is one stacked array per field, ready to be sliced into vectorised meta-batches. A family
read from files on disk also hashes those files' contents (``source_digest``): the hash keys the
cached task file too, so edited sources are never served from a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import registry
from pipeline.config.fields import CLASSIFICATION as CLASSIFICATION
from pipeline.config.fields import REGRESSION as REGRESSION
from pipeline.data.episodes import EpisodeSampler, EpisodeSet, TaskRowSampler
from pipeline.data.family import CI_EPISODE, TRACE_FIELDS, Family, GeneratedTasks
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FIELDS = ("support_x", "support_y", "query_x", "query_y")


@dataclass(frozen=True)
class TaskSplit:
    """Stacked tasks: ``support_x`` [tasks, support, features], ``support_y`` [tasks, support]."""

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def take(self, idx: np.ndarray | slice) -> TaskSplit:
        """The tasks at ``idx`` (a meta-batch or a chunk of test tasks)."""
        return TaskSplit(*(getattr(self, f)[idx] for f in FIELDS))


#: Fixed tasks: stacked arrays, or episodes stored as indices into a pool of images.
Episodes = TaskSplit | EpisodeSet


@dataclass(frozen=True)
class TaskSet:
    #: Fixed tasks, or (families too large to enumerate) an on-demand episode sampler.
    train: TaskSplit | EpisodeSampler | TaskRowSampler
    test: Episodes
    task_type: str
    #: Number of classes (classification) or output dimension (regression).
    num_outputs: int
    #: sha256 of the arrays' contents (names, dtypes, shapes, bytes): the data's identity.
    fingerprint: str
    path: Path | None = None
    #: Fixed validation tasks (model selection, ``meta_train.validate_every``), if the family
    #: has a validation split.
    val: Episodes | None = None
    #: What the family did to its sources (choices and counts, e.g. a table's preprocessing),
    #: stored with the file and recorded as the run's tags.
    info: dict = field(default_factory=dict)
    #: Where the test episodes come from (see :class:`~pipeline.data.family.GeneratedTasks`):
    #: the independent unit of a test CI (``episode`` or ``task``), each episode's source task
    #: (an index into ``unit_names``) or classes (indices into ``splits["test"]``), and the
    #: names of each split's tasks or classes. A file written before these existed loads with
    #: these defaults.
    ci_unit: str = CI_EPISODE
    test_source: np.ndarray | None = None
    test_classes: np.ndarray | None = None
    splits: dict[str, list[str]] = field(default_factory=dict)
    unit_names: list[str] = field(default_factory=list)
    val_source: np.ndarray | None = None
    val_classes: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.take(slice(0, 1)).support_x.shape[2:])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in _arrays(self.train, self.test, self.val).values())


def _split_arrays(name: str, split: TaskSplit | EpisodeSampler | TaskRowSampler | EpisodeSet
                  ) -> dict[str, np.ndarray]:
    if isinstance(split, TaskSplit):
        return {f"{name}_{f}": getattr(split, f) for f in FIELDS}
    return {f"{name}_{k}": v for k, v in split.arrays().items()}


def _arrays(train: TaskSplit | EpisodeSampler | TaskRowSampler, test: Episodes,
            val: Episodes | None = None) -> dict[str, np.ndarray]:
    out = _split_arrays("test", test) | _split_arrays("train", train)
    return out | (_split_arrays("val", val) if val is not None else {})


def fingerprint_arrays(arrays: dict[str, np.ndarray]) -> str:
    """A content hash independent of how the file was compressed."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def split_support_query(x: np.ndarray, y: np.ndarray, k_shot: int, num_classes: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per task, ``k_shot`` random examples of each class form the support set, the rest the query.

    ``x`` is [tasks, samples, features] and ``y`` [tasks, samples] with integer labels. Both sets
    are shuffled, so no position leaks a label.
    """
    t, n = y.shape
    s = k_shot * num_classes
    sup_idx = np.empty((t, s), dtype=np.int64)
    qry_idx = np.empty((t, n - s), dtype=np.int64)
    for i in range(t):
        order = rng.permutation(n)
        chosen = []
        for c in range(num_classes):
            of_c = order[y[i, order] == c]
            if len(of_c) < k_shot:
                raise ConfigError(
                    f"data.k_shot={k_shot} is too large: test/train task {i} has only {len(of_c)} "
                    f"examples of class {c}. Lower data.k_shot or raise data.samples_per_task."
                )
            chosen.append(of_c[:k_shot])
        sup = rng.permutation(np.concatenate(chosen))
        mask = np.ones(n, dtype=bool)
        mask[sup] = False
        sup_idx[i], qry_idx[i] = sup, rng.permutation(np.flatnonzero(mask))
    take = lambda a, idx: np.take_along_axis(a, idx[..., None] if a.ndim == 3 else idx, axis=1)  # noqa: E731
    return take(x, sup_idx), take(y, sup_idx), take(x, qry_idx), take(y, qry_idx)


def family_of(cfg_dict: dict) -> Family:
    """The family of a data config given as a dict (the form the task file is keyed by)."""
    opt = registry.lookup("data", cfg_dict["family"])
    return registry.build("data", opt.name, opt.schema(**cfg_dict))


def source_digest(cfg_dict: dict) -> str | None:
    """The family's hash of its source files, if it reads any."""
    return family_of(cfg_dict).source_digest()


def data_file(cfg_dict: dict, seed: int, data_dir: Path) -> Path:
    """Cache path keyed by the family config and the seed (and the content of the family's
    source files, where it reads any): same inputs, same file."""
    key = {"data": cfg_dict, "seed": seed}
    digest = source_digest(cfg_dict)
    if digest is not None:
        key["sources"] = digest
    key = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    return Path(data_dir) / f"{cfg_dict['family']}-{key.hexdigest()[:16]}.npz"


def save(path: Path, train: TaskSplit | EpisodeSampler | TaskRowSampler, test: Episodes, meta: dict,
         val: Episodes | None = None, compress: bool = True) -> str:
    """Write the (compressed) array file atomically; return its content fingerprint."""
    arrays = _arrays(train, test, val)
    fp = fingerprint_arrays(arrays)
    meta = {**meta, "fingerprint": fp}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # parallel jobs may write it at once
    write = np.savez_compressed if compress else np.savez
    write(tmp, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
    tmp.replace(path)
    return fp


def _origin_differences(stored: dict, expected: dict) -> list[str]:
    """``key=stored (this run: expected)`` for each generating setting that differs."""
    flat = lambda d: {f"data.{k}": v for k, v in d["config"].items()} | {"seed": d["seed"]}  # noqa: E731
    a, b = flat(stored), flat(json.loads(json.dumps(expected)))
    return [f"{k}={a.get(k, '<absent>')!r} (this run: {b.get(k, '<absent>')!r})"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load(path: Path, expected_fingerprint: str | None = None,
         expected_origin: dict | None = None) -> TaskSet:
    """Read a data file and verify its contents against the fingerprint stored with it.

    ``expected_origin`` (``{"config": ..., "seed": ...}``) must match the config and seed the
    file says it was generated from: a valid file of another config is refused, not used.
    """
    return _load(path, expected_fingerprint, expected_origin)[0]


def _load(path: Path, expected_fingerprint: str | None = None,
          expected_origin: dict | None = None) -> tuple[TaskSet, dict]:
    """:func:`load`, and the file's metadata."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k != "meta"}
            meta = json.loads(str(f["meta"]))
    except FileNotFoundError:
        raise
    except Exception as e:  # zip/zlib/json errors all mean the same thing to the user
        raise DataError(f"Data file {path} is unreadable or corrupt ({e}). Delete it to "
                         f"regenerate it from the config.") from e
    if expected_origin is not None:
        differences = _origin_differences({"config": meta.get("config", {}),
                                           "seed": meta.get("seed")}, expected_origin)
        if differences:
            raise DataError(f"Data file {path} was generated from another config or seed: "
                            f"{'; '.join(differences)}. It is not used; delete it to "
                            f"regenerate it from this run's config.")
    fp = fingerprint_arrays(arrays)
    for want, what in ((meta.get("fingerprint"), "the fingerprint stored in it"),
                       (expected_fingerprint, "the expected fingerprint")):
        if want is not None and fp != want:
            raise DataError(f"Data file {path} does not match {what}: content sha256 {fp[:12]}… "
                             f"!= {want[:12]}…. The file was altered; delete it to regenerate it.")
    if "train_pool" in arrays:
        train = EpisodeSampler.from_arrays(_prefixed(arrays, "train"))
    elif "train_rows" in arrays:
        train = TaskRowSampler.from_arrays(_prefixed(arrays, "train"))
    else:
        train = _episodes(arrays, "train")
    val = _episodes(arrays, "val") if "val_support_y" in arrays else None
    tasks = TaskSet(train, _episodes(arrays, "test"), meta["task_type"], int(meta["num_outputs"]),
                    fp, path, val, meta.get("info", {}), **_from_trace(meta.get(TRACE, {})))
    return tasks, meta


#: The task file's metadata key of the episodes' trace (JSON, outside the fingerprint: the
#: fingerprint covers the task arrays, and stays what it was before tasks carried a trace).
TRACE = "trace"
_INDEX_FIELDS = ("test_source", "val_source", "test_classes", "val_classes")


def _trace_of(g: GeneratedTasks) -> dict:
    """The trace fields of generated tasks (keyword arguments of :class:`TaskSet`)."""
    return {"ci_unit": g.ci_unit, "test_source": g.test_source, "val_source": g.val_source,
            "test_classes": g.test_classes, "val_classes": g.val_classes,
            "splits": {k: list(v) for k, v in g.splits.items()},
            "unit_names": list(g.unit_names)}


def _to_json(trace: dict) -> dict:
    return {k: (np.asarray(v).tolist() if k in _INDEX_FIELDS and v is not None else v)
            for k, v in trace.items()}


def _from_trace(trace: dict) -> dict:
    """TaskSet fields from a stored trace (absent ones: the defaults)."""
    out = {k: v for k, v in trace.items() if k in TRACE_FIELDS}
    for k in _INDEX_FIELDS:
        if out.get(k) is not None:
            out[k] = np.asarray(out[k], dtype=np.int64)
    return out


def _prefixed(arrays: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {k[len(name) + 1:]: v for k, v in arrays.items() if k.startswith(f"{name}_")}


def _episodes(arrays: dict[str, np.ndarray], name: str) -> Episodes:
    if f"{name}_pool" in arrays:
        return EpisodeSet.from_arrays(_prefixed(arrays, name))
    return TaskSplit(*(arrays[f"{name}_{f}"] for f in FIELDS))


def generate_or_load(cfg_dict: dict, seed: int, data_dir: Path, cache: bool = True) -> TaskSet:
    """The ``generate`` stage: build the family's tasks from the seed, or reuse the cached file.

    A cached file written before task files carried the episodes' trace is generated again
    once, and replaced if its tasks are the same (same fingerprint), so it gains the trace."""
    family_name = cfg_dict["family"]
    family = family_of(cfg_dict)
    path = data_file(cfg_dict, seed, data_dir)
    cached = None
    if cache and path.exists():
        cached, meta = _load(path, expected_origin={"config": cfg_dict, "seed": seed})
        if TRACE in meta:
            return cached
    g = family.generate(stream_rng(seed, "data"))
    meta = {"family": family_name, "seed": seed, "config": cfg_dict, "task_type": g.task_type,
            "num_outputs": g.num_outputs, TRACE: _to_json(_trace_of(g))} | (
        {"info": g.info} if g.info else {})
    if cached is not None and fingerprint_arrays(_arrays(g.train, g.test, g.val)) \
            != cached.fingerprint:
        log.warning("data file %s predates the episodes' trace, and this code generates other "
                    "tasks from its config: it is used as it is, without the trace", path)
        return cached
    fp = save(path, g.train, g.test, meta, g.val, family.compress)
    return TaskSet(g.train, g.test, g.task_type, g.num_outputs, fp, path, g.val, g.info,
                   **_trace_of(g))


#: Independent random streams derived from the one seed (numpy SeedSequence spawn keys).
SEED_STREAMS = {"data": 1, "init": 2, "sampling": 3, "scratch": 4, "pretrain": 5, "baselines": 6}


def stream_rng(seed: int, stream: str) -> np.random.Generator:
    """The generator of one named stream (``data``: what a family's ``generate`` gets)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAMS[stream],)))


def derive_seed(seed: int, stream: str) -> int:
    """A 31-bit seed for one named stream, derived from the run's one seed."""
    ss = np.random.SeedSequence(seed, spawn_key=(SEED_STREAMS[stream],))
    return int(ss.generate_state(1)[0] >> 1)
