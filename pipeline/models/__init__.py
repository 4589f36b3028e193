"""Keras 3 models built from the ``model`` config group (one module per network, named by its
schema in :mod:`pipeline.config.model`).

Models output logits (or raw regression values); the loss module owns the link function, so
the same network serves every algorithm through ``stateless_call``.
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.config import ModelConfig, registry
from pipeline.models.norm import BatchStatsNorm, portable

#: Name of the per-class output layer (what ANIL adapts and ``algorithm.zero_head`` zeroes).
HEAD = "head"


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], output_units: int | None,
                seed: int) -> keras.Model:
    """Build and initialise a model; ``seed`` alone decides its initial weights.

    ``output_units=None`` leaves the head off: the model then outputs its embedding (the last
    hidden layer), which is what metric-based learners such as ProtoNets meta-learn.
    """
    keras.utils.set_random_seed(seed)
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape, name="x"),
                                        *registry.build("model", cfg.name, cfg)]
    if output_units is not None:
        layers.append(keras.layers.Dense(output_units, kernel_initializer=cfg.head_init,
                                         name=HEAD))
    return keras.Sequential(layers, name=cfg.name)


def fresh_weights(model: keras.Model, seed: int) -> list:
    """A new draw of ``model``'s trainable weights from its own initialisers, seeded.

    Much cheaper than building a new model: each weight ``w`` of a layer is drawn from that
    layer's ``<w>_initializer`` (``kernel_initializer``, ``bias_initializer``, ...).
    """
    out = []
    for i, var in enumerate(model.trainable_variables):
        layer = _owner(model, var)
        init = keras.initializers.get(getattr(layer, f"{var.name}_initializer"))
        config = init.get_config()
        if "seed" in config:
            config["seed"] = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)
            init = init.__class__.from_config(config)
        out.append(init(var.shape, dtype=var.dtype))
    return out


def _owner(model: keras.Model, var) -> keras.layers.Layer:
    """The layer that holds ``var`` itself (a convolution inside a residual block, not the
    block)."""
    for layer in model._flatten_layers(include_self=False):
        if any(v is var for v in layer._trainable_variables):
            return layer
    raise ValueError(f"no layer of {model.name} owns {var.path}")


__all__ = ["HEAD", "BatchStatsNorm", "build_model", "fresh_weights", "portable"]
