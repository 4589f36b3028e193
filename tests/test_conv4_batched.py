"""The fast per-task conv4 path (``pipeline.algorithms.conv4_batched``): exact second-order
meta-gradients, equal to the generic ``tf.vectorized_map`` path, transductive batch norm per
task, running statistics for ProtoNets, chunk-independent and bit-identical training, and a
logged model that predicts like the trained one.

Everything runs on a tiny conv4 (2 blocks, 3 filters, 8x8 images) so the suite stays fast.
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.algorithms import Context
from pipeline.algorithms import conv4_batched as C
from pipeline.algorithms import functional as F
from pipeline.algorithms.anil import ANIL
from pipeline.algorithms.losses import SOFTMAX, TaskLoss
from pipeline.algorithms.maml import MAML
from pipeline.algorithms.metasgd import MetaSGD
from pipeline.algorithms.optimizers import build_optimizer
from pipeline.algorithms.protonet import ProtoNet
from pipeline.algorithms.reptile import Reptile
from pipeline.config import (
    AdamConfig,
    ANILConfig,
    Conv4Config,
    MAMLConfig,
    MetaSGDConfig,
    MetaTrainConfig,
    MLPConfig,
    ProtoNetConfig,
    ReptileConfig,
)
from pipeline.data import TaskSplit
from pipeline.models import build_model, portable
from tests.gradcheck import finite_differences
from tests.test_algorithms import float64  # noqa: F401  (fixture)

HW, WAYS, SHOTS, QUERIES, TASKS = 8, 3, 2, 2, 3


def _model(batch_norm="transductive", downsample="maxpool", head: int | None = WAYS,
           seed: int = 0) -> keras.Model:
    """A tiny conv4 with weights moved off their initial values (gamma, beta, biases too)."""
    model = build_model(Conv4Config(filters=3, blocks=2, batch_norm=batch_norm,
                                    downsample=downsample), (HW, HW, 1), head, seed)
    rng = np.random.default_rng(seed + 1)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def _algo(cls, cfg, fast: bool = True, **model_kw):
    model = _model(**model_kw)
    algo = cls(cfg, Context(model, TaskLoss(SOFTMAX), build_optimizer(AdamConfig()), seed=0))
    if not fast:
        algo.f = F.FunctionalModel(model, fast=False)
    assert (algo.f.conv4 is not None) == fast
    return algo


def _images(rng, tasks: int, n: int) -> tf.Tensor:
    return tf.constant(rng.integers(0, 256, (tasks, n, HW, HW, 1)).astype(np.uint8))


def _batch(seed: int = 0, tasks: int = TASKS):
    rng = np.random.default_rng(seed)
    sy = np.tile(np.arange(WAYS), (tasks, SHOTS)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(WAYS), QUERIES), (tasks, 1)).astype(np.int32)
    return (_images(rng, tasks, WAYS * SHOTS), tf.constant(sy),
            _images(rng, tasks, WAYS * QUERIES), tf.constant(qy))


def _flat(tensors) -> np.ndarray:
    return np.concatenate([np.asarray(t).ravel() for t in tensors])


def test_spec_of_recognises_every_conv4_and_nothing_else():
    for bn in ("transductive", "running", "none"):
        for ds in ("maxpool", "stride"):
            spec = C.spec_of(_model(bn, ds))
            assert spec is not None and len(spec.blocks) == 2
            assert spec.mean_pool == (ds == "stride")
            assert {b.norm for b in spec.blocks} == {
                {"transductive": C.BATCH, "running": C.RUNNING, "none": None}[bn]}
    assert C.spec_of(build_model(MLPConfig(), (3,), 2, 0)) is None
    odd = keras.Sequential([keras.Input((HW, HW, 1)), keras.layers.Rescaling(1.0),
                            keras.layers.Conv2D(2, 3, padding="valid"), keras.layers.ReLU(),
                            keras.layers.Flatten()])
    assert C.spec_of(odd) is None  # 'valid' padding: not a conv4, the generic path runs it


def test_stride_conv4_is_the_maml_papers_omniglot_net():
    """learn2learn's OmniglotCNN: 3x3 stride-2 convs, 28 -> 14 -> 7 -> 4 -> 2, spatial mean."""
    model = build_model(Conv4Config(downsample="stride"), (28, 28, 1), 5, 0)
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers
              if layer.name.startswith("relu")]
    assert shapes == [(14, 14, 64), (7, 7, 64), (4, 4, 64), (2, 2, 64)]
    assert model.get_layer("features").output.shape[1:] == (64,)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)


