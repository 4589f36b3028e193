"""MAML (Finn et al., 2017): meta-learn an initialisation that a few SGD steps adapt to a task.

The whole meta-batch is one compiled step, batched over tasks: the inner SGD steps of every
task run at once on stacked per-task weights, and the outer tape differentiates through them
(second order), or through constant inner gradients when ``first_order`` is set (FOMAML,
``algorithm=fomaml``). ANIL and Meta-SGD are this class with another inner update rule
(:meth:`MAML.inner_mask`, learned rates in :meth:`MAML.split`).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.algorithms import functional as F
from pipeline.algorithms.base import Batch, Context
from pipeline.algorithms.inner_loop import InnerLoop
from pipeline.config import MAMLConfig
from pipeline.errors import ConfigError
from pipeline.models import HEAD

#: An inner learning rate: one scalar, or one tensor per parameter (Meta-SGD).
Rates = float | tf.Tensor | list[tf.Tensor]


def head_variables(model, key: str) -> list:
    """The weights of the model's ``head`` layer; ``key`` names the option that needs them."""
    heads = [layer for layer in model.layers if layer.name == HEAD and layer.trainable_variables]
    if not heads:
        raise ConfigError(f"{key} needs a model with a '{HEAD}' layer (the last, per-class layer); "
                          f"{model.name} has none: its layers are "
                          f"{[layer.name for layer in model.layers]}.")
    return list(heads[0].trainable_variables)


class MAML(InnerLoop):
    cfg: MAMLConfig

    def __init__(self, cfg: MAMLConfig, ctx: Context):
        head = head_variables(ctx.model, "algorithm.zero_head") if cfg.zero_head else []
        for v in head:
            v.assign(tf.zeros_like(v))
        self._frozen = {id(v) for v in head}  # held at zero: not meta-learned
        super().__init__(cfg, ctx)

    @property
    def meta_variables(self) -> list:
        """The model's weights, less the head when it is held at zero (``zero_head``)."""
        return [v for v in self.model.trainable_variables if id(v) not in self._frozen]

    # --- the inner update: ANIL masks it, Meta-SGD learns its rates ---------------------------

    def split(self, params: F.Params) -> tuple[F.Params, Rates]:
        """The model's weights and the inner learning rates, from meta-parameters ``params``
        (frozen head weights are put back in place)."""
        given = iter(params)
        weights = [tf.convert_to_tensor(v) if id(v) in self._frozen else next(given)
                   for v in self.model.trainable_variables]
        return weights, self.cfg.inner_lr

    def inner_mask(self) -> list[bool] | None:
        """Which parameters the inner loop adapts (None = all)."""
        return None

    def inner_lrs(self) -> Rates:
        """The current inner learning rates (for adaptation at meta-test)."""
        return self.split([tf.convert_to_tensor(v) for v in self.meta_variables])[1]

    def inner_loop(self, stacked, x, y, steps):
        lrs = self.inner_lrs()

        def body(i, params):
            return i + 1, F.batched_sgd(self.f, self.loss, params, x, y, 1, lrs, True,
                                        self.inner_mask())

        _, params = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), list(stacked)))
        return params

    # --- meta-training ------------------------------------------------------------------------

    def meta_loss(self, params, batch: Batch):
        weights, lrs = self.split(params)
        adapted = self._differentiable_inner(weights, lrs, batch.support_x, batch.support_y)
        out = self.f.batched(adapted, batch.query_x, training=True)
        per_task = self.loss.batch_metrics(out, batch.query_y)
        metrics = {k: tf.reduce_mean(v) for k, v in per_task.items()}
        return metrics[self.loss.metric_names[0]], metrics

    def _differentiable_inner(self, weights, lrs, sx, sy) -> F.Params:
        """``inner_steps`` SGD steps from shared ``weights`` that the outer tape sees through."""
        steps, first_order, mask = self.cfg.inner_steps, self.cfg.first_order, self.inner_mask()
        if self.f._dense is None:
            return F.batched_sgd(self.f, self.loss, F.tile(weights, F.num_tasks(sx)), sx, sy,
                                 steps, lrs, first_order, mask)
        adapted = F.first_step_shared(self.f, self.loss, weights, sx, sy, lrs, first_order, mask)
        return F.batched_sgd(self.f, self.loss, adapted, sx, sy, steps - 1, lrs, first_order,
                             mask)
