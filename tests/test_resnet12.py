"""ResNet-12 (``model=resnet12``) and conv4 on colour images: shapes, second-order MAML
gradients through the residual blocks against finite differences, ProtoNets and MAML through
the pipeline, the scratch baseline's fresh draws, and the stock-Keras logged model."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.algorithms import Batch, Context
from pipeline.algorithms.losses import SOFTMAX, TaskLoss
from pipeline.algorithms.maml import MAML
from pipeline.algorithms.optimizers import build_optimizer
from pipeline.config import AdamConfig, Conv4Config, MAMLConfig, ResNet12Config
from pipeline.models import BatchStatsNorm, build_model, fresh_weights, portable
from pipeline.models.resnet12 import ResBlock
from pipeline.run.runner import execute
from tests import image_sets
from tests.test_algorithms import float64  # noqa: F401  (fixture)

TINY = ResNet12Config(filters=[4, 6, 8, 10])


def test_resnet12_shapes_and_conv4_on_84x84x3():
    full = build_model(ResNet12Config(), (84, 84, 3), None, 0)
    assert full.output_shape == (None, 640) and full.count_params() == 12_424_320
    blocks = [layer for layer in full.layers if isinstance(layer, ResBlock)]
    assert [b.compute_output_shape((None, 84, 84, 3))[-1] for b in blocks] == [64, 160, 320, 640]
    kernels = [tuple(v.shape) for v in blocks[3].trainable_variables if len(v.shape) == 4]
    assert kernels == [(3, 3, 320, 640), (3, 3, 640, 640), (3, 3, 640, 640), (1, 1, 320, 640)]
    x = np.random.default_rng(0).integers(0, 256, (2, 84, 84, 3)).astype(np.float32)
    flat = build_model(ResNet12Config(filters=[4, 6, 8, 10], global_pool=False), (84, 84, 3),
                       5, 0)
    assert flat.get_layer("features").output.shape == (None, 5 * 5 * 10)  # 84/2/2/2/2 = 5
    assert flat(x).shape == (2, 5)
    conv4 = build_model(Conv4Config(filters=8), (84, 84, 3), None, 0)
    assert conv4.output_shape == (None, 5 * 5 * 8) and conv4(x).shape == (2, 200)


def test_fresh_weights_reach_the_layers_inside_the_blocks():
    model = build_model(TINY, (16, 16, 3), 5, 0)
    a, b = fresh_weights(model, 1), fresh_weights(model, 2)
    assert [tuple(w.shape) for w in a] == [tuple(v.shape) for v in model.trainable_variables]
    assert not np.array_equal(a[0], b[0])
    std = np.sqrt(2 / (3 * 3 * 3))  # He normal, fan-in of the first 3x3 conv on RGB
    assert 0.5 * std < np.std(a[0]) < 1.5 * std


def _maml(model_cfg) -> MAML:
    model = build_model(model_cfg, (16, 16, 3), 3, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(AdamConfig()), seed=0)
    return MAML(MAMLConfig(inner_lr=0.1, inner_steps=1, first_order=False), ctx)


def _groups(algo, model_cfg) -> list[list]:
    """Meta-variables by block (each residual / conv block, then the head)."""
    prefix = "block_" if isinstance(model_cfg, ResNet12Config) else "_"
    groups: dict[str, list] = {}
    for v in algo.meta_variables:
        part = v.path.split("/")[1]
        key = part.split("_")[-1] if prefix == "_" and part != "head" else part
        groups.setdefault(key, []).append(v)
    return list(groups.values())


#: Tracing (vectorising) ResNet-12's second-order meta-gradient takes ~25 s of CPU: slow.
@pytest.mark.parametrize("model_cfg", [
    pytest.param(ResNet12Config(filters=[2, 2, 2, 2]), id="resnet12", marks=pytest.mark.slow),
    pytest.param(Conv4Config(filters=2), id="conv4")])
def test_second_order_maml_gradient_matches_finite_differences(model_cfg, float64):  # noqa: F811
    """Central differences of the meta-loss along random directions (all weights at once, then
    each block's alone: the residual path, the shortcut's 1x1 conv, the transductive norms, the
    head) against the vectorised meta-gradient. Transductive batch norm must differentiate
    twice exactly: a stopped gradient inside TensorFlow's moments once made conv4's
    meta-gradient wrong (a conv bias before a norm changes nothing, yet got a gradient)."""
    algo = _maml(model_cfg)
    rng = np.random.default_rng(0)
    x = lambda: tf.constant(rng.random((2, 6, 16, 16, 3)) * 255)  # noqa: E731
    y = lambda: tf.constant(np.tile([0, 1, 2], (2, 2)), tf.int32)  # noqa: E731
    batch = Batch(x(), y(), x(), y())
    _, grads = algo.meta_gradients(batch)
    grad = {id(v): g.numpy() for v, g in zip(algo.meta_variables, grads, strict=True)}
    loss = tf.function(lambda: algo.meta_loss([tf.convert_to_tensor(v)
                                               for v in algo.meta_variables], batch)[0])
    base = {id(v): v.numpy() for v in algo.meta_variables}
    eps = 1e-6
    groups = _groups(algo, model_cfg)
    assert len(groups) == 5
    for group in [algo.meta_variables, *groups]:
        direction = {id(v): rng.standard_normal(v.shape) for v in group}
        norm = np.sqrt(sum((d**2).sum() for d in direction.values()))
        values = []
        for sign in (1, -1):
            for v in group:
                v.assign(base[id(v)] + sign * eps * direction[id(v)] / norm)
            values.append(float(loss()))
        for v in group:
            v.assign(base[id(v)])
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum((grad[id(v)] * direction[id(v)]).sum() for v in group) / norm
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), [v.path for v in group]
    if isinstance(model_cfg, Conv4Config):
        np.testing.assert_allclose(grad[id(algo.model.get_layer("conv_0").bias)], 0, atol=1e-12)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return image_sets.write(tmp_path_factory.mktemp("images") / "set", "folders")


@pytest.mark.slow  # ~20-40 s of tracing each; the fast suite keeps the shapes and gradients
@pytest.mark.parametrize("algorithm, batch_norm", [
    ("protonet", "running"), ("fomaml", "transductive")])
def test_protonet_and_maml_train_resnet12_through_the_pipeline(algorithm, batch_norm, make_cfg,
                                                               collection):
    cfg, _ = make_cfg("data=images", "model=resnet12", f"algorithm={algorithm}",
                      *image_sets.overrides(collection), *image_sets.TINY_IMAGES[:-2],
                      "model.filters=[4,4,4,4]", f"model.batch_norm={batch_norm}",
                      "meta_train.iterations=3", "meta_train.meta_batch_size=2",
                      "meta_train.validate_every=3", "meta_test.scratch.steps=2",
                      "meta_test.task_batch_size=6", "algorithm.test_inner_steps=1"
                      if algorithm == "fomaml" else "meta_test.compare_to_scratch=false")
    result = execute(cfg, track=False)
    assert result.per_task["acc_after"].shape == (6,)
    assert np.isfinite(result.per_task["loss_after"]).all()
    model = result.algorithm.model
    if batch_norm == "running":  # the statistics were updated from the episodes
        assert all(np.any(v.numpy() != init) for v, init in
                   zip(model.non_trainable_variables, [0, 1] * 16, strict=True))
    else:  # the scratch baseline drew fresh weights for every block's layers
        assert result.baseline is not None and np.isfinite(result.baseline["loss_after"]).all()


@pytest.mark.slow  # a ResNet-12 run, logged and loaded in a fresh process
def test_logged_resnet12_loads_without_the_project(tmp_path):
    """The residual blocks and the transductive norms are logged as stock Keras layers: a fresh
    Python that never imports ``pipeline`` loads the models and gives the same logits."""
    rng = np.random.default_rng(0)
    x = rng.random((7, 32, 32, 3), dtype=np.float32) * 255
    np.save(tmp_path / "x.npy", x)
    models = {}
    for batch_norm in ("transductive", "running"):
        model = build_model(ResNet12Config(filters=[4, 6, 8, 10], batch_norm=batch_norm),
                            (32, 32, 3), 5, 0)
        model.set_weights([w + 0.1 * np.abs(rng.standard_normal(w.shape)).astype(w.dtype)
                           for w in model.get_weights()])  # norms, statistics away from init
        twin = portable(model)
        assert not any(isinstance(layer, (ResBlock, BatchStatsNorm))
                       for layer in twin._flatten_layers())
        assert sum(isinstance(layer, keras.layers.Add) for layer in twin.layers) == 4
        twin.save(tmp_path / f"{batch_norm}.keras")
        models[batch_norm] = model
    code = ("import sys, numpy as np, keras; x = np.load('x.npy'); "
            "[np.save(f'{n}.npy', np.asarray(keras.saving.load_model(f'{n}.keras')(x))) "
            "for n in ('transductive', 'running')]; "
            "assert not any(k.startswith('pipeline') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    for name, model in models.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), model(x).numpy(),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_inner_loop_trains_a_conv_model_on_a_meta_batch_of_one(name):
    """With one task, tf.vectorized_map slices the stacked weights with a gather whose gradient
    is IndexedSlices: the inner loop must densify it (it raised a TypeError)."""
    from pipeline.algorithms import build_algorithm
    from pipeline.config import MetaTrainConfig, ReptileConfig

    model = build_model(Conv4Config(filters=4), (16, 16, 3), 3, seed=0)
    ctx = Context(model, TaskLoss(SOFTMAX), build_optimizer(AdamConfig()), seed=0)
    cfg = MAMLConfig(inner_steps=1) if name == "maml" else ReptileConfig(inner_steps=1)
    algo = build_algorithm(cfg, ctx)
    rng = np.random.default_rng(0)
    batch = Batch(tf.constant(rng.random((1, 6, 16, 16, 3), np.float32) * 255),
                  tf.constant([[0, 1, 2, 0, 1, 2]], tf.int32),
                  tf.constant(rng.random((1, 6, 16, 16, 3), np.float32) * 255),
                  tf.constant([[0, 1, 2, 0, 1, 2]], tf.int32))
    before = [v.numpy() for v in model.trainable_variables]
    algo.build_for_training(MetaTrainConfig(iterations=1))
    metrics = algo.meta_train_step(batch)
    assert np.isfinite(float(metrics["loss"]))
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(before, model.trainable_variables, strict=True))
