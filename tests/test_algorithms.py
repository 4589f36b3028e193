"""Models and algorithms: shapes, fresh weights, MAML's meta-gradient against finite differences."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.algorithms import Context, build_algorithm
from pipeline.algorithms import functional as F
from pipeline.algorithms.losses import SIGMOID, SOFTMAX, TaskLoss
from pipeline.algorithms.maml import MAML
from pipeline.algorithms.optimizers import build_optimizer
from pipeline.config import MAMLConfig, MLPConfig, ScratchConfig
from pipeline.models import build_model, fresh_weights
from tests.gradcheck import finite_differences


def test_mlp_shapes_and_seeded_init():
    cfg = MLPConfig(hidden_units=[16, 8], activation="tanh")
    a, b, c = (build_model(cfg, (5,), 3, s) for s in (1, 1, 2))
    assert [tuple(v.shape) for v in a.trainable_variables] == [(5, 16), (16,), (16, 8), (8,),
                                                               (8, 3), (3,)]
    assert a(np.zeros((4, 5), np.float32)).shape == (4, 3)
    same = all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    assert same and not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_fresh_weights_are_seeded_draws_from_the_layer_initialisers():
    model = build_model(MLPConfig(hidden_units=[32]), (10,), 2, 0)
    w1, w1b, w2 = fresh_weights(model, 1), fresh_weights(model, 1), fresh_weights(model, 2)
    assert all(np.array_equal(a, b) for a, b in zip(w1, w1b, strict=True))
    assert not np.array_equal(w1[0], w2[0])
    limit = np.sqrt(6 / (10 + 32))  # Glorot uniform bound of the first kernel
    assert np.abs(w1[0]).max() <= limit and np.abs(w1[0]).max() > 0.8 * limit
    assert not np.any(w1[1])  # biases start at zero


def test_zero_head_init_starts_every_class_equal_and_still_learns():
    model = build_model(MLPConfig(hidden_units=[8], head_init="zeros"), (3,), 4, seed=0)
    kernel = model.get_layer("head").kernel
    assert not np.any(kernel.numpy()) and np.any(model.get_layer("hidden_0").kernel.numpy())
    assert not np.any(fresh_weights(model, 5)[2])  # the scratch baseline's draws follow it
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.softmax(model(x)).numpy(), 0.25, rtol=1e-6)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(np.array([0, 1, 2, 3, 0, 1]), model(x),
                                                            from_logits=True)
    assert np.any(tape.gradient(loss, kernel).numpy())


@pytest.mark.parametrize("kind, y", [(SOFTMAX, [0, 2]), (SIGMOID, [1, 0])])
def test_loss_metrics(kind, y):
    out = tf.constant([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]]) if kind == SOFTMAX else \
        tf.constant([[2.0], [1.0]])
    m = TaskLoss(kind).metrics(out, tf.constant(y))
    assert float(m["acc"]) == (1.0 if kind == SOFTMAX else 0.5)
    assert float(m["loss"]) > 0


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def _maml(first_order: bool, steps: int = 2, zero_head: bool = False):
    model = build_model(MLPConfig(hidden_units=[6], activation="tanh"), (3,), 3, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(_adam()), seed=0)
    return MAML(MAMLConfig(inner_lr=0.3, inner_steps=steps, test_inner_steps=steps,
                           first_order=first_order, zero_head=zero_head), ctx)


def _adam():
    from pipeline.config import AdamConfig

    return AdamConfig()


def _batch(rng, tasks=3, n=6, classes=3):
    x = lambda: tf.constant(rng.standard_normal((tasks, n, 3)))  # noqa: E731
    y = lambda: tf.constant(rng.integers(0, classes, (tasks, n)), tf.int32)  # noqa: E731
    return x(), y(), x(), y()


@pytest.mark.parametrize("zero_head", [False, True])
def test_maml_meta_gradient_matches_central_finite_differences(float64, zero_head):
    """With ``zero_head`` the body's gradient also flows through the head that the inner step
    builds from the support features, which first-order MAML drops."""
    algo = _maml(first_order=False, zero_head=zero_head)
    batch = _batch(np.random.default_rng(0))
    _metrics, grads = algo.meta_gradients(batch)
    variables = algo.meta_variables
    assert len(variables) == len(algo.model.trainable_variables) - 2 * zero_head
    assert all(v.dtype == "float64" for v in variables)
    analytic = np.concatenate([g.numpy().ravel() for g in grads])
    numeric = finite_differences(algo, batch)
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-6, rel


def test_first_order_drops_second_order_terms(float64):
    batch = _batch(np.random.default_rng(1))
    _, second = _maml(first_order=False).meta_gradients(batch)
    _, first = _maml(first_order=True).meta_gradients(batch)
    diff = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(second, first, strict=True))
    assert diff > 1e-4
    # First-order MAML's gradient is the query-loss gradient at the adapted weights, averaged.
    algo = _maml(first_order=True)
    sx, sy, qx, qy = batch
    manual = [np.zeros(v.shape) for v in algo.model.trainable_variables]
    for t in range(3):
        adapted = F.sgd_adapt(algo.f, algo.loss, algo.f.params(), sx[t], sy[t], 2, 0.3, True)
        with tf.GradientTape() as tape:
            tape.watch(adapted)
            value = algo.loss.loss(algo.f(adapted, qx[t]), qy[t])
        for m, g in zip(manual, tape.gradient(value, adapted), strict=True):
            m += g.numpy() / 3
    for m, g in zip(manual, first, strict=True):
        np.testing.assert_allclose(m, g.numpy(), rtol=1e-10, atol=1e-12)


def test_vectorised_adaptation_matches_a_loop_of_single_tasks():
    algo = _maml(first_order=False, steps=3)
    sx, sy, _qx, _qy = (tf.cast(t, tf.float32) if t.dtype.is_floating else t
                      for t in _batch(np.random.default_rng(2), tasks=4))
    batched = algo.adapt(algo.initial_state(np.arange(4)), sx, sy)
    for t in range(4):
        single = F.sgd_adapt(algo.f, algo.loss, algo.f.params(), sx[t], sy[t], 3, 0.3, False)
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_allclose(a[t].numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_scratch_gives_each_task_its_own_init_independent_of_batching():
    model = build_model(MLPConfig(hidden_units=[8]), (3,), 2, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(_adam()), seed=7)
    scratch = build_algorithm(ScratchConfig(steps=3), ctx)
    all_four = scratch.initial_state(np.arange(4))
    last_two = scratch.initial_state(np.array([2, 3]))
    assert not np.array_equal(all_four[0][0], all_four[0][1])
    np.testing.assert_array_equal(all_four[0][2:], last_two[0])


def test_unknown_algorithm_name_is_refused():
    model = build_model(MLPConfig(hidden_units=[4]), (3,), 2, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(_adam()), seed=0)
    bogus = dataclasses.replace(ScratchConfig(), name="bogus")
    with pytest.raises(ValueError, match=r"algorithm\.name='bogus'"):
        build_algorithm(bogus, ctx)


def test_zero_head_holds_the_head_at_zero_and_meta_learns_the_body():
    model = build_model(MLPConfig(hidden_units=[6], activation="tanh"), (3,), 3, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(_adam()), seed=0)
    algo = MAML(MAMLConfig(inner_lr=0.3, zero_head=True, first_order=True), ctx)
    head = model.get_layer("head")
    assert not np.any(head.kernel.numpy())  # glorot-initialised, zeroed by the option
    assert len(algo.meta_variables) == len(model.trainable_variables) - 2
    body = model.get_layer("hidden_0").kernel.numpy().copy()
    algo.build_for_training(None)
    rng = np.random.default_rng(3)
    for _ in range(3):
        algo.meta_train_step(tuple(tf.cast(t, tf.float32) if t.dtype.is_floating else t
                                   for t in _batch(rng)))
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    assert not np.allclose(model.get_layer("hidden_0").kernel.numpy(), body)
    sx, sy, _, _ = _batch(rng)
    adapted = algo.adapt(algo.initial_state(np.arange(3)), tf.cast(sx, tf.float32), sy)
    assert np.any(adapted[-2].numpy())  # each task's head is fitted from zero on its support


def test_zero_head_on_a_headless_model_is_refused():
    model = build_model(MLPConfig(hidden_units=[4]), (3,), None, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(_adam()), seed=0)
    with pytest.raises(ValueError, match=r"algorithm\.zero_head needs a model with a .head. layer"):
        MAML(MAMLConfig(zero_head=True), ctx)
