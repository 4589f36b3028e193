"""Per-task forward passes of a conv4 for the batched meta-learners: exact, and fast on CPU.

:class:`~pipeline.algorithms.functional.FunctionalModel` routes a conv4 here (any model that
:func:`spec_of` recognises) instead of ``tf.vectorized_map`` over Keras ``stateless_call``: with
per-task filters that falls back to a while loop whose slice gradients each write a full-size
tensor, 2-3x slower. The formulations below won a measured comparison (``bench/README.md``,
"Per-task convolutions"):

* **per-task weights**: a static loop over the tasks, one plain convolution per task and layer
  (tasks folded into channels with grouped convolutions are exact too, but oneDNN's grouped
  kernels are slower here; XLA, NCHW and im2col were slower still);
* **weights shared by every task** (ANIL's body, the body after a zero head's first inner step,
  ProtoNets): one plain convolution over all tasks' images, batch statistics per task;
* **batch norm with batch statistics**: a closed-form backward pass (2 means and 4 elementwise
  ops instead of autodiff's ~12) that is itself differentiable, exactly (second-order MAML);
  channel means as one GEMV per image (a single GEMV over all rows, as in fused batch norm,
  loses ~4e-3 relative precision);
* **no conv bias add** before such a norm: the norm removes any per-channel shift, so the bias
  changes no output and its gradient is exactly zero (returned as zeros).

Transductive semantics are the model's: each task's batch (support and query are separate
calls) is normalised by its own statistics. Parameters come in ``trainable_variables`` order
and each may be *shared* (the variable's own shape) or *stacked* (a leading task axis): a body
that is all shared runs as shared convolutions, any stacked body weight makes the body per task.

The closed-form backward pass is recorded for second derivatives inside ``tf.function`` graphs
(where the pipeline runs it); executed eagerly, plain ops are used instead. Nothing here branches
on tensor values, so autograph is told to leave it as it is (converting the per-call closures
made tracing a second-order step 2-3x slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import tensorflow as tf

from pipeline.models.norm import BatchStatsNorm

Params = list[tf.Tensor]

#: The most tasks unrolled into one graph; beyond it (or with an unknown task count) per-task
#: weights take the generic ``tf.vectorized_map`` path (meta-test chunks of a conv4 are small).
MAX_UNROLL = 32

BATCH, RUNNING = "batch", "running"

_plain_python = tf.autograph.experimental.do_not_convert


@dataclass(frozen=True)
class Block:
    """One [conv, norm, ReLU, pool] block: conv stride, conv bias, ``BATCH`` (transductive),
    ``RUNNING`` (Keras batch norm: batch statistics in training, moving ones otherwise) or
    None, 2x2 max-pool or not."""

    stride: int
    bias: bool
    norm: str | None
    pool: bool

    @property
    def num_params(self) -> int:
        return 1 + self.bias + 2 * (self.norm is not None)


@dataclass(frozen=True)
class Conv4Spec:
    """What the forward passes need to know about a conv4 model."""

    input_scale: float
    blocks: tuple[Block, ...]
    epsilon: float
    momentum: float
    #: Features: the spatial mean (``GlobalAveragePooling2D``) or flattened.
    mean_pool: bool
    #: Rank of each trainable variable, to tell shared from stacked parameters.
    ranks: tuple[int, ...]

    @property
    def num_body(self) -> int:
        """How many trainable variables the body has (the head's come after them)."""
        return sum(b.num_params for b in self.blocks)

    def stacked(self, params: Sequence[tf.Tensor]) -> list[bool]:
        """Which of ``params`` (the first ``len(params)`` weights) have a task axis."""
        return [p.shape.rank == r + 1 for p, r in zip(params, self.ranks, strict=False)]


def spec_of(model: keras.Model) -> Conv4Spec | None:
    """The :class:`Conv4Spec` of ``model`` if it is a Sequential [Rescaling, blocks of (Conv2D
    'same', optional batch norm, ReLU, optional 2x2 max-pool), Flatten or spatial mean, optional
    Dense head] in plain float layers, weights in ``trainable_variables`` order; else None."""
    layers = list(getattr(model, "layers", []))
    if not isinstance(model, keras.Sequential) or not layers or len(model.inputs[0].shape) != 4:
        return None
    if type(layers[0]) is not keras.layers.Rescaling or layers[0].offset != 0.0:
        return None
    scale, layers = layers[0].scale, layers[1:]
    blocks, expected, norms = [], [], []
    while layers and type(layers[0]) is keras.layers.Conv2D:
        conv, layers = layers[0], layers[1:]
        c = conv.get_config()
        if (c["padding"] != "same" or c["strides"] not in ((1, 1), (2, 2))
                or c["dilation_rate"] != (1, 1) or c["groups"] != 1
                or c["activation"] != "linear" or c["data_format"] != "channels_last"):
            return None
        expected += [conv.kernel] + ([conv.bias] if conv.use_bias else [])
        norm = None
        if layers and type(layers[0]) in (BatchStatsNorm, keras.layers.BatchNormalization):
            layer, layers = layers[0], layers[1:]
            norm = BATCH if type(layer) is BatchStatsNorm else RUNNING
            if norm == RUNNING and (not layer.center or not layer.scale or layer.renorm
                                    or layer.axis not in (-1, 3)):
                return None
            norms.append(layer)
            expected += [layer.gamma, layer.beta]
        if not layers or type(layers[0]) is not keras.layers.ReLU:
            return None
        relu, layers = layers[0].get_config(), layers[1:]
        if relu["max_value"] is not None or relu["negative_slope"] or relu["threshold"]:
            return None
        pool = bool(layers) and type(layers[0]) is keras.layers.MaxPooling2D
        if pool:
            p, layers = layers[0].get_config(), layers[1:]
            if p["pool_size"] != (2, 2) or p["strides"] != (2, 2) or p["padding"] != "valid":
                return None
        blocks.append(Block(c["strides"][0], conv.use_bias, norm, pool))
    if not blocks or not layers:
        return None
    if type(layers[0]) is keras.layers.GlobalAveragePooling2D and not layers[0].keepdims:
        mean_pool = True
    elif type(layers[0]) is keras.layers.Flatten:
        mean_pool = False
    else:
        return None
    layers = layers[1:]
    if layers:
        head = layers[0]
        if (len(layers) > 1 or type(head) is not keras.layers.Dense or head.lora_enabled
                or head.quantization_mode is not None
                or head.activation is not keras.activations.linear):
            return None
        expected += [head.kernel] + ([head.bias] if head.use_bias else [])
    if [id(v) for v in expected] != [id(v) for v in model.trainable_variables]:
        return None
    if any(layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype
           for layer in model.layers):
        return None
    if len({(n.epsilon, getattr(n, "momentum", None)) for n in norms}) > 1:
        return None  # one epsilon (and momentum) for every norm, as conv4 builds them
    eps = norms[0].epsilon if norms else 1e-3
    momentum = getattr(norms[0], "momentum", 0.0) if norms else 0.0
    return Conv4Spec(float(scale), tuple(blocks), float(eps), float(momentum), mean_pool,
                     tuple(v.shape.rank if hasattr(v.shape, "rank") else len(v.shape)
                           for v in model.trainable_variables))


# --- batch norm ----------------------------------------------------------------------------


@_plain_python
def _channel_mean(h4: tf.Tensor) -> tf.Tensor:
    """Per-group, per-channel mean of ``[G, n, r, C]`` over ``n`` and ``r`` -> ``[G, 1, 1, C]``:
    one GEMV per image (oneDNN; faster than ``tf.reduce_mean`` here), then a mean over images.
    A GEMV accumulates sequentially, so it is kept to one image's rows."""
    g, n, r, c = h4.shape
    ones = tf.fill([1, r], tf.constant(1 / r, h4.dtype))
    per_image = tf.linalg.matmul(ones, tf.reshape(h4, [g * n, r, c]))  # [g*n, 1, c]
    return tf.reduce_mean(tf.reshape(per_image, [g, n, 1, c]), 1, keepdims=True)


@_plain_python
def _batch_norm(h: tf.Tensor, bias: tf.Tensor | None, gamma: tf.Tensor, beta: tf.Tensor,
                eps: float, groups: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Normalise ``h + bias`` ``[groups * n, H, W, C]`` with each group's batch statistics.

    Returns the output and the statistics of ``h + bias`` (``[groups, C]`` mean and biased
    variance, for running averages; not differentiable). ``gamma``/``beta`` are ``[C]``.
    """
    shape = h.shape
    h4 = tf.reshape(h, [groups, shape[0] // groups, shape[1] * shape[2], shape[3]])
    if tf.executing_eagerly():  # plain ops: exact derivatives of every order, eagerly too
        h4 = h4 + bias if bias is not None else h4
        mean = tf.reduce_mean(h4, [1, 2], keepdims=True)
        var = tf.reduce_mean(tf.square(h4 - mean), [1, 2], keepdims=True)
        y = (h4 - mean) * tf.math.rsqrt(var + eps) * gamma + beta
        return tf.reshape(y, shape), *_stats(mean, var, None)
    stats = []
    extra = [bias] if bias is not None else []

    @tf.custom_gradient
    def norm(h4, gamma, beta, *extra):
        count = tf.cast(h4.shape[1] * h4.shape[2], h4.dtype)
        mean = _channel_mean(h4)
        xc = h4 - mean
        var = _channel_mean(tf.square(xc))
        rstd = tf.math.rsqrt(var + eps)
        a = gamma * rstd
        stats.extend([mean, var])

        def grad(dy):
            mdy, mdx = _channel_mean(dy), _channel_mean(dy * xc)
            dx = (dy - mdy) * a - xc * (a * rstd * rstd * mdx)
            dgamma = tf.reshape(tf.reduce_sum(mdx * rstd, 0), gamma.shape) * count
            dbeta = tf.reshape(tf.reduce_sum(mdy, 0), beta.shape) * count
            return (dx, dgamma, dbeta, *[tf.zeros(b.shape, b.dtype) for b in extra])

        return xc * a + beta, grad

    y = norm(h4, gamma, beta, *extra)
    return tf.reshape(y, shape), *_stats(*stats, bias)


def _stats(mean: tf.Tensor, var: tf.Tensor, bias: tf.Tensor | None):
    """``[G, 1, 1, C]`` statistics -> ``[G, C]``, with the skipped bias added to the mean."""
    mean, var = (tf.stop_gradient(tf.reshape(s, [s.shape[0], s.shape[-1]])) for s in (mean, var))
    return (mean + tf.stop_gradient(bias) if bias is not None else mean), var


# --- forward -------------------------------------------------------------------------------


@_plain_python
def _body(spec: Conv4Spec, params: Sequence[tf.Tensor], x: tf.Tensor, groups: int,
          batch_stats: bool, moving: Sequence[tf.Tensor]) -> tuple[tf.Tensor, list]:
    """The body on images ``[groups * n, H, W, C]`` with shared weights ``params``: features
    ``[groups * n, D]`` and, per batch norm, each group's ``(mean, variance)``.

    ``batch_stats``: running batch norms use batch statistics (training mode); else their
    ``moving`` ``[mean, variance]`` pairs (in order).
    """
    dtype = params[0].dtype
    h = tf.cast(x, dtype) * tf.cast(spec.input_scale, dtype)  # as Keras' Rescaling
    stats, i, m = [], 0, 0
    for block in spec.blocks:
        p = params[i:i + block.num_params]
        i += block.num_params
        h = tf.nn.conv2d(h, p[0], block.stride, "SAME")
        bias = p[1] if block.bias else None
        if block.norm is None:
            h = h + bias if bias is not None else h
        elif block.norm == BATCH or batch_stats:
            h, mean, var = _batch_norm(h, bias, p[-2], p[-1], spec.epsilon, groups)
            stats.append((mean, var))
        else:  # running statistics (inference mode), as tf.nn.batch_normalization
            h = h + bias if bias is not None else h
            mean, var = moving[2 * m], moving[2 * m + 1]
            h = (h - mean) * (tf.math.rsqrt(var + spec.epsilon) * p[-2]) + p[-1]
        m += block.norm == RUNNING
        h = tf.nn.relu(h)
        if block.pool:
            h = tf.nn.max_pool2d(h, 2, 2, "VALID")
    if spec.mean_pool:
        return tf.reduce_mean(h, [1, 2]), stats
    return tf.reshape(h, [h.shape[0], -1]), stats


@_plain_python
def shared_features(spec: Conv4Spec, body: Sequence[tf.Tensor], x: tf.Tensor,
                    training: bool = True, moving: Sequence[tf.Tensor] = (),
                    state: Sequence[tf.Tensor] | None = None, track: bool = False
                    ) -> tuple[tf.Tensor, Params]:
    """Features ``[T, n, D]`` of body weights shared by every task on per-task images
    ``[T, n, H, W, C]``: plain convolutions over all ``T * n`` images, each task's batch
    normalised by its own statistics (running batch norms: in training mode; otherwise by
    their ``moving`` statistics, the model's non-trainable values in order).

    With ``track``, running batch norm and training mode, also each task's updated running
    statistics (``[T, ...]`` per non-trainable variable; Keras' momentum update from ``state``:
    per-task values from an earlier pass, or else the shared ``moving`` ones); else ``[]``.
    """
    tasks, n = x.shape[0], x.shape[1]
    feats, stats = _body(spec, body, tf.reshape(x, [tasks * n, *x.shape[2:]]), tasks, training,
                         moving)
    feats = tf.reshape(feats, [tasks, n, feats.shape[-1]])
    if not (track and training):
        return feats, []
    # In training mode every norm used batch statistics, in block order.
    running = [s for s, b in zip(stats, [b for b in spec.blocks if b.norm], strict=True)
               if b.norm == RUNNING]
    if not running:
        return feats, []
    state = list(moving if state is None else state)
    m = spec.momentum
    new = []
    for (mean, var), old_mean, old_var in zip(running, state[0::2], state[1::2], strict=True):
        new += [old_mean * m + mean * (1.0 - m), old_var * m + var * (1.0 - m)]
    return feats, [tf.broadcast_to(s, [tasks, s.shape[-1]]) for s in new]


@_plain_python
def head(params: Sequence[tf.Tensor], feats: tf.Tensor) -> tf.Tensor:
    """The linear head (kernel, optional bias; each shared or stacked) on ``[T, n, D]``."""
    if not params:
        return feats
    out = tf.linalg.matmul(feats, params[0])
    if len(params) > 1:
        bias = params[1]
        out = out + (bias[:, None, :] if bias.shape.rank == 2 else bias)
    return out


def handles(spec: Conv4Spec, params: Sequence[tf.Tensor], x: tf.Tensor) -> bool:
    """Whether :func:`batched` runs these: a shared body, or per-task bodies of at most
    :data:`MAX_UNROLL` tasks (a static count)."""
    if not any(spec.stacked(params[:spec.num_body])):
        return True
    return x.shape[0] is not None and x.shape[0] <= MAX_UNROLL


@_plain_python
def batched(spec: Conv4Spec, params: Sequence[tf.Tensor], x: tf.Tensor, training: bool,
            moving: Sequence[tf.Tensor]) -> tf.Tensor:
    """Outputs ``[T, n, ...]`` of per-task (or shared) weights on per-task images: a drop-in
    for ``tf.vectorized_map`` over ``stateless_call`` (state updates are not returned)."""
    nb = spec.num_body
    body, top = list(params[:nb]), list(params[nb:])
    stacked = spec.stacked(body)
    if not any(stacked):
        return head(top, shared_features(spec, body, x, training, moving)[0])
    tasks = x.shape[0]
    per_param = [tf.unstack(p, num=tasks) if s else [p] * tasks
                 for p, s in zip(body, stacked, strict=True)]
    feats = tf.stack([_body(spec, [p[t] for p in per_param], x[t], 1, training, moving)[0]
                      for t in range(tasks)])
    return head(top, feats)
