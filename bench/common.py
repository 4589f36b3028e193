"""Shared helpers for the benchmarks: compose a config in-process, time things, report."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hydra import compose, initialize_config_dir

from pipeline import CONFIG_DIR
from pipeline.config import Config, register_configs, validate

register_configs()


def config(*overrides: str) -> Config:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return validate(compose("config", overrides=["paths.output_dir=/tmp/bench", *overrides]))


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
