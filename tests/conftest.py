"""Shared fixtures: configs composed in-process (one TensorFlow import for the whole session)
against a real MLflow store in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pipeline import CONFIG_DIR, PROJECT_ROOT
from pipeline.config import Config, register_configs, validate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
register_configs()

#: Overrides that make any run tiny: few tasks, few iterations.
TINY = [
    "data.num_train_tasks=40", "data.num_test_tasks=12", "meta_train.iterations=20",
    "meta_train.meta_batch_size=4", "meta_test.scratch.steps=5", "meta_train.log_every=5",
]


def store_overrides(root: Path) -> list[str]:
    """Point data, outputs and the MLflow store at ``root``."""
    return [f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
            f"paths.output_dir={root}/out", f"hydra.run.dir={root}/out"]


def compose_raw(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., tuple[Config, DictConfig]]:
    """Compose and validate a config whose files all live under ``tmp_path``."""

    def make(*overrides: str) -> tuple[Config, DictConfig]:
        raw = compose_raw(*store_overrides(tmp_path)[:3], *overrides)
        return validate(raw), raw

    return make


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
