"""Omniglot (Lake et al., 2015) from the official zips, in the standard few-shot protocols.

Source files: ``images_background.zip`` and ``images_evaluation.zip`` (or any zips with the same
layout ``images_<split>/<Alphabet>/characterNN/<id>_<drawer>.png``) in the folder ``data.root``.
They are checked against known sha256 sums (``data.checksums``, then a ``SHA256SUMS`` file next
to them) and their zip CRCs, then decoded once - inverted so ink is 255 on a 0 background,
resized to ``image_size`` with Lanczos filtering, uint8 - into
``<data.cache_dir>/omniglot-images-<key>.npz``, keyed by the zips' sha256 and the decoding
settings; later runs load that file in about a second.

Characters are ordered conventionally: zips in config order, then alphabets, characters and
drawers by name. Protocols (``data.protocol``):

* ``vinyals`` (Vinyals et al. 2016, MAML, ProtoNets): all characters of all zips are pooled;
  ``num_train_characters`` (1,200) are for meta-training, the rest (423) for meta-testing. With
  ``character_order=seed`` the characters are shuffled by the data seed first (as MAML's code
  does); with ``conventional`` the first 1,200 in the order above are taken (all 964 background
  characters and the first 236 evaluation ones).
* ``lake``: meta-train on the first zip's characters (background), meta-test on the second's.

With ``num_val_characters`` > 0 the last that many training characters (in the order above) are
held out as a validation split, from which ``num_val_tasks`` fixed validation episodes are drawn
(``meta_train.validate_every``); 172 gives the ProtoNets code's 1,028 / 172 / 423 split.

Every training character rotated by each of ``train_rotations`` is its own class (4 x 1,200 =
4,800 classes); test characters by ``test_rotations`` (default: unrotated only). Training
episodes are sampled on the fly (:class:`~pipeline.data.episodes.EpisodeSampler`) unless
``num_train_tasks > 0`` fixes that many; ``num_test_tasks`` test episodes are drawn once from the
data seed and stored like any other task set.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.config.data import OmniglotDataConfig
from pipeline.data import CLASSIFICATION, TaskSplit, decoded
from pipeline.data.decoded import sha256
from pipeline.data.episodes import EpisodeSampler, sample_traced_episodes
from pipeline.data.family import CI_EPISODE, FamilyBase, GeneratedTasks
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "https://github.com/brendenlake/omniglot (folder python/)"
#: Bump when decoding changes, so old decoded caches are not reused.
DECODE_VERSION = 1
EXAMPLES_PER_CHARACTER = 20
_PNG = re.compile(r"^[^/]+/([^/]+)/([^/]+)/([^/]+)\.png$")


def _zip_names(cfg: dict) -> list[str]:
    return [cfg["background_zip"], cfg["evaluation_zip"]]


def _missing_error(path: Path, cfg: dict) -> ConfigError:
    return ConfigError(
        f"Omniglot file {path} is missing (data.root={cfg['root']}). Put the official zips "
        f"{cfg['background_zip']!r} and {cfg['evaluation_zip']!r} in that folder (they come from "
        f"{SOURCE}), point data.root at the folder that holds them, or set data.download=true to "
        f"fetch them from data.url={cfg['url']}. Nothing was written."
    )


def expected_checksums(cfg: dict) -> dict[str, str]:
    """Known sha256 by file name: ``<data.root>/SHA256SUMS``, overridden by ``data.checksums``."""
    known: dict[str, str] = {}
    sums = Path(cfg["root"]) / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                known[parts[1].lstrip("*")] = parts[0].lower()
    known.update({k: str(v).lower() for k, v in (cfg.get("checksums") or {}).items()})
    return known


def download(cfg: dict) -> None:
    """Fetch each missing zip from ``data.url`` (the official repository's ``python/`` folder)."""
    root = Path(cfg["root"])
    for name in _zip_names(cfg):
        target = root / name
        if target.exists():
            continue
        url = f"{cfg['url'].rstrip('/')}/{Path(name).name}"
        log.info("downloading %s -> %s", url, target)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
        except OSError as e:
            raise ConfigError(f"Could not download Omniglot file {url} ({e}). Download it by hand "
                              f"from {SOURCE} into data.root={root}, or fix data.url.") from e
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(payload)
        tmp.replace(target)


def check_sources(cfg: dict) -> list[tuple[Path, str]]:
    """Each source zip with its sha256, or a :class:`ConfigError` if one is missing or corrupt."""
    known = expected_checksums(cfg)
    out = []
    for name in _zip_names(cfg):
        path = Path(cfg["root"]) / name
        if not path.is_file():
            raise _missing_error(path, cfg)
        digest = sha256(path)
        want = known.get(name)
        if want is not None and digest != want:
            raise ConfigError(
                f"Omniglot file {path} is corrupt or not the expected file: its sha256 is "
                f"{digest[:16]}…, expected {want[:16]}… (from data.checksums or "
                f"{Path(cfg['root']) / 'SHA256SUMS'}). Replace it with the original from "
                f"{SOURCE}, or correct data.checksums. Nothing was written."
            )
        out.append((path, digest))
    return out


def _decode_zip(path: Path, size: int) -> tuple[np.ndarray, list[str]]:
    """[characters, 20, size, size] uint8 images (ink = 255) and each character's name."""
    from PIL import Image

    chars: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"CRC error in member {bad}")
            for member in sorted(z.namelist()):
                m = _PNG.match(member)
                if m and not any(p.startswith(".") for p in m.groups()):  # ._*.png: not data
                    chars.setdefault(f"{path.stem}/{m[1]}/{m[2]}", []).append(member)
            images = np.empty((len(chars), EXAMPLES_PER_CHARACTER, size, size), np.uint8)
            for i, (name, members) in enumerate(chars.items()):
                if len(members) != EXAMPLES_PER_CHARACTER:
                    raise zipfile.BadZipFile(f"{name} has {len(members)} drawings, not "
                                             f"{EXAMPLES_PER_CHARACTER}")
                for j, member in enumerate(members):
                    with Image.open(io.BytesIO(z.read(member))) as im:
                        small = im.convert("L").resize((size, size), Image.LANCZOS)
                    images[i, j] = 255 - np.asarray(small, dtype=np.uint8)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise ConfigError(f"Omniglot file {path} is corrupt or not an Omniglot zip ({e}). Replace "
                          f"it with the original from {SOURCE}. Nothing was written.") from e
    if not chars:
        raise ConfigError(f"Omniglot file {path} holds no images_<split>/<Alphabet>/characterNN/"
                          f"*.png files. Replace it with the original from {SOURCE}.")
    return images, list(chars)


