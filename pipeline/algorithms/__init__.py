"""Algorithms, one module each, all behind :class:`pipeline.algorithms.base.Algorithm`; the
inner-loop family (MAML, FOMAML, ANIL, Meta-SGD, Reptile) behind
:class:`pipeline.algorithms.inner_loop.InnerLoop`. Each is named by its config schema in
:mod:`pipeline.config.algorithm` (``@option("algorithm", builds=...)``)."""

from __future__ import annotations

from pipeline.algorithms.base import Algorithm, Batch, Context
from pipeline.config import AlgorithmConfig, registry


def build_algorithm(cfg: AlgorithmConfig, ctx: Context) -> Algorithm:
    """Instantiate the algorithm that ``cfg``'s schema names."""
    return registry.build("algorithm", cfg.name, cfg, ctx)


__all__ = ["Algorithm", "Batch", "Context", "build_algorithm"]
