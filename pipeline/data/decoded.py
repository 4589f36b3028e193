"""Source files decoded once: their content hash, and the cache of their decoded images.

Families read from files on disk (Omniglot's zips, image collections) decode them into uint8
arrays once and keep those in ``<cache_dir>/<name>-<key>.npz``, keyed by the sha256 of the source
files and the decoding settings; later runs load that file in about a second. A cache that
cannot be read is rebuilt, never trusted; so is one whose content no longer matches the sha256
stored in it when it was written (an edited or swapped cache): the sources are there and are
the truth, so rebuilding gives the right pixels where refusing would only make the user delete
the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.data import fingerprint_arrays

log = logging.getLogger(__name__)

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
#: The entry of a cache file holding the sha256 of its other entries (their names, dtypes,
#: shapes and bytes), written with them and checked on every read.
CONTENT_KEY = "content_sha256"


def sha256(path: Path) -> str:
    """The file's sha256, computed once per process for an unchanged file (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def cache_file(cache_dir: str | Path, name: str, key: str) -> Path:
    return Path(cache_dir) / f"{name}-{key[:16]}.npz"


def read(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if there is no cache, or it is unreadable, or its content
    does not match the sha256 stored in it (then it is rebuilt, with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # a broken cache is rebuilt, never trusted
        log.warning("decoded cache %s is unreadable (%s); rebuilding it", path, e)
        return None
    if CONTENT_KEY not in arrays:
        log.warning("decoded cache %s holds no content sha256 (an older version wrote it); "
                    "rebuilding it", path)
        return None
    stored = str(arrays.pop(CONTENT_KEY))
    actual = fingerprint_arrays(arrays)
    if stored != actual:
        log.warning("decoded cache %s does not match the sha256 stored in it (content %s…, "
                    "stored %s…): it was altered; rebuilding it from the sources", path,
                    actual[:12], stored[:12])
        return None
    return arrays


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays atomically (parallel jobs may decode the same sources at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays, **{CONTENT_KEY: np.array(fingerprint_arrays(arrays))})
    tmp.replace(path)
