"""The ``scratch`` baseline: a fresh network per test task, trained on its support set only
(:class:`pipeline.algorithms.scratch.Scratch`, configured by ``meta_test.scratch``)."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.algorithms import Algorithm
from pipeline.config import AlgorithmConfig, Config


def build(cfg: Config, build_algorithm: Callable[[AlgorithmConfig], Algorithm]) -> Algorithm:
    """``build_algorithm`` makes an algorithm of the run's model and loss (the runner's)."""
    return build_algorithm(cfg.meta_test.scratch)
