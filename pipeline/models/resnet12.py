"""ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): 4 residual blocks, 64-160-320-640 filters.

Each block is 3 x [3x3 conv, batch norm, leaky ReLU] (no ReLU after the third norm) plus a
1x1-conv + batch-norm shortcut, added, a leaky ReLU and a 2x2 max-pool: 84x84 -> 42 -> 21 -> 10
-> 5. Convolutions have no bias when a norm follows them and He-normal initial weights.

A block is one Keras layer (:class:`ResBlock`) holding its sublayers, so the network stays a
``Sequential`` and runs through the same per-task machinery as conv4 (``stateless_call`` under
``tf.vectorized_map``; batch norm as ``model.batch_norm`` says). For the logged model each
block is rebuilt from stock layers (:meth:`ResBlock.stock`, an ``Add`` for the residual).
"""

from __future__ import annotations

import keras

from pipeline.config import ResNet12Config
from pipeline.models.norm import norm_layer, stock_call


@keras.saving.register_keras_serializable(package="pipeline")
class ResBlock(keras.layers.Layer):
    """One residual block of ResNet-12 (see the module docstring)."""

    def __init__(self, filters: int, batch_norm: str = "transductive", bn_momentum: float = 0.9,
                 leaky_slope: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.batch_norm = filters, batch_norm
        self.bn_momentum, self.leaky_slope = bn_momentum, leaky_slope
        biased = batch_norm == "none"
        conv = lambda size, part: keras.layers.Conv2D(  # noqa: E731
            filters, size, padding="same", use_bias=biased, kernel_initializer="he_normal",
            name=f"{self.name}_{part}")
        norm = lambda part: norm_layer(batch_norm, bn_momentum, f"{self.name}_{part}")  # noqa: E731
        self.convs = [conv(3, f"conv_{i}") for i in range(3)]
        self.norms = [norm(f"bn_{i}") for i in range(3)]
        self.shortcut = conv(1, "shortcut")
        self.shortcut_norm = norm("shortcut_bn")
        self.act = keras.layers.LeakyReLU(leaky_slope, name=f"{self.name}_relu")
        self.pool = keras.layers.MaxPooling2D(2, name=f"{self.name}_pool")

    def call(self, x, training=None):
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = conv(h)
            h = norm(h, training=training) if norm is not None else h
            h = self.act(h) if i < 2 else h
        s = self.shortcut(x)
        s = self.shortcut_norm(s, training=training) if self.shortcut_norm is not None else s
        return self.pool(self.act(h + s))

    def stock(self, x):
        """The block applied to symbolic ``x`` as stock Keras layers with this block's weights."""
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = stock_call(conv, h)
            h = stock_call(norm, h) if norm is not None else h
            h = stock_call(self.act, h, f"_{i}") if i < 2 else h
        s = stock_call(self.shortcut, x)
        s = stock_call(self.shortcut_norm, s) if self.shortcut_norm is not None else s
        out = keras.layers.Add(name=f"{self.name}_add")([h, s])
        return stock_call(self.pool, stock_call(self.act, out))

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        half = lambda n: None if n is None else n // 2  # noqa: E731
        return (batch, half(height), half(width), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "batch_norm": self.batch_norm,
                "bn_momentum": self.bn_momentum, "leaky_slope": self.leaky_slope}


def body(cfg: ResNet12Config) -> list[keras.layers.Layer]:
    """Rescale, 4 residual blocks, then a global average pool (or a flatten)."""
    layers: list[keras.layers.Layer] = [keras.layers.Rescaling(cfg.input_scale, name="scale")]
    layers += [ResBlock(f, cfg.batch_norm, cfg.bn_momentum, cfg.leaky_slope, name=f"block_{i}")
               for i, f in enumerate(cfg.filters)]
    layers.append(keras.layers.GlobalAveragePooling2D(name="features") if cfg.global_pool
                  else keras.layers.Flatten(name="features"))
    return layers
