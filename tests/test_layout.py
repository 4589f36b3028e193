"""The architecture's rules, checked on the source: MLflow is imported by the tracking package
only, and no two modules import each other (directly or through others) at import time."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from pipeline import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"


def _module(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: The project's modules: the package and its Hydra plugins (one rule for both).
MODULES = {_module(p): p for root in (PACKAGE, PROJECT_ROOT / "hydra_plugins")
           for p in root.rglob("*.py")}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (``from pipeline import x`` counts as ``pipeline.x`` when x is
    a module); with ``top_level_only``, not those imported inside functions."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in MODULES}
    return out


def test_mlflow_is_imported_only_by_the_tracking_package():
    importers = sorted(m for m, p in MODULES.items()
                       if any(i == "mlflow" or i.startswith("mlflow.")
                              for i in _imports(p, top_level_only=False)))
    assert importers and all(m.startswith("pipeline.tracking") for m in importers), importers
    assert any(m.startswith("hydra_plugins.") for m in MODULES)


def test_no_import_cycles_between_modules():
    """Every import counts, at module level or inside a function: an import deferred into a
    function still ties the two modules together for a reader."""
    graph = {m: {i for i in _imports(p, top_level_only=False) if i in MODULES and i != m}
             for m, p in MODULES.items()}
    # ``from pipeline.config import X`` inside pipeline/config/ names the package the module
    # belongs to, not a module it depends on; a package's own imports of others still count.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append([*path[path.index(d):], d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_git_holds_no_stores_data_or_checkpoints():
    """Stores, generated task files and checkpoints are made by runs, never committed."""
    listed = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    stray = [f for f in listed if f.endswith((".db", ".npz", ".ckpt", ".keras", ".weights.h5"))
             or "/checkpoints/" in f or (f.startswith(("mlruns/", "outputs/", "multirun/"))
             and not f.endswith(".gitkeep"))]
    assert not stray, stray
