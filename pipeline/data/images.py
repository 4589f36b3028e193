"""Few-shot episodes over a labelled image collection on disk (``data=images``).

The layouts the standard benchmarks are distributed in (``data.layout``):

* ``folders``: ``<root>/<split>/<class>/*.png|jpg|jpeg`` for the splits ``train``, ``val``,
  ``test`` (CIFAR-FS, FC100 and the usual miniImageNet / tieredImageNet folder copies); with
  ``data.class_split`` a flat ``<root>/<class>/*`` whose classes are split by the data seed;
* ``csv``: the Ravi & Larochelle split files ``<root>/{train,val,test}.csv`` (header
  ``filename,label``) next to the images in ``<root>/images/``;
* ``pickle``: the miniImageNet cache pickles ``<root>/mini-imagenet-cache-{split}.pkl``, each a
  dict with ``image_data`` ([N, H, W, 3] uint8) and ``class_dict`` (class -> image indices);
  MetaOptNet's CIFAR-FS / FC100 pickles (``data`` and ``labels``;
  ``"data.pickle_file='CIFAR_FS_{split}.pickle'"``) are read too. They are read with an
  unpickler that only builds numpy arrays and plain containers, so a pickle cannot run code.

Images are decoded once (RGB, Lanczos-resized to ``image_size`` unless it is null) into
``<data.cache_dir>/images-<key>.npz`` (uint8; the model scales them to 0..1), keyed by the
sha256 of every source file and the decoding settings (:func:`source_digest`, which also keys
the task file). The validation split is read only when ``num_val_tasks`` > 0.

Training episodes are drawn on the fly from the training classes
(:class:`~pipeline.data.episodes.EpisodeSampler` over a flat pool; classes may differ in size);
``num_test_tasks`` test and ``num_val_tasks`` validation episodes are drawn once from the data
seed and stored as indices into their split's pool
(:class:`~pipeline.data.episodes.EpisodeSet`).

Structural problems (no such folder, a missing split, an empty folder, a class with fewer
images than an episode needs, a CSV naming an absent file) are found by :func:`check_sources`
before a run starts; an unreadable image, a malformed pickle or mixed sizes without resizing
are found while decoding and fail the run, each with one line naming the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config.data import ImagesDataConfig
from pipeline.data import CLASSIFICATION, decoded
from pipeline.data.episodes import EpisodeSampler, EpisodeSet
from pipeline.data.family import CI_EPISODE, FamilyBase, GeneratedTasks
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Bump when decoding changes, so old decoded caches are not reused (2: 16-bit images scaled
#: to 8 bits, hidden files skipped).
DECODE_VERSION = 2
SPLITS = ("train", "val", "test")
#: The split a flat folder's classes are decoded as, before the seed splits them.
ALL = "all"
EXTENSIONS = (".png", ".jpg", ".jpeg")
#: Globals a miniImageNet cache pickle may name (numpy arrays, scalars and dtypes).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
}


@dataclass(frozen=True)
class ClassFiles:
    """One class of a split: its name and image files (folders, csv layouts)."""

    name: str
    files: tuple[Path, ...]
    #: Where it comes from, for messages (a folder, or a CSV file and label).
    where: str


# --- what is on disk ----------------------------------------------------------------------------


def needed_splits(cfg: dict) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if s != "val" or cfg["num_val_tasks"] > 0)


def _no_val_hint(split: str) -> str:
    return (" (or set data.num_val_tasks=0 to run without a validation split)"
            if split == "val" else "")


def _hidden(path: Path) -> bool:
    """Names starting with '.' are never data: macOS's ``._*.png`` resource forks and
    ``.DS_Store``, Jupyter's ``.ipynb_checkpoints`` folders, editors' swap files."""
    return path.name.startswith(".")


def _images_in(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir()
                        if p.is_file() and not _hidden(p) and p.suffix.lower() in EXTENSIONS))


def _class_folders(folder: Path, split: str) -> list[ClassFiles]:
    if not folder.is_dir():
        raise ConfigError(
            f"Image split folder {folder} is missing: data.layout=folders needs "
            f"<root>/train, <root>/val and <root>/test, each with one folder per class"
            f"{_no_val_hint(split)}, or set data.class_split=[0.64,0.16,0.2] to split a flat "
            f"folder of classes by the seed.")
    classes = [ClassFiles(d.name, _images_in(d), str(d))
               for d in sorted(folder.iterdir()) if d.is_dir() and not _hidden(d)]
    if not classes:
        raise ConfigError(f"Image folder {folder} is empty: it holds no class folders "
                          f"(<class>/*{'|'.join(EXTENSIONS)}).")
    for c in classes:
        if not c.files:
            raise ConfigError(f"Image class folder {c.where} is empty: it holds no "
                              f"{', '.join(EXTENSIONS)} files. Remove it or add its images.")
    return classes


def _csv_classes(root: Path, split: str) -> list[ClassFiles]:
    path = root / f"{split}.csv"
    if not path.is_file():
        raise ConfigError(f"Split file {path} is missing: data.layout=csv needs train.csv, "
                          f"val.csv and test.csv (filename,label) next to {root / 'images'}"
                          f"{_no_val_hint(split)}.")
    by_label: dict[str, list[Path]] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = [h.strip() for h in next(rows, [])]
        if header[:2] != ["filename", "label"]:
            raise ConfigError(f"Split file {path} does not start with the header "
                              f"'filename,label' (it has {','.join(header)!r}).")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise ConfigError(f"Split file {path}, line {line}, is not 'filename,label': "
                                  f"{','.join(row)!r}.")
            if not row[0].strip():
                raise ConfigError(f"Split file {path}, line {line}, column 'filename' is empty: "
                                  f"each row names an image file in {root / 'images'}.")
            image = root / "images" / row[0].strip()
            if not image.is_file():
                raise ConfigError(f"Image {image} (named in {path}, line {line}) is missing.")
            by_label.setdefault(row[1].strip(), []).append(image)
    if not by_label:
        raise ConfigError(f"Split file {path} is empty: it lists no images.")
    return [ClassFiles(label, tuple(files), f"{path} label {label}")
            for label, files in sorted(by_label.items())]


def _pickle_file(cfg: dict, split: str) -> Path:
    path = Path(cfg["root"]) / cfg["pickle_file"].format(split=split)
    if not path.is_file():
        raise ConfigError(f"Pickle {path} is missing: data.layout=pickle needs one file per "
                          f"split, named by data.pickle_file={cfg['pickle_file']!r} with {{split}} "
                          f"= train, val, test{_no_val_hint(split)}.")
    return path


def list_classes(cfg: dict) -> dict[str, list[ClassFiles]]:
    """Split (``all`` for a flat folder) -> its classes, for the folders and csv layouts."""
    root = Path(cfg["root"])
    if cfg["class_split"] is not None:
        return {ALL: _class_folders(root, ALL)}
    if cfg["layout"] == "csv":
        return {s: _csv_classes(root, s) for s in needed_splits(cfg)}
    return {s: _class_folders(root / s, s) for s in needed_splits(cfg)}


def _check_root(cfg: dict) -> Path:
    root = Path(cfg["root"])
    if not root.is_dir():
        raise ConfigError(f"data.root={cfg['root']} is not a folder: point it at your copy of "
                          f"the image collection (data.layout={cfg['layout']}).")
    return root


def _needs(cfg: dict) -> dict[str, tuple[int, int]]:
    """Split -> (classes an episode needs, images per class it needs)."""
    n, k, q = cfg["num_classes"], cfg["k_shot"], cfg["query_per_class"]
    train = (cfg["train_num_classes"] or n, k + (cfg["train_query_per_class"] or q))
    return {"train": train, "val": (n, k + q), "test": (n, k + q)}


def _check_sizes(split: str, names: list[str], sizes: np.ndarray, cfg: dict,
                 where: list[str] | None = None) -> None:
    """Enough classes for an episode, and every class big enough for one."""
    ways, per_class = _needs(cfg)[split]
    if len(names) < ways:
        raise ConfigError(f"The {split} split has {len(names)} classes, fewer than the {ways} "
                          f"an episode needs (data.num_classes / data.train_num_classes).")
    small = int(np.argmin(sizes))
    if sizes[small] < per_class:
        which = "train_query_per_class" if split == "train" else "query_per_class"
        raise ConfigError(
            f"Class {(where or names)[small]} ({split} split) has {int(sizes[small])} images, "
            f"fewer than data.k_shot + data.{which} = {per_class} that each class of an episode "
            f"needs: lower them, or remove the class.")


def split_counts(num_classes: int, fractions: list[float]) -> tuple[int, int, int]:
    train = round(fractions[0] * num_classes)
    val = round(fractions[1] * num_classes)
    return train, val, num_classes - train - val


def assign_classes(num_classes: int, fractions: list[float], rng: np.random.Generator
                   ) -> dict[str, np.ndarray]:
    """A flat folder's classes (sorted by name) split by the data seed: split -> class indices.
    The data stream's first draw, so :func:`check_sources` can check the split before a run."""
    order = rng.permutation(num_classes)
    train, val, _ = split_counts(num_classes, fractions)
    return {"train": order[:train], "val": order[train:train + val], "test": order[train + val:]}


