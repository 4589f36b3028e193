"""The algorithm suite: meta-gradients against references, first vs second order, Reptile's
update against a plain loop, the fast batched paths against the generic ones, chunking."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.algorithms import Context, build_algorithm, outer
from pipeline.algorithms import functional as F
from pipeline.algorithms.anil import ANIL
from pipeline.algorithms.losses import MSE, SOFTMAX, TaskLoss
from pipeline.algorithms.maml import MAML
from pipeline.algorithms.metasgd import MetaSGD
from pipeline.algorithms.optimizers import build_optimizer
from pipeline.algorithms.reptile import Reptile
from pipeline.config import (
    AdamConfig,
    ANILConfig,
    FOMAMLConfig,
    MAMLConfig,
    MetaSGDConfig,
    MetaTrainConfig,
    MLPConfig,
    ReptileConfig,
)
from pipeline.data import TaskSplit
from pipeline.models import build_model
from tests.gradcheck import finite_differences
from tests.test_algorithms import _batch, float64  # noqa: F401  (fixture)

SECOND_ORDER = {
    "maml": (MAML, MAMLConfig),
    "anil": (ANIL, ANILConfig),
    "metasgd": (MetaSGD, MetaSGDConfig),
}


def _ctx(seed: int = 0, outputs: int = 3, loss: str = SOFTMAX, inputs: int = 3) -> Context:
    model = build_model(MLPConfig(hidden_units=[6], activation="tanh"), (inputs,), outputs, seed)
    return Context(model, TaskLoss(loss), build_optimizer(AdamConfig()), seed=0)


def _make(name: str, steps: int = 2, first_order: bool = False, fast: bool = True, **kw):
    cls, schema = SECOND_ORDER[name]
    algo = cls(schema(inner_lr=0.3, inner_steps=steps, first_order=first_order, **kw), _ctx())
    if not fast:
        algo.f = F.FunctionalModel(algo.model, fast=False)
    return algo


def _flat(grads) -> np.ndarray:
    return np.concatenate([g.numpy().ravel() for g in grads])


@pytest.mark.parametrize("name", ["anil", "metasgd"])
def test_meta_gradient_matches_centralfinite_differences(name, float64):  # noqa: F811
    algo = _make(name)
    batch = _batch(np.random.default_rng(3))
    _, grads = algo.meta_gradients(batch)
    assert all(v.dtype == "float64" for v in algo.meta_variables)
    analytic, numeric = _flat(grads), finite_differences(algo, batch)
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-6, rel


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_meta_gradient_matches_a_loop_over_tasks(name, first_order, float64):  # noqa: F811
    """The batched step against a plain reference: one task at a time, nested tapes."""
    algo = _make(name, first_order=first_order)
    sx, sy, qx, qy = _batch(np.random.default_rng(4))
    _, grads = algo.meta_gradients((sx, sy, qx, qy))
    variables = algo.meta_variables
    mask = algo.inner_mask() or [True] * len(algo.model.trainable_variables)
    reference = [np.zeros(v.shape) for v in variables]
    for t in range(3):
        with tf.GradientTape() as outer_tape:
            params = algo.f.params()
            lrs = algo.inner_lrs()
            lrs = lrs if isinstance(lrs, list) else [lrs] * len(params)
            for _ in range(2):
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    value = algo.loss.loss(algo.f(params, sx[t]), sy[t])
                g = tape.gradient(value, params)
                g = [tf.stop_gradient(x) for x in g] if first_order else g
                params = [p - a * gi if m else p
                          for p, a, gi, m in zip(params, lrs, g, mask, strict=True)]
            query = algo.loss.loss(algo.f(params, qx[t]), qy[t]) / 3
        for r, gi in zip(reference, outer_tape.gradient(query, variables), strict=True):
            r += gi.numpy()
    ref = np.concatenate([r.ravel() for r in reference])
    rel = np.linalg.norm(_flat(grads) - ref) / np.linalg.norm(ref)
    assert rel < 1e-10, rel


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_first_order_differs_from_second_order(name, float64):  # noqa: F811
    batch = _batch(np.random.default_rng(5))
    _, second = _make(name).meta_gradients(batch)
    _, first = _make(name, first_order=True).meta_gradients(batch)
    diff = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(second, first, strict=True))
    assert diff > 1e-4


def test_anil_adapts_only_the_head_but_meta_learns_the_body(float64):  # noqa: F811
    algo = _make("anil")
    sx, sy, qx, qy = _batch(np.random.default_rng(6))
    before = algo.initial_state(np.arange(3))
    after = algo.adapt(before, sx, sy)
    head = algo.inner_mask()
    assert head == [False, False, True, True]
    for p0, p1, adapted in zip(before, after, head, strict=True):
        assert np.array_equal(p0, p1) != adapted
    _, grads = algo.meta_gradients((sx, sy, qx, qy))
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_metasgd_learns_its_inner_rates():
    algo = _make("metasgd", steps=1)
    sx, sy, qx, qy = (tf.cast(t, tf.float32) if t.dtype.is_floating else t
                      for t in _batch(np.random.default_rng(7)))
    start = algo.learned_lrs()
    assert all(np.all(a == np.float32(0.3)) for a in start)
    algo.build_for_training(MetaTrainConfig())
    metrics = algo.meta_train_step((sx, sy, qx, qy))
    assert set(metrics) == {"loss", "acc", "inner_lr_mean", "inner_lr_abs_mean"}
    assert any(not np.array_equal(a, b) for a, b in zip(start, algo.learned_lrs(), strict=True))


def test_fomaml_preset_is_first_order_maml(float64):  # noqa: F811
    algo = build_algorithm(FOMAMLConfig(inner_lr=0.3, inner_steps=2), _ctx())
    assert isinstance(algo, MAML) and algo.cfg.first_order and algo.name == "fomaml"
    batch = _batch(np.random.default_rng(8))
    _, a = algo.meta_gradients(batch)
    _, b = _make("maml", first_order=True).meta_gradients(batch)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_fast_dense_path_equals_the_generic_vectorized_map_path(name, float64):  # noqa: F811
    batch = _batch(np.random.default_rng(9))
    fast, generic = _make(name), _make(name, fast=False)
    assert fast.f._dense is not None and generic.f._dense is None
    (mf, gf), (mg, gg) = fast.meta_gradients(batch), generic.meta_gradients(batch)
    np.testing.assert_allclose(float(mf["loss"]), float(mg["loss"]), rtol=1e-12)
    np.testing.assert_allclose(_flat(gf), _flat(gg), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_reptile_update_matches_a_plain_loop(inner, float64):  # noqa: F811
    ctx = _ctx(outputs=1, loss=MSE)
    cfg = ReptileConfig(inner_lr=0.05, inner_steps=3, inner_optimizer=inner, epsilon=0.5,
                        anneal=True)
    algo = Reptile(cfg, ctx)
    rng = np.random.default_rng(10)
    sx, qx = (tf.constant(rng.standard_normal((4, 5, 3))) for _ in range(2))
    sy, qy = (tf.constant(rng.standard_normal((4, 5))) for _ in range(2))
    theta = [v.numpy() for v in algo.model.trainable_variables]
    phis = []
    for t in range(4):  # each task alone, a hand-written SGD / Adam in numpy
        params = [tf.constant(p) for p in theta]
        m = [np.zeros_like(p) for p in theta]
        v = [np.zeros_like(p) for p in theta]
        for step in range(1, 4):
            with tf.GradientTape() as tape:
                tape.watch(params)
                value = algo.loss.loss(algo.f(params, sx[t]), sy[t])
            grads = [g.numpy() for g in tape.gradient(value, params)]
            new = []
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                if inner == "sgd":
                    new.append(p.numpy() - 0.05 * g)
                    continue
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                lr = 0.05 * np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
                new.append(p.numpy() - lr * m[i] / (np.sqrt(v[i]) + 1e-7))
            params = [tf.constant(p) for p in new]
        phis.append([p.numpy() for p in params])
    expected = [th - np.mean([phi[i] for phi in phis], axis=0) for i, th in enumerate(theta)]
    _, deltas = algo.meta_gradients((sx, sy, qx, qy))
    for e, d in zip(expected, deltas, strict=True):
        np.testing.assert_allclose(d.numpy(), e, rtol=1e-9, atol=1e-12)
    # The outer step: theta <- theta - epsilon_t * delta, epsilon annealed linearly to 0.
    algo.build_for_training(MetaTrainConfig(iterations=4))
    algo.iteration.assign(1)
    metrics = algo.meta_train_step((sx, sy, qx, qy))
    assert float(metrics["epsilon"]) == pytest.approx(0.5 * 0.75)
    for th, e, var in zip(theta, expected, algo.model.trainable_variables, strict=True):
        np.testing.assert_allclose(var.numpy(), th - 0.375 * e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
def test_fused_outer_adam_equals_keras_adam(schedule):
    cfg = AdamConfig(learning_rate=0.01, schedule=schedule, decay_every=2, decay_rate=0.1)
    grads = [tf.constant(np.random.default_rng(s).standard_normal((4, 3)), tf.float32)
             for s in range(5)]
    results = []
    for fused in (True, False):
        var = keras.Variable(np.ones((4, 3), np.float32))
        opt = build_optimizer(cfg, total_steps=5)
        opt.build([var])
        assert outer.fusable(opt)
        for g in grads:
            if fused:
                outer.apply(opt, [g], [var])
            else:
                opt.apply_gradients([(g, var)])
        results.append(var.numpy())
        assert int(opt.iterations) == 5
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert not outer.fusable(keras.optimizers.Adam(clipnorm=1.0))


def test_learning_rate_schedules():
    def rates(**kw):
        opt = build_optimizer(AdamConfig(learning_rate=1.0, **kw), total_steps=10)
        out = []
        for i in range(11):
            opt.iterations.assign(i)
            out.append(float(opt.learning_rate))
        return out

    assert rates() == [1.0] * 11
    assert rates(schedule="step", decay_every=4, decay_rate=0.5) == pytest.approx(
        [1, 1, 1, 1, .5, .5, .5, .5, .25, .25, .25])
    cosine = rates(schedule="cosine", min_lr_fraction=0.1)
    assert cosine[0] == 1.0
    assert cosine[5] == pytest.approx(0.55) and cosine[10] == pytest.approx(0.1)


def test_results_do_not_depend_on_the_chunk_size():
    rng = np.random.default_rng(11)
    split = TaskSplit(rng.standard_normal((30, 6, 3)).astype(np.float32),
                      rng.integers(0, 3, (30, 6)).astype(np.int32),
                      rng.standard_normal((30, 6, 3)).astype(np.float32),
                      rng.integers(0, 3, (30, 6)).astype(np.int32))
    weights, curves = [], []
    for chunk in (1, 7, 100):
        algo = _make("maml", steps=1)
        cfg = MetaTrainConfig(iterations=15, meta_batch_size=4, steps_per_call=chunk)
        chunks = algo.meta_train(split, cfg, np.random.default_rng(0))
        curves.append(np.concatenate([m["loss"] for _, m in chunks]))
        weights.append([v.numpy() for v in algo.model.trainable_variables])
    assert len(curves[0]) == 15
    for other in (1, 2):
        np.testing.assert_array_equal(curves[0], curves[other])
        for a, b in zip(weights[0], weights[other], strict=True):
            np.testing.assert_array_equal(a, b)
