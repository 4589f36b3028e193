"""No secret in the record: the password of every URI (``scheme://user:PASSWORD@host``) is
masked as ``user:***@host`` in every param, tag and artifact the pipeline writes - Hydra's own
``.hydra/`` files and the overrides included. A study's PostgreSQL storage, a tracking server
behind basic auth: their passwords stay in the command line and the run's output folder only.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

MASK = "***"
#: ``scheme://user:password@``: the user part has no ``/``, ``:``, ``@``, backslash or blank;
#: the password runs to the last ``@`` before the next blank, quote or end of the value. Colons
#: may come escaped, as Hydra writes a sweep job's overrides (``http\://user\:pw@host``), and
#: escaped again inside JSON.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*\\*://[^\s/:@'\"\\]*\\*):"
                       r"(?P<password>[^\s'\"]*)@")
#: Text artifacts larger than this are not scanned (data files, models: never a URI).
MAX_SCAN_BYTES = 4 << 20


def mask(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    if "://" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["password"] != MASK
                         else m[0], text)


def has_secret(text: str) -> bool:
    return mask(text) != text


def _text_of(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_SCAN_BYTES:
            return None
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _secret_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f for f in files if (text := _text_of(f)) is not None and has_secret(text)]


def masked_copy(path: Path, scratch: Path) -> Path:
    """``path`` (a file or a folder) itself if no text file in it holds a password; else a copy
    under ``scratch`` with the same name, whose text files have their passwords masked."""
    path = Path(path)
    if not _secret_files(path):
        return path
    n = 0
    while (scratch / str(n)).exists():
        n += 1
    target = scratch / str(n) / path.name
    target.parent.mkdir(parents=True)
    if path.is_file():
        shutil.copy2(path, target)
    else:
        shutil.copytree(path, target)
    for f in _secret_files(target):
        f.write_text(mask(f.read_text()))
    return target
