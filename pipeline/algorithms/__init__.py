"""Algorithms, one module each, all behind :class:`pipeline.algorithms.base.Algorithm`."""

from __future__ import annotations

from pipeline.algorithms.base import Algorithm, Context
from pipeline.config import AlgorithmConfig, MetaTrainConfig


def build_algorithm(cfg: AlgorithmConfig, ctx: Context,
                    meta_train: MetaTrainConfig | None = None) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name``."""
    from pipeline.algorithms.maml import MAML
    from pipeline.algorithms.notebook import Notebook
    from pipeline.algorithms.protonet import ProtoNet
    from pipeline.algorithms.scratch import Scratch

    jit = bool(meta_train and meta_train.jit_compile)
    if cfg.name == MAML.name:
        return MAML(cfg, ctx, jit_compile=jit)
    if cfg.name == ProtoNet.name:
        return ProtoNet(cfg, ctx, jit_compile=jit)
    registry = {Scratch.name: Scratch, Notebook.name: Notebook}
    if cfg.name not in registry:
        raise ValueError(f"algorithm.name={cfg.name!r} is unknown: choose one of "
                         f"{', '.join(sorted([*registry, MAML.name, ProtoNet.name]))}.")
    return registry[cfg.name](cfg, ctx)


def needs_head(cfg: AlgorithmConfig) -> bool:
    """Whether the algorithm's model ends in a classifier head (ProtoNets use the embedding)."""
    return cfg.name != "protonet"


__all__ = ["Algorithm", "Context", "build_algorithm", "needs_head"]