def load_images(cfg: dict) -> list[tuple[np.ndarray, list[str]]]:
    """Each zip's decoded characters, from the decoded cache when the zips are unchanged."""
    if cfg["download"]:
        download(cfg)
    sources = check_sources(cfg)
    key = hashlib.sha256(json.dumps([[d for _, d in sources], cfg["image_size"], DECODE_VERSION])
                         .encode()).hexdigest()
    cache = decoded.cache_file(cfg["cache_dir"], "omniglot-images", key)
    f = decoded.read(cache)
    if f is not None:
        return [(f[f"images_{i}"], [str(n) for n in f[f"names_{i}"]])
                for i in range(len(sources))]
    images = [_decode_zip(path, cfg["image_size"]) for path, _ in sources]
    decoded.write(cache, {f"images_{i}": im for i, (im, _) in enumerate(images)}
                  | {f"names_{i}": np.array(n) for i, (_, n) in enumerate(images)})
    return images


def split_characters(cfg: dict, rng: np.random.Generator):
    """``(train_images, train_names, test_images, test_names)`` under ``data.protocol``."""
    zips = load_images(cfg)
    if cfg["protocol"] == "lake":
        (tr, trn), (te, ten) = zips
        return tr, trn, te, ten
    images = np.concatenate([im for im, _ in zips])
    names = [n for _, ns in zips for n in ns]
    n_train = cfg["num_train_characters"]
    if n_train >= len(names):
        raise ConfigError(f"data.num_train_characters={n_train} leaves no test characters: the "
                          f"zips hold {len(names)} characters, so it must be < {len(names)}.")
    order = rng.permutation(len(names)) if cfg["character_order"] == "seed" else np.arange(
        len(names))
    tr, te = order[:n_train], order[n_train:]
    return images[tr], [names[i] for i in tr], images[te], [names[i] for i in te]


