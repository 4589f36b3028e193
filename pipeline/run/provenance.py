"""What a run needs to be rerun: code version, package versions, command-line overrides."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from pipeline import PROJECT_ROOT

PACKAGES = ("tensorflow", "keras", "numpy", "mlflow", "hydra-core", "omegaconf")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, str]:
    """Commit hash and whether tracked files differ from it (``unknown`` outside a checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def versions() -> dict[str, str]:
    out = {"version/python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[f"version/{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version/{name}"] = "missing"
    return out
