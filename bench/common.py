"""Shared helpers for the benchmarks: compose a config in-process, time things, report."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from contextlib import contextmanager

from omegaconf import DictConfig

from pipeline import PROJECT_ROOT
from pipeline.config import Config, compose, validate
from pipeline.data import TaskSet
from pipeline.run import runtime_env

runtime_env.import_tensorflow()

#: The Omniglot zips as this workplace has them: ``../shared/data/omniglot`` beside the project
#: (a user puts the official zips anywhere and passes ``--root``).
OMNIGLOT_ROOT = os.path.relpath(PROJECT_ROOT.parent / "shared" / "data" / "omniglot")


def raw_config(*overrides: str) -> DictConfig:
    return compose(["paths.output_dir=/tmp/bench", *overrides])


def config(*overrides: str) -> Config:
    return validate(raw_config(*overrides))


def tasks_of(cfg: Config) -> TaskSet:
    """The generate stage alone (no tracking)."""
    from pipeline.stages import generate

    return generate.run(cfg.data, cfg.seed, cfg.paths.data_dir, None)


@contextmanager
def timer(out: dict, key: str):
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"Python {platform.python_version()}"
