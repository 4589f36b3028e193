"""Algorithms, one module each, all behind :class:`pipeline.algorithms.base.Algorithm`."""

from __future__ import annotations

from pipeline.algorithms.base import Algorithm, Context
from pipeline.config import AlgorithmConfig, MetaTrainConfig


def build_algorithm(cfg: AlgorithmConfig, ctx: Context,
                    meta_train: MetaTrainConfig | None = None) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name``."""
    from pipeline.algorithms.anil import ANIL
    from pipeline.algorithms.maml import MAML
    from pipeline.algorithms.metasgd import MetaSGD
    from pipeline.algorithms.notebook import Notebook
    from pipeline.algorithms.protonet import ProtoNet
    from pipeline.algorithms.reptile import Reptile
    from pipeline.algorithms.scratch import Scratch

    #: MAML-like algorithms take the XLA switch; ``fomaml`` is MAML with ``first_order=true``.
    jitted = {MAML.name: MAML, "fomaml": MAML, ANIL.name: ANIL, MetaSGD.name: MetaSGD,
              ProtoNet.name: ProtoNet}
    if cfg.name in jitted:
        return jitted[cfg.name](cfg, ctx, jit_compile=bool(meta_train and meta_train.jit_compile))
    registry = {Scratch.name: Scratch, Notebook.name: Notebook, Reptile.name: Reptile}
    if cfg.name not in registry:
        raise ValueError(f"algorithm.name={cfg.name!r} is unknown: choose one of "
                         f"{', '.join(sorted([*registry, *jitted]))}.")
    return registry[cfg.name](cfg, ctx)


def needs_head(cfg: AlgorithmConfig) -> bool:
    """Whether the algorithm's model ends in a classifier head (ProtoNets use the embedding)."""
    return cfg.name != "protonet"


__all__ = ["Algorithm", "Context", "build_algorithm", "needs_head"]
