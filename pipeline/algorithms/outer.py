"""The outer (meta-) update: apply a meta-gradient with the configured Keras optimizer.

Keras 3's Adam runs ~15 small ops per variable; in a meta-iteration of a small model that is
a third of the time. For plain Adam and SGD (no clipping, decay, EMA, AMSGrad or momentum) the
same update runs as one fused TensorFlow kernel per variable on the optimizer's own slot
variables, so checkpoints, ``optimizer.iterations``, learning-rate schedules (evaluated at
``optimizer.iterations`` before the update, as Keras does) and the maths (Keras' "epsilon hat"
Adam) are unchanged. Anything else falls back to ``optimizer.apply_gradients``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def _plain(opt: keras.optimizers.Optimizer) -> bool:
    return (opt.clipnorm is None and opt.clipvalue is None and opt.global_clipnorm is None
            and not opt.weight_decay and not opt.use_ema and opt.loss_scale_factor is None
            and opt.gradient_accumulation_steps is None)


def fusable(opt: keras.optimizers.Optimizer) -> bool:
    """Whether :func:`apply` runs ``opt``'s update as fused kernels."""
    if type(opt) is keras.optimizers.Adam:
        return _plain(opt) and not opt.amsgrad
    if type(opt) is keras.optimizers.SGD:
        return _plain(opt) and not opt.momentum
    return False


def apply(opt: keras.optimizers.Optimizer, grads: Sequence[tf.Tensor],
          variables: Sequence[keras.Variable]) -> None:
    """``opt.apply_gradients(zip(grads, variables))``, fused where :func:`fusable`.

    ``opt`` must already be built on ``variables`` (``opt.build(variables)``).
    """
    if not fusable(opt):
        opt.apply_gradients(zip(grads, variables, strict=True))
        return
    rate = opt.learning_rate  # a schedule's value at this step, read once for every variable
    for g, var in zip(grads, variables, strict=True):
        dtype = var.dtype
        lr = tf.cast(rate, dtype)
        g = tf.cast(g, dtype)
        if isinstance(opt, keras.optimizers.SGD):
            tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=g)
            continue
        i = opt._get_variable_index(var)
        t = tf.cast(opt.iterations + 1, dtype)
        b1, b2 = tf.cast(opt.beta_1, dtype), tf.cast(opt.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=opt._momentums[i].handle, v=opt._velocities[i].handle,
            beta1_power=tf.pow(b1, t), beta2_power=tf.pow(b2, t), lr=lr, beta1=b1, beta2=b2,
            epsilon=tf.cast(opt.epsilon, dtype), grad=g)
    opt.iterations.assign_add(1)
