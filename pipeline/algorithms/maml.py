"""MAML (Finn et al., 2017): meta-learn an initialisation that a few SGD steps adapt to a task.

The whole meta-batch is one compiled step, batched over tasks: the inner SGD steps of every
task run at once on stacked per-task weights, and the outer tape differentiates through them
(second order), or through constant inner gradients when ``first_order`` is set (FOMAML,
``algorithm=fomaml``). ANIL and Meta-SGD are this class with another inner update rule
(:meth:`MAML.inner_mask`, learned rates in :meth:`MAML.split`).

On a conv4, inner steps that move only the head run on body features computed once, from body
weights every task shares (plain convolutions over all tasks' images; :meth:`MAML._head_steps`):
all of ANIL's, and with ``zero_head`` the first step of MAML, FOMAML and Meta-SGD. That is
exact: with the head at zero the support loss's gradient with respect to the features, hence
to every body weight, is exactly zero, so the first step leaves the body where it is.
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.algorithms import conv4_batched
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
        # A variable, not a constant baked into the compiled steps: a warm sweep worker reuses
        # them for a job with another inner rate (pipeline.run.warm).
        dtype = ctx.model.trainable_variables[0].dtype if ctx.model.trainable_variables \
            else "float32"
        self.inner_lr = tf.Variable(cfg.inner_lr, dtype=dtype, trainable=False, name="inner_lr")
        super().__init__(cfg, ctx)

    @property
    def fed_variables(self) -> list:
        return [self.inner_lr]

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
        return weights, self.inner_lr

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
        head_only = self._head_only_steps()
        if head_only:
            adapted = self._head_steps(weights, lrs, sx, sy, head_only)
            if head_only == steps:
                return adapted  # the body stays shared: query features run shared too
            nb = self.f.conv4.num_body
            adapted = F.tile(adapted[:nb], F.num_tasks(sx)) + adapted[nb:]
            return F.batched_sgd(self.f, self.loss, adapted, sx, sy, steps - head_only, lrs,
                                 first_order, mask)
        if self.f._dense is None:
            return F.batched_sgd(self.f, self.loss, F.tile(weights, F.num_tasks(sx)), sx, sy,
                                 steps, lrs, first_order, mask)
        adapted = F.first_step_shared(self.f, self.loss, weights, sx, sy, lrs, first_order, mask)
        return F.batched_sgd(self.f, self.loss, adapted, sx, sy, steps - 1, lrs, first_order,
                             mask)

    # --- head-only inner steps on shared body features (conv4) --------------------------------

    def _head_only_steps(self) -> int:
        """How many of the first training inner steps move only the head (0 = use the generic
        path): all of them for ANIL, the first with ``zero_head``; only on a conv4 with a head."""
        spec = self.f.conv4
        if spec is None or spec.num_body == len(spec.ranks):
            return 0
        mask = self.inner_mask()
        if mask is not None:
            nb = spec.num_body
            return self.cfg.inner_steps if (not any(mask[:nb]) and all(mask[nb:])) else 0
        return 1 if self.cfg.zero_head else 0

    @tf.autograph.experimental.do_not_convert  # static loops only; converting it costs tracing
    def _head_steps(self, weights, lrs, sx, sy, steps: int) -> F.Params:
        """``steps`` differentiable SGD steps of each task's head on its support features, the
        body shared by every task: ``[*body, *stacked heads]``. Support features are computed
        once (plain convolutions over all tasks' images, batch statistics per task)."""
        spec = self.f.conv4
        nb = spec.num_body
        body, heads = list(weights[:nb]), F.tile(weights[nb:], F.num_tasks(sx))
        rates = list(lrs[nb:]) if isinstance(lrs, (list, tuple)) else [lrs] * len(heads)
        feats, _ = conv4_batched.shared_features(spec, body, sx, training=True)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(heads)
                total = tf.reduce_sum(self.loss.batch_loss(conv4_batched.head(heads, feats), sy))
            grads = tape.gradient(total, heads)
            if self.cfg.first_order:
                grads = [tf.stop_gradient(g) for g in grads]
            heads = [h - a * g for h, a, g in zip(heads, rates, grads, strict=True)]
        return body + heads
