"""The docs stay true: the site builds strictly, the versions they name are the pinned ones, and
the files they name exist. (Their commands run in the slow ``tests/test_readme.py``.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from pipeline import PROJECT_ROOT

#: Folders of the repository whose files the docs name by path.
TOP = ("pipeline", "conf", "tests", "bench", "scripts", "hydra_plugins", "docs", ".ci")
#: How the docs name a pinned package where that differs from its distribution name.
ALIASES = {"hydra": "hydra-core"}


def doc_files() -> list[Path]:
    """The README and the site's pages (``docs/notes/`` holds drafts, not pages)."""
    docs = PROJECT_ROOT / "docs"
    return [PROJECT_ROOT / "README.md",
            *sorted(p for p in docs.rglob("*.md") if docs / "notes" not in p.parents)]


def pins() -> dict[str, str]:
    """Package -> version for every ``name==version`` in pyproject.toml (extras included)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values()
                                         for s in extra)]
    out = {}
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([\w.]+)", spec.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def version_mismatches(text: str, pinned: dict[str, str]) -> list[str]:
    """``name version`` mentions (``Optuna 5.1``, ``mlflow==3.17.2``, ``Keras 3``) of a pinned
    package whose version is not a prefix, part by part, of the pinned one."""
    names = {**{n: n for n in pinned}, **{a: d for a, d in ALIASES.items() if d in pinned}}
    bad = []
    for name, dist in names.items():
        pattern = rf"(?<![\w-]){re.escape(name)}(?![\w-])(?:\s+v?|==)(\d+(?:\.\d+)*)"
        for m in re.finditer(pattern, text, re.I):
            said, pin = m.group(1).split("."), pinned[dist].split(".")
            if said != pin[:len(said)]:
                bad.append(f"{m.group(0)!r} (pyproject.toml pins {dist}=={pinned[dist]})")
    return bad


def named_paths(text: str) -> set[str]:
    """Repository paths named in inline code or as link targets, without placeholders."""
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)#\s]+)", text)
    top = "|".join(re.escape(t) for t in TOP)
    found = set()
    for span in spans:
        for m in re.finditer(rf"(?<![\w/.$-])((?:{top})/[\w./-]*)", span):
            path = m.group(1).rstrip(".")
            if not re.search(r"[<>{}*]|\.\.\.", span[m.start():m.end() + 1]):
                found.add(path)
    return found


def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site"), "--config-file",
                          str(PROJECT_ROOT / "mkdocs.yml")],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env=os.environ | {"NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "sweeps" / "index.html").is_file()


def test_versions_named_in_the_docs_are_the_pinned_ones():
    pinned = pins()
    assert {"optuna", "mlflow", "tensorflow", "hydra-core"} <= pinned.keys()
    bad = [f"{p.relative_to(PROJECT_ROOT)}: {m}" for p in doc_files()
           for m in version_mismatches(p.read_text(), pinned)]
    assert not bad, "\n".join(bad)


def test_the_version_check_catches_a_stale_version():
    pinned = {"optuna": "5.1.0", "hydra-core": "1.3.8", "mkdocs": "1.6.1"}
    assert version_mismatches("Optuna 5.1, optuna==5.1.0, Hydra 1.3, mkdocs-material 9", pinned) \
        == []
    assert len(version_mismatches("optuna 2.10 with hydra 1.2", pinned)) == 2


def test_paths_named_in_the_docs_exist():
    missing = [f"{p.relative_to(PROJECT_ROOT)}: {path}" for p in doc_files()
               for path in sorted(named_paths(p.read_text()))
               if not (PROJECT_ROOT / path).exists()]
    assert not missing, "\n".join(missing)
