"""The standard few-shot CNN: ``blocks`` x [3x3 conv, batch norm, ReLU, 2x2 max-pool], or with
``downsample=stride`` the MAML paper's Omniglot net: [3x3 conv stride 2, batch norm, ReLU]."""

from __future__ import annotations

import keras

from pipeline.config import Conv4Config
from pipeline.models.norm import norm_layer


def body(cfg: Conv4Config) -> list[keras.layers.Layer]:
    """Rescale, then ``blocks`` x [conv 3x3 same, batch norm, ReLU, max-pool 2x2], flattened;
    or ``blocks`` x [conv 3x3 same with stride 2, batch norm, ReLU], then the spatial mean."""
    stride = cfg.downsample == "stride"
    layers: list[keras.layers.Layer] = [keras.layers.Rescaling(cfg.input_scale, name="scale")]
    for i in range(cfg.blocks):
        layers.append(keras.layers.Conv2D(cfg.filters, 3, strides=1 + stride, padding="same",
                                          name=f"conv_{i}"))
        norm = norm_layer(cfg.batch_norm, cfg.bn_momentum, f"bn_{i}")
        layers += [norm] if norm is not None else []
        layers.append(keras.layers.ReLU(name=f"relu_{i}"))
        if not stride:
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool_{i}"))
    layers.append(keras.layers.GlobalAveragePooling2D(name="features") if stride
                  else keras.layers.Flatten(name="features"))
    return layers
