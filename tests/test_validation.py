"""Model selection (``meta_train.validate_every``): the selected iteration's weights are the ones
meta-tested and logged, validation leaves training untouched, chunks end at validation points,
and checkpoints carry the selection, so a resumed run matches an uninterrupted one."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline import data
from pipeline.run import checkpoint
from pipeline.run.runner import build, execute
from pipeline.stages import meta_test, meta_train
from pipeline.stages.validation import Validation
from pipeline.tracking import keys
from tests import image_sets
from tests.conftest import OMNIGLOT_ROOT
from tests.test_resume import _resume, _run, _start, _store, _wait_for

#: ProtoNets (running batch norm: its statistics are part of what is selected), a learning rate
#: high enough that the validation score goes up and down.
PRESET = ["experiment=miniimagenet_5w1s_protonet", *image_sets.TINY_IMAGES,
          "optimizer.learning_rate=0.01", "meta_train.log_every=5",
          "meta_train.validate_every=5", "tracking.log_model=false",
          "meta_test.baselines=[scratch]"]  # the pre-trained baselines: tests/test_baselines.py


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return image_sets.write(tmp_path_factory.mktemp("images") / "set", "folders")


def _tasks(cfg) -> data.TaskSet:
    d = dataclasses.asdict(cfg.data)
    d.pop("cache")
    return data.generate_or_load(d, cfg.seed, Path(cfg.paths.data_dir))


def _weights(algo) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in algo.model.weights]


def _record(client, run_id) -> dict[str, list]:
    """Every training and validation curve and per-task metric of a run, at every step."""
    names = [k for k in client.get_run(run_id).data.metrics
             if k.startswith((keys.TRAIN, keys.VAL, keys.TASK))]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in names}


def _train(cfg, tasks, out: Path, validation: Validation | None = None, resume=None,
           **meta_train_cfg):
    algo = build(cfg, tasks)
    mt = dataclasses.replace(cfg.meta_train, **meta_train_cfg)
    trained = meta_train.run(algo, tasks.train, mt, cfg.seed, out, None, resume, validation)
    return algo, trained


@pytest.mark.usefixtures("migrated_store")
def test_the_selected_iterations_weights_are_meta_tested_and_logged(make_cfg, collection,
                                                                    tmp_path):
    cfg, raw = make_cfg(*PRESET, *image_sets.overrides(collection), "meta_train.iterations=40")
    result = execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    history = sorted((m.step, m.value) for m in
                     client.get_metric_history(result.run_id, "val/query_acc_after_mean"))
    assert [s for s, _ in history] == list(range(5, 41, 5))
    best = max(v for _, v in history)
    chosen = min(s for s, v in history if v == best)  # the first of equal scores
    assert run.data.tags[keys.SELECTED_ITERATION] == str(chosen)
    assert run.data.tags[keys.SELECTION_METRIC] == "val/query_acc_after_mean"
    assert chosen < 40, "the test needs a run whose best validation score is not the last"
    for name in ("val/query_loss_after_mean", "val/diverged_tasks", "time/validation_s"):
        assert name in run.data.metrics
    assert len(client.get_metric_history(result.run_id, "task/query_acc_after")) == 6
    # Training again for exactly `chosen` iterations, without validation, gives bit for bit the
    # weights (and batch-norm statistics) that were meta-tested, and the same per-task scores.
    tasks = _tasks(cfg)
    algo, _ = _train(cfg, tasks, tmp_path / "again", iterations=chosen, validate_every=0)
    for a, b in zip(_weights(algo), _weights(result.algorithm), strict=True):
        np.testing.assert_array_equal(a, b)
    tested = meta_test.run(algo, tasks.test, 6)
    np.testing.assert_array_equal(tested.per_task["acc_after"], result.per_task["acc_after"])


def test_validation_leaves_training_untouched(make_cfg, collection, tmp_path):
    cfg, _ = make_cfg(*PRESET, *image_sets.overrides(collection), "meta_train.iterations=20")
    tasks = _tasks(cfg)
    with_val, trained = _train(cfg, tasks, tmp_path / "a", Validation(tasks.val, 5, 6))
    _, plain = _train(cfg, tasks, tmp_path / "b", validate_every=0)
    assert trained.curves["loss"] == plain.curves["loss"]
    assert trained.curves["val/query_acc_after_mean"][0] == [5, 10, 15, 20]
    final = checkpoint.load(trained.checkpoint)  # the weights when training ended ...
    assert trained.selected_iteration is not None
    for a, b in zip(final.values, checkpoint.load(plain.checkpoint).values, strict=True):
        np.testing.assert_array_equal(a, b)  # ... are those of a run without validation
    for a, b in zip(final.best, [v.numpy() for v in with_val.model_state], strict=True):
        np.testing.assert_array_equal(a, b)  # and the model now holds the best ones


def test_chunks_end_at_validation_points(make_cfg, collection, tmp_path):
    """Fixed training tasks run in compiled chunks of ``steps_per_call`` iterations; with
    ``validate_every=5`` and chunks of 7 the validations still fall on 5, 10, 15 and the
    results are those of any other chunk size."""
    cfg, _ = make_cfg(*PRESET, *image_sets.overrides(collection), "meta_train.iterations=15",
                      "data.num_train_tasks=20", "meta_train.meta_batch_size=2")
    tasks = _tasks(cfg)
    assert isinstance(tasks.train, data.TaskSplit)
    runs = [_train(cfg, tasks, tmp_path / str(n), Validation(tasks.val, 5, 6), steps_per_call=n)
            for n in (7, 100)]
    (a, ta), (b, tb) = runs
    assert ta.curves["val/query_loss_after_mean"] == tb.curves["val/query_loss_after_mean"]
    assert ta.curves["val/query_loss_after_mean"][0] == [5, 10, 15]
    assert ta.selected_iteration == tb.selected_iteration
    for x, y in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_end_checkpoint_carries_the_selection(make_cfg, collection, tmp_path):
    """A run stopped during meta-test resumes from the end-of-training checkpoint: it must
    meta-test the selected weights, not the last ones."""
    cfg, _ = make_cfg(*PRESET, *image_sets.overrides(collection), "meta_train.iterations=20")
    tasks = _tasks(cfg)
    first, trained = _train(cfg, tasks, tmp_path / "a", Validation(tasks.val, 5, 6))
    ckpt = checkpoint.load(trained.checkpoint)
    again, resumed = _train(cfg, tasks, tmp_path / "b", Validation(tasks.val, 5, 6), ckpt)
    assert resumed.iterations == 0 and resumed.selected_iteration == trained.selected_iteration
    assert resumed.curves["val/query_acc_after_mean"] == trained.curves["val/query_acc_after_mean"]
    for a, b in zip(_weights(again), _weights(first), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # a twin run (the fast suite: the end checkpoint carries the selection)
def test_training_continued_from_a_checkpoint_selects_as_an_uninterrupted_run(make_cfg,
                                                                              collection,
                                                                              tmp_path):
    """In process: 20 iterations, then 20 more from that checkpoint (its validation history and
    best weights so far), against 40 straight."""
    cfg, _ = make_cfg(*PRESET, *image_sets.overrides(collection), "meta_train.iterations=40")
    tasks = _tasks(cfg)
    straight, whole = _train(cfg, tasks, tmp_path / "a", Validation(tasks.val, 5, 6))
    _, half = _train(cfg, tasks, tmp_path / "b", Validation(tasks.val, 5, 6), iterations=20)
    ckpt = checkpoint.load(half.checkpoint)
    assert ckpt.extra["validation"]["history"]["step"] == [5, 10, 15, 20] and ckpt.best
    continued, rest = _train(cfg, tasks, tmp_path / "c", Validation(tasks.val, 5, 6), ckpt)
    assert rest.iterations == 20 and rest.selected_iteration == whole.selected_iteration
    for name in ("val/query_acc_after_mean", "val/query_loss_after_mean"):
        assert rest.curves[name] == whole.curves[name]
    for a, b in zip(_weights(continued), _weights(straight), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_during_meta_training_with_validation_then_resume_is_bit_identical(collection,
                                                                                  tmp_path):
    """Real subprocesses: the interrupted run's checkpoint holds the validation history and the
    best weights so far; resumed, it logs the same val/ curves, selects the same iteration and
    meta-tests the same weights as an uninterrupted twin."""
    uri, client, exp_id = _store(tmp_path)
    overrides = [*PRESET, *image_sets.overrides(collection), "meta_train.iterations=600",
                 "meta_train.validate_every=25", "meta_train.log_every=10"]
    interrupted = _start(tmp_path, "interrupted", overrides)
    _wait_for(interrupted, "iteration 120/600")
    reference = _start(tmp_path, "reference", overrides)
    interrupted.send_signal(signal.SIGTERM)
    err, _ = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 143, err[-3000:]
    run_id = _run(client, exp_id, "interrupted").info.run_id
    stopped_at = int(client.get_run(run_id).data.tags[keys.CHECKPOINT_ITERATION])
    assert 0 < stopped_at < 600
    out = _resume(uri, run_id)
    assert out.returncode == 0, out.stderr[-3000:]
    err, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    ref_id = _run(client, exp_id, "reference").info.run_id
    a, b = _record(client, run_id), _record(client, ref_id)
    assert len(a["val/query_acc_after_mean"]) == 24 and len(a["task/query_acc_after"]) == 6
    assert a.keys() == b.keys() and a == b
    tags = [client.get_run(r).data.tags for r in (run_id, ref_id)]
    assert tags[0][keys.SELECTED_ITERATION] == tags[1][keys.SELECTED_ITERATION]


SHARED = OMNIGLOT_ROOT


@pytest.mark.skipif(not (SHARED / "extras/images_background_small1.zip").is_file(),
                    reason=f"Omniglot zips not in {SHARED}")
def test_omniglot_validation_characters_are_held_out_of_training(make_cfg):
    from tests.test_omniglot import OMNIGLOT

    cfg, _ = make_cfg(*OMNIGLOT, "data.num_val_characters=30", "data.num_val_tasks=8",
                      "meta_train.validate_every=10")
    plain, _ = make_cfg(*OMNIGLOT)
    with_val, without = _tasks(cfg), _tasks(plain)
    assert with_val.train.pool.shape[0] == 170 and without.train.pool.shape[0] == 200
    flat = lambda a: {im.tobytes() for im in a.reshape(-1, 28, 28)}  # noqa: E731
    held_out = flat(without.train.pool[170:])  # the last 30 training characters
    val_images = flat(with_val.val.support_x) | flat(with_val.val.query_x)
    assert val_images <= held_out and len(val_images) > 8 * 5
    np.testing.assert_array_equal(with_val.train.pool, without.train.pool[:170])
    for f in data.FIELDS:  # the test episodes do not change when a validation split is added
        np.testing.assert_array_equal(getattr(with_val.test, f), getattr(without.test, f))