def check_sources(cfg: dict, rng: np.random.Generator) -> None:
    """Before a run: the layout's files are there, no folder is empty, each split has enough
    classes and each class enough images (for pickles: that the files exist; their classes are
    checked when read). ``rng`` is a fresh data stream (flat folders are split by it)."""
    _check_root(cfg)
    if cfg["layout"] == "pickle":
        for split in needed_splits(cfg):
            _pickle_file(cfg, split)
        return
    listing = list_classes(cfg)
    if ALL in listing:
        classes = listing[ALL]
        listing = {s: [classes[i] for i in idx]
                   for s, idx in assign_classes(len(classes), cfg["class_split"], rng).items()
                   if s in needed_splits(cfg)}
    for split, classes in listing.items():
        _check_sizes(split, [c.name for c in classes],
                     np.array([len(c.files) for c in classes]), cfg, [c.where for c in classes])


def _source_files(cfg: dict) -> list[tuple[str, str, Path]]:
    """(split, class, file) of every source file, in a fixed order."""
    _check_root(cfg)
    if cfg["layout"] == "pickle":
        return [(s, "", _pickle_file(cfg, s)) for s in needed_splits(cfg)]
    out = []
    root = Path(cfg["root"])
    if cfg["layout"] == "csv":
        out += [(s, "", root / f"{s}.csv") for s in needed_splits(cfg)]
    for split, classes in list_classes(cfg).items():
        out += [(split, c.name, f) for c in classes for f in c.files]
    return out