def _check_rotations(key: str, rotations: list[int]) -> tuple[int, ...]:
    if not rotations or any(r % 90 for r in rotations) or len(set(rotations)) != len(rotations):
        raise ConfigError(f"data.{key}={list(rotations)} is not allowed: give distinct multiples "
                          f"of 90 degrees, e.g. [0, 90, 180, 270].")
    return tuple(int(r) % 360 for r in rotations)


class Omniglot(FamilyBase[OmniglotDataConfig]):
    """``data=omniglot``: test episodes drawn from the held-out characters. The unit of its CI
    is the episode (the field's convention); each episode's classes are recorded, so a CI
    that resamples classes can be computed too."""

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        return generate(self.settings, rng)


def class_names(characters: list[str], rotations: tuple[int, ...]) -> list[str]:
    """A split's class names in class-id order: ``Alphabet/characterNN``, with ``/<degrees>``
    when the split rotates its characters (each rotation is its own class)."""
    plain = [c.split("/", 1)[-1] for c in characters]  # without the zip's images_<split>/
    if rotations == (0,):
        return plain
    return [f"{c}/{r}" for c in plain for r in rotations]


def generate(cfg: dict, rng: np.random.Generator) -> GeneratedTasks:
    train_rot = _check_rotations("train_rotations", cfg["train_rotations"])
    test_rot = _check_rotations("test_rotations", cfg["test_rotations"])
    tr, trn, te, ten = split_characters(cfg, rng)
    (tr, trn), (va, van) = _validation_characters(tr, trn, cfg["num_val_characters"])
    n, k, q = cfg["num_classes"], cfg["k_shot"], cfg["query_per_class"]
    train_n = cfg["train_num_classes"] or n
    train_q = cfg["train_query_per_class"] or q
    splits = [("train", tr, train_rot, train_n, train_q), ("test", te, test_rot, n, q)]
    num_val = cfg["num_val_tasks"] if len(va) else 0
    if num_val:
        splits.append(("validation", va, test_rot, n, q))
    for split, pool, rot, ways, queries in splits:
        if ways > len(pool) * len(rot) or k + queries > EXAMPLES_PER_CHARACTER:
            raise ConfigError(
                f"{ways}-way episodes with data.k_shot={k} + {queries} queries per class do not "
                f"fit the {split} split: it has {len(pool) * len(rot)} classes of "
                f"{EXAMPLES_PER_CHARACTER} drawings each.")
    sampler = EpisodeSampler(tr, train_rot, train_n, k, train_q)
    test, test_classes = sample_traced_episodes(te, test_rot, cfg["num_test_tasks"], n, k, q, rng)
    train = sampler.sample(rng, cfg["num_train_tasks"]) if cfg["num_train_tasks"] else sampler
    # Drawn last: the test episodes are the same with or without a validation split.
    val = val_classes = None
    if num_val:
        val, val_classes = sample_traced_episodes(va, test_rot, num_val, n, k, q, rng)
    names = {"train": class_names(trn, train_rot), "test": class_names(ten, test_rot)}
    if num_val:
        names["val"] = class_names(van, test_rot)
    return GeneratedTasks(train, TaskSplit(*test), CLASSIFICATION, n,
                          TaskSplit(*val) if num_val else None, ci_unit=CI_EPISODE,
                          test_classes=test_classes, val_classes=val_classes, splits=names)


def _validation_characters(train: np.ndarray, names: list[str], count: int):
    """The last ``count`` training characters become the validation split (the ProtoNets
    code's 1,028 / 172 of the 1,200 Vinyals training characters): ``((train images, names),
    (validation images, names))``."""
    if count >= len(train):
        raise ConfigError(f"data.num_val_characters={count} leaves no training characters: the "
                          f"training split has {len(train)}, so it must be < {len(train)}.")
    cut = len(train) - count
    return (train[:cut], names[:cut]), (train[cut:], names[cut:])
