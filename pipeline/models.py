"""Keras 3 models built from the ``model`` config group.

Models output logits (or raw regression values); the loss module owns the link function, so
the same network serves every algorithm through ``stateless_call``.
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.config import Conv4Config, MLPConfig, ModelConfig

#: Name of the per-class output layer (what ANIL adapts and ``algorithm.zero_head`` zeroes).
HEAD = "head"


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], output_units: int | None,
                seed: int) -> keras.Model:
    """Build and initialise a model; ``seed`` alone decides its initial weights.

    ``output_units=None`` leaves the head off: the model then outputs its embedding (the last
    hidden layer), which is what metric-based learners such as ProtoNets meta-learn.
    """
    keras.utils.set_random_seed(seed)
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape, name="x")]
    if isinstance(cfg, MLPConfig):
        layers += [keras.layers.Dense(units, activation=cfg.activation, name=f"hidden_{i}")
                   for i, units in enumerate(cfg.hidden_units)]
    elif isinstance(cfg, Conv4Config):
        layers += _conv_blocks(cfg)
    else:
        raise ValueError(f"model.name={cfg.name!r} is unknown: choose one of mlp, conv4.")
    if output_units is not None:
        layers.append(keras.layers.Dense(output_units, kernel_initializer=cfg.head_init,
                                         name=HEAD))
    return keras.Sequential(layers, name=cfg.name)


@keras.saving.register_keras_serializable(package="pipeline")
class BatchStatsNorm(keras.layers.Layer):
    """Batch norm that always uses the statistics of the batch it is given (transductive).

    The MAML paper's choice for few-shot learning: a task's support set and its query set are
    each normalised by their own statistics, in meta-training and meta-testing alike. There are
    no running averages, so nothing non-trainable can go stale, and the saved model behaves the
    same way at inference.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.gamma_initializer = keras.initializers.Ones()
        self.beta_initializer = keras.initializers.Zeros()

    def build(self, input_shape):
        dim = (input_shape[-1],)
        self.gamma = self.add_weight(shape=dim, initializer=self.gamma_initializer, name="gamma")
        self.beta = self.add_weight(shape=dim, initializer=self.beta_initializer, name="beta")

    def call(self, x):
        mean, var = keras.ops.moments(x, axes=list(range(len(x.shape) - 1)))
        return (x - mean) * keras.ops.rsqrt(var + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def portable(model: keras.Model) -> keras.Model:
    """``model`` rebuilt from stock Keras layers, with the same weights, for logging: it loads
    wherever Keras does, without this project installed.

    Each :class:`BatchStatsNorm` becomes a normalisation over the batch and spatial axes plus a
    per-channel scale and shift (``EinsumDense``), numerically the same. Training keeps the
    custom layer: under per-task weights (vectorised MAML) the stock pair runs ~5x slower.
    """
    if not any(isinstance(layer, BatchStatsNorm) for layer in model.layers):
        return model
    layers: list[keras.layers.Layer] = [keras.Input(shape=model.input_shape[1:], name="x")]
    for layer in model.layers:
        if isinstance(layer, BatchStatsNorm):
            layers += [keras.layers.LayerNormalization(
                           axis=[0, 1, 2], center=False, scale=False, epsilon=layer.epsilon,
                           name=layer.name),
                       keras.layers.EinsumDense("...c,c->...c", output_shape=layer.gamma.shape[0],
                                                bias_axes="c", name=f"{layer.name}_affine")]
        else:
            layers.append(layer.__class__.from_config(layer.get_config()))
    twin = keras.Sequential(layers, name=model.name)
    twin.set_weights(model.get_weights())  # gamma, beta -> the affine's kernel, bias
    return twin


def _conv_blocks(cfg: Conv4Config) -> list[keras.layers.Layer]:
    """Rescale, then ``blocks`` x [conv 3x3 same, batch norm, ReLU, max-pool 2x2], flattened."""
    layers: list[keras.layers.Layer] = [keras.layers.Rescaling(cfg.input_scale, name="scale")]
    for i in range(cfg.blocks):
        layers.append(keras.layers.Conv2D(cfg.filters, 3, padding="same", name=f"conv_{i}"))
        if cfg.batch_norm == "transductive":
            layers.append(BatchStatsNorm(name=f"bn_{i}"))
        elif cfg.batch_norm == "running":
            layers.append(keras.layers.BatchNormalization(momentum=cfg.bn_momentum,
                                                          name=f"bn_{i}"))
        layers += [keras.layers.ReLU(name=f"relu_{i}"),
                   keras.layers.MaxPooling2D(2, name=f"pool_{i}")]
    layers.append(keras.layers.Flatten(name="features"))
    return layers


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
    for layer in model.layers:
        if any(v is var for v in layer.trainable_variables):
            return layer
    raise ValueError(f"no layer of {model.name} owns {var.path}")