@pytest.mark.parametrize("batch_norm", ["transductive", "running", "none"])
@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
def test_batched_forward_is_each_tasks_own_model_call(batch_norm, downsample, float64):  # noqa: F811
    """Per-task and shared weights on per-task batches: each task's output is that task's
    weights applied to that task's batch alone (transductive batch norm: its own statistics;
    running batch norm: batch statistics in training mode, the running ones otherwise)."""
    model = _model(batch_norm, downsample)
    f, generic = F.FunctionalModel(model), F.FunctionalModel(model, fast=False)
    x = _images(np.random.default_rng(2), TASKS, 5)
    rng = np.random.default_rng(3)
    params = f.params()
    stacked = [tf.stack([p + 0.1 * rng.standard_normal(p.shape) for _ in range(TASKS)])
               for p in params]
    for training in (True, False):
        fast_stacked = tf.function(lambda s, x, t=training: f.batched(s, x, t))(stacked, x)
        shared = tf.function(lambda p, x, t=training: f.batched(p, x, t))(params, x)
        for t in range(TASKS):
            own = f([s[t] for s in stacked], x[t], training)  # stateless_call, one task
            np.testing.assert_allclose(fast_stacked[t], own, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(shared[t], model(x[t], training=training), rtol=1e-10,
                                       atol=1e-10)
        np.testing.assert_allclose(fast_stacked, generic.batched(stacked, x, training),
                                   rtol=1e-10, atol=1e-10)
    # Another task's images change nothing of task 0's outputs (statistics are per task).
    other = tf.concat([x[:1], x[1:] // 2], 0)
    np.testing.assert_array_equal(f.batched(params, other, True)[0],
                                  f.batched(params, x, True)[0])


#: (name, class, config, model options): second order through every fast formulation.
GRADCHECK = [
    ("maml head", MAML, MAMLConfig(inner_lr=0.3, inner_steps=1), {}),
    pytest.param("maml zero_head, 2 steps", MAML,
                 MAMLConfig(inner_lr=0.3, inner_steps=2, zero_head=True), {},
                 marks=pytest.mark.slow),
    ("maml zero_head, stride", MAML,
     MAMLConfig(inner_lr=0.3, inner_steps=1, zero_head=True), {"downsample": "stride"}),
    ("anil, 2 steps", ANIL, ANILConfig(inner_lr=0.3, inner_steps=2), {}),
    ("metasgd zero_head", MetaSGD, MetaSGDConfig(inner_lr=0.3, inner_steps=1, zero_head=True),
     {}),
]


@pytest.mark.parametrize("name, cls, cfg, kw", GRADCHECK,
                         ids=[getattr(g, "values", g)[0] for g in GRADCHECK])
def test_second_order_meta_gradient_matches_finite_differences(name, cls, cfg, kw,
                                                               float64):  # noqa: F811
    algo = _algo(cls, cfg, **kw)
    batch = _batch(4)
    _, grads = tf.function(algo.meta_gradients)(batch)
    analytic, numeric = _flat(grads), finite_differences(algo, batch)
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-6, rel


EQUAL = [
    ("maml head", MAML, MAMLConfig(inner_lr=0.3, inner_steps=1, test_inner_steps=2), {}),
    pytest.param("maml zero_head", MAML,
                 MAMLConfig(inner_lr=0.3, inner_steps=2, test_inner_steps=2, zero_head=True),
                 {"downsample": "stride"}, marks=pytest.mark.slow),
    pytest.param("fomaml zero_head", MAML,
                 MAMLConfig(inner_lr=0.3, inner_steps=1, first_order=True, zero_head=True), {},
                 marks=pytest.mark.slow),
    ("anil", ANIL, ANILConfig(inner_lr=0.3, inner_steps=2), {"batch_norm": "none"}),
    pytest.param("metasgd", MetaSGD,
                 MetaSGDConfig(inner_lr=0.3, inner_steps=1, zero_head=True), {},
                 marks=pytest.mark.slow),
    pytest.param("reptile", Reptile, ReptileConfig(inner_lr=0.1, inner_steps=2), {},
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, cls, cfg, kw", EQUAL,
                         ids=[getattr(e, "values", e)[0] for e in EQUAL])
def test_fast_conv_path_equals_the_generic_path(name, cls, cfg, kw, float64):  # noqa: F811
    """Meta-gradients, test-time adaptation and query metrics, in float64."""
    batch = _batch(5)
    results = []
    for fast in (True, False):
        algo = _algo(cls, cfg, fast=fast, **kw)
        metrics, grads = tf.function(algo.meta_gradients)(batch)
        state = algo.adapt(algo.initial_state(np.arange(TASKS)), batch[0], batch[1])
        results.append((float(metrics["loss"]), _flat(grads), _flat(state),
                        algo.evaluate(state, batch[2], batch[3])["loss"]))
    (lf, gf, sf, ef), (lg, gg, sg, eg) = results
    assert lf == pytest.approx(lg, rel=1e-12)
    np.testing.assert_allclose(gf, gg, rtol=1e-9, atol=1e-12 * np.abs(gg).max())
    np.testing.assert_allclose(sf, sg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ef, eg, rtol=1e-10)


@pytest.mark.parametrize("batch_norm", ["running", "transductive"])
def test_protonet_step_equals_the_generic_path(batch_norm, float64):  # noqa: F811
    """Loss, meta-gradient, running statistics after the step, and meta-test embeddings."""
    batch = _batch(6, tasks=2)
    results = []
    for fast in (True, False):
        algo = _algo(ProtoNet, ProtoNetConfig(), fast=fast, batch_norm=batch_norm, head=None)
        weights = [v.numpy() for v in algo.model.trainable_variables]
        algo.ctx.optimizer.build(algo.model.trainable_variables)
        metrics = algo.meta_train_step(batch)
        protos = algo.adapt(None, batch[0], batch[1])
        results.append((float(metrics["loss"]),
                        _flat(w - v.numpy() for w, v in
                              zip(weights, algo.model.trainable_variables, strict=True)),
                        _flat([0.0, *(v.numpy() for v in algo.model.non_trainable_variables)]),
                        protos.numpy(), algo.evaluate(protos, batch[2], batch[3])["loss"]))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    if batch_norm == "running":  # the statistics moved (meta-test then used them)
        assert not np.allclose(results[0][2], _flat([0.0, *[np.zeros(3), np.ones(3)] * 2]))


def _split(rng, tasks: int = 12) -> TaskSplit:
    sy = np.tile(np.arange(WAYS), (tasks, SHOTS)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(WAYS), QUERIES), (tasks, 1)).astype(np.int32)
    img = lambda n: rng.integers(0, 256, (tasks, n, HW, HW, 1)).astype(np.uint8)  # noqa: E731
    return TaskSplit(img(WAYS * SHOTS), sy, img(WAYS * QUERIES), qy)


@pytest.mark.slow  # the fast suite: chunk independence on the MLP (test_meta_algorithms)
def test_conv_training_is_chunk_independent_and_bit_identical():
    """float32 as in real runs: the same seed gives the same curves, weights and test metrics,
    bit for bit, whatever ``steps_per_call`` (per-task convolutions at test time, 2 steps)."""
    split = _split(np.random.default_rng(7))
    cfg = MAMLConfig(inner_lr=0.3, inner_steps=1, test_inner_steps=2, zero_head=True)
    runs = []
    for chunk in (4, 4, 100):
        algo = _algo(MAML, cfg)
        mt = MetaTrainConfig(iterations=6, meta_batch_size=3, steps_per_call=chunk)
        curve = np.concatenate([m["loss"] for _, m in algo.meta_train(
            split, mt, np.random.default_rng(0))])
        state = algo.adapt(algo.initial_state(np.arange(4)), split.support_x[:4],
                           split.support_y[:4])
        test = algo.evaluate(state, split.query_x[:4], split.query_y[:4])
        runs.append((curve, _flat(v.numpy() for v in algo.model.trainable_variables),
                     test["loss"], test["acc"]))
    assert len(runs[0][0]) == 6
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # a logged conv4 loaded in a fresh process; the fast suite: test_omniglot
def test_logged_model_predicts_like_the_trained_one(tmp_path):
    """Both conv4 variants, trained a few steps on the fast path, are logged as stock Keras;
    a Python that never imports the project loads them and gives the logits the fast path
    gives (each task's batch normalised by its own statistics)."""
    split = _split(np.random.default_rng(8))
    x = split.query_x[:2]
    expected = {}
    for ds in ("maxpool", "stride"):
        algo = _algo(ANIL, ANILConfig(inner_lr=0.3, inner_steps=1), downsample=ds)
        for _ in algo.meta_train(split, MetaTrainConfig(iterations=3, meta_batch_size=2),
                                 np.random.default_rng(0)):
            pass
        params = algo.f.params()
        expected[ds] = tf.function(lambda p, x, a=algo: a.f.batched(p, x, True))(
            params, tf.constant(x)).numpy()
        portable(algo.model).save(tmp_path / f"{ds}.keras")
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, keras; x = np.load('x.npy')\n"
            "for ds in ('maxpool', 'stride'):\n"
            "    m = keras.saving.load_model(f'{ds}.keras')\n"
            "    np.save(f'{ds}.npy', np.stack([np.asarray(m(t)) for t in x]))\n"
            "assert not any(k.startswith('pipeline') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    for ds, want in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{ds}.npy"), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
def test_colour_images_of_odd_size_take_the_fast_path_exactly(downsample, float64):  # noqa: F811
    """The image family's inputs (3 channels; sizes that pooling floors, 11 -> 5 -> 2) give
    each task its own model's output on the fast path as on one task's ``stateless_call``."""
    model = build_model(Conv4Config(filters=3, blocks=2, downsample=downsample), (11, 11, 3),
                        WAYS, 0)
    f = F.FunctionalModel(model)
    assert f.conv4 is not None
    rng = np.random.default_rng(4)
    x = tf.constant(rng.integers(0, 256, (TASKS, 4, 11, 11, 3)).astype(np.uint8))
    stacked = [tf.stack([p + 0.1 * rng.standard_normal(p.shape) for _ in range(TASKS)])
               for p in f.params()]
    out = f.batched(stacked, x, True)
    for t in range(TASKS):
        np.testing.assert_allclose(out[t], f([s[t] for s in stacked], x[t], True), rtol=1e-10,
                                   atol=1e-10)
