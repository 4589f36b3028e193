"""ANIL (Raghu et al., 2020): MAML whose inner loop adapts only the head (the last layer).

The body is frozen in the inner loop and meta-learned in the outer loop with the head; the
meta-gradient is second order unless ``first_order``. Test-time adaptation also moves only the
head. Everything else (batched inner loop, compiled meta-batch step) is MAML's.
"""

from __future__ import annotations

from pipeline.algorithms.base import Context
from pipeline.algorithms.maml import MAML, head_variables
from pipeline.config import ANILConfig


class ANIL(MAML):
    cfg: ANILConfig

    def __init__(self, cfg: ANILConfig, ctx: Context):
        head = {id(v) for v in head_variables(ctx.model, "algorithm=anil")}
        self._mask = [id(v) in head for v in ctx.model.trainable_variables]
        super().__init__(cfg, ctx)

    def inner_mask(self) -> list[bool]:
        return self._mask