def source_digest(cfg: dict) -> str:
    """sha256 over every source file's content (and place, class) and the decoding settings:
    the decoded cache's key, and part of the task file's."""
    root = Path(cfg["root"])
    entries = [[split, name, str(path.relative_to(root)), decoded.sha256(path)]
               for split, name, path in _source_files(cfg)]
    settings = [cfg["layout"], cfg["image_size"], DECODE_VERSION]
    return hashlib.sha256(json.dumps([settings, entries]).encode()).hexdigest()


# --- decoding -----------------------------------------------------------------------------------


#: Pillow's modes of 16-bit (and 32-bit integer) single-channel images, which
#: ``convert("RGB")`` clips to 255 instead of scaling: scaled to 8 bits by 1/257 (65535 -> 255).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(im):
    """An RGB image of 8 bits per channel; 16-bit greyscale scaled, not saturated."""
    from PIL import Image

    if im.mode not in _WIDE_MODES:
        return im.convert("RGB")
    wide = np.asarray(im).astype(np.float64)
    grey = np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")


def _decode_file(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = _to_rgb(im)
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.LANCZOS)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"Image {path} cannot be read ({type(e).__name__}: {e}). Replace or "
                        f"remove it.") from e


def _check_same_size(images: list[np.ndarray], where: list[str]) -> None:
    first = images[0].shape
    for im, name in zip(images, where, strict=True):
        if im.shape != first:
            raise DataError(
                f"Images differ in size and data.image_size=null keeps them as they are: "
                f"{where[0]} is {first[1]}x{first[0]}, {name} is {im.shape[1]}x{im.shape[0]}. "
                f"Set data.image_size (e.g. 84) to resize them all.")


def _decode_classes(classes: list[ClassFiles], size: int | None) -> tuple[np.ndarray, ...]:
    """A split's classes as a flat pool [N, H, W, 3], images per class and class names."""
    files = [f for c in classes for f in c.files]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL
        images = list(pool.map(lambda f: _decode_file(f, size), files))
    if size is None:
        _check_same_size(images, [str(f) for f in files])
    return (np.stack(images), np.array([len(c.files) for c in classes], dtype=np.int64),
            np.array([c.name for c in classes]))


