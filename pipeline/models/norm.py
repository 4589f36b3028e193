"""Transductive batch norm (the MAML paper's) and its stock-Keras twin for logged models."""

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
