"""Batch norm for the image models: transductive (the MAML paper's), running, or none, and the
stock-Keras twin of a model for logging."""

from __future__ import annotations

import keras


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
        # Not keras.ops.moments: TensorFlow's stops the gradient of the mean inside the
        # variance, which leaves first-order gradients exact but makes second-order ones
        # (MAML's meta-gradient through the inner step) wrong.
        axes = list(range(len(x.shape) - 1))
        centred = x - keras.ops.mean(x, axis=axes)
        var = keras.ops.mean(keras.ops.square(centred), axis=axes)
        return centred * keras.ops.rsqrt(var + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def norm_layer(kind: str, momentum: float, name: str) -> keras.layers.Layer | None:
    """The batch norm of ``model.batch_norm``: transductive, running, or None (``none``)."""
    if kind == "transductive":
        return BatchStatsNorm(name=name)
    if kind == "running":
        return keras.layers.BatchNormalization(momentum=momentum, name=name)
    return None


def stock_call(layer: keras.layers.Layer, x, suffix: str = ""):
    """``layer`` applied to symbolic ``x`` as stock Keras layers with its weights.

    A :class:`BatchStatsNorm` becomes a normalisation over the batch and spatial axes plus a
    per-channel scale and shift (``EinsumDense``), numerically the same; a layer with a
    ``stock(x)`` method (a residual block) rebuilds itself; any other layer is cloned from its
    config. ``suffix`` keeps names unique when one layer is applied several times.
    """
    if isinstance(layer, BatchStatsNorm):
        norm = keras.layers.LayerNormalization(
            axis=list(range(len(x.shape) - 1)), center=False, scale=False,
            epsilon=layer.epsilon, name=layer.name)
        affine = keras.layers.EinsumDense("...c,c->...c", output_shape=layer.gamma.shape[0],
                                          bias_axes="c", name=f"{layer.name}_affine")
        out = affine(norm(x))
        affine.set_weights([layer.gamma.numpy(), layer.beta.numpy()])
        return out
    if hasattr(layer, "stock"):
        return layer.stock(x)
    config = layer.get_config()
    clone = layer.__class__.from_config({**config, "name": config["name"] + suffix})
    out = clone(x)
    clone.set_weights(layer.get_weights())
    return out


def portable(model: keras.Model) -> keras.Model:
    """``model`` rebuilt from stock Keras layers, with the same weights, for logging: it loads
    wherever Keras does, without this project installed (see :func:`stock_call`).

    Training keeps the custom layers: under per-task weights (vectorised MAML) the stock pair
    that replaces a :class:`BatchStatsNorm` runs ~5x slower.
    """
    custom = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, BatchStatsNorm) or hasattr(layer, "stock")]
    if not custom:
        return model
    x = inputs = keras.Input(shape=model.input_shape[1:], name="x")
    for layer in model.layers:
        x = stock_call(layer, x)
    return keras.Model(inputs, x, name=model.name)