class _ArraysOnly(pickle.Unpickler):
    """Builds numpy arrays and plain containers only: a pickle cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a miniImageNet "
                                         f"cache pickle does not need")
        return super().find_class(module, name)


def _decode_pickle(path: Path, size: int | None) -> tuple[np.ndarray, ...]:
    """A miniImageNet cache pickle (or a CIFAR-FS / FC100 one with ``data`` and ``labels``) as
    a flat pool (classes by name, or by label), images per class and class names."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            content = _ArraysOnly(f, encoding="latin1").load()
        if "class_dict" in content:
            data, class_dict = content["image_data"], content["class_dict"]
            names = sorted(class_dict)
            index = [np.asarray(class_dict[n], dtype=np.int64).ravel() for n in names]
        else:  # MetaOptNet's CIFAR-FS / FC100 pickles: data and a label per image
            data, labels = content["data"], np.asarray(content["labels"])
            classes = np.unique(labels)
            names = [str(c) for c in classes]
            index = [np.flatnonzero(labels == c) for c in classes]
        if not (isinstance(data, np.ndarray) and data.ndim == 4 and data.shape[-1] == 3):
            raise ValueError(f"image_data must be an [N, H, W, 3] array, got "
                             f"{getattr(data, 'shape', type(data).__name__)}")
        flat = np.concatenate(index) if index else np.zeros(0, np.int64)
        if data.dtype != np.uint8:  # refused, not guessed: [0, 1] and [0, 255] floats both occur
            values = f", values {data.min():.4g}..{data.max():.4g}" if data.size else ""
            raise ValueError(
                f"its images are {data.dtype}{values}, not uint8 0..255; a cast would turn "
                f"[0, 1] floats into 0s and 1s, so convert them yourself, e.g. "
                f"(x * 255).round().astype(np.uint8) for [0, 1] data")
        if flat.size and (flat.min() < 0 or flat.max() >= len(data)):
            raise ValueError(f"class_dict names image {int(flat.max())}, image_data has "
                             f"{len(data)}")
    except (OSError, EOFError, KeyError, TypeError, ValueError, AttributeError,
            pickle.UnpicklingError) as e:
        raise DataError(f"Pickle {path} is not a miniImageNet cache pickle (a dict with "
                        f"image_data [N, H, W, 3] uint8 and class_dict class -> indices, or "
                        f"data and labels): {type(e).__name__}: {e}.") from e
    if not names:
        raise DataError(f"Pickle {path} is empty: its class_dict names no classes.")
    in_order = np.array_equal(flat, np.arange(len(data)))
    images = np.asarray(data if in_order else data[flat], dtype=np.uint8)
    if size is not None and images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS))
                           for im in images])
    return images, np.array([len(i) for i in index], dtype=np.int64), np.array(names)


def load_images(cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Split -> (pool [N, H, W, 3] uint8, images per class, class names), decoded once and
    then read from the cache while the sources are unchanged."""
    cache = decoded.cache_file(cfg["cache_dir"], "images", source_digest(cfg))
    arrays = decoded.read(cache)
    if arrays is not None:
        splits = sorted({k.rsplit("_", 1)[0] for k in arrays})
        return {s: (arrays[f"{s}_images"], arrays[f"{s}_sizes"], arrays[f"{s}_names"])
                for s in splits}
    size = cfg["image_size"]
    if cfg["layout"] == "pickle":
        out = {s: _decode_pickle(_pickle_file(cfg, s), size) for s in needed_splits(cfg)}
    else:
        out = {s: _decode_classes(c, size) for s, c in list_classes(cfg).items()}
    decoded.write(cache, {f"{s}_{k}": a for s, arrays in out.items()
                          for k, a in zip(("images", "sizes", "names"), arrays, strict=True)})
    log.info("decoded %s: %s", cfg["root"], ", ".join(
        f"{s} {len(n)} classes / {len(p)} images" for s, (p, _, n) in out.items()))
    return out


def _subset(pool: np.ndarray, sizes: np.ndarray, names: np.ndarray, idx: np.ndarray):
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in idx])
    return pool[rows], sizes[idx], names[idx]


class Images(FamilyBase[ImagesDataConfig]):
    """``data=images``: test episodes drawn from the held-out classes. The unit of its CI is
    the episode (the field's convention); each episode's classes are recorded, so a CI that
    resamples classes can be computed too."""

    def source_digest(self) -> str:
        return source_digest(self.settings)

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        return generate(self.settings, rng)


def generate(cfg: dict, rng: np.random.Generator) -> GeneratedTasks:
    splits = load_images(cfg)
    if cfg["class_split"] is not None:
        every = splits[ALL]
        splits = {s: _subset(*every, idx) for s, idx in
                  assign_classes(len(every[1]), cfg["class_split"], rng).items()}
    for split in needed_splits(cfg):
        _pool, sizes, names = splits[split]
        _check_sizes(split, list(names), sizes, cfg)
    n, k, q = cfg["num_classes"], cfg["k_shot"], cfg["query_per_class"]
    train_n = cfg["train_num_classes"] or n
    train_q = cfg["train_query_per_class"] or q
    pool, sizes, _ = splits["train"]
    sampler = EpisodeSampler(pool, (0,), train_n, k, train_q, sizes)
    test = EpisodeSet.sample(splits["test"][0], splits["test"][1], cfg["num_test_tasks"], n, k,
                             q, rng)
    train = sampler.sample(rng, cfg["num_train_tasks"]) if cfg["num_train_tasks"] else sampler
    val = val_classes = None
    if cfg["num_val_tasks"]:
        val = EpisodeSet.sample(splits["val"][0], splits["val"][1], cfg["num_val_tasks"], n, k,
                                q, rng)
        val_classes = val.classes(splits["val"][1])
    names = {s: [str(c) for c in splits[s][2]] for s in needed_splits(cfg)}
    return GeneratedTasks(train, test, CLASSIFICATION, n, val, ci_unit=CI_EPISODE,
                          test_classes=test.classes(splits["test"][1]), val_classes=val_classes,
                          splits=names)
