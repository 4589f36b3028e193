"""Settings that cannot fit: the run's memory estimate (pipeline/run/memory.py),
logged and checked against the machine's memory before the run; image models' smallest
input; the ``error`` tag as plain text."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from bench.memory import peak_rss
from pipeline.errors import ConfigError
from pipeline.run import memory
from pipeline.run.runner import execute
from pipeline.tracking import keys
from tests import image_sets
from tests.conftest import TINY, run_cli, store_overrides

IMAGES = ["data=images", "model=conv4"]


def test_a_meta_batch_that_cannot_fit_is_refused_in_one_line_before_the_run(tmp_path):
    """An image family took ``meta_train.meta_batch_size=100000`` and was OOM-killed, its run
    left RUNNING: now refused before anything runs, naming the key, the value and what fits."""
    root = image_sets.write(tmp_path / "set", "folders")
    out = run_cli(*IMAGES, *image_sets.overrides(root), *image_sets.TINY_IMAGES,
                  "meta_train.meta_batch_size=100000", *store_overrides(tmp_path), timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("Cannot start: meta_train.meta_batch_size=100000 does not fit "
                               "in memory"), lines[0]
    assert "must be <= " in lines[0] and "runtime.memory_check=false" in lines[0]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()


def test_the_check_names_what_fits_and_can_be_turned_off(make_cfg):
    cfg, _ = make_cfg(*IMAGES, "data.root=/x", "meta_train.meta_batch_size=64")
    found = memory.estimate(cfg)
    per_task = memory.train_step_bytes(cfg, memory.input_shape(cfg)) // 64
    available = found.base + 10 * per_task + per_task // 2  # room for 10 tasks, not 64
    with pytest.raises(ConfigError, match=r"meta_train\.meta_batch_size=64 does not fit in memory"
                                          r".* so it must be <= 10;"):
        memory.check(cfg, available=available)
    cfg.runtime.memory_check = False
    assert memory.check(cfg, available=available) == found
    assert memory.check(cfg, available=found.total) == found  # fits exactly
    test_bound, _ = make_cfg(*IMAGES, "data.root=/x", "meta_train.iterations=0",
                             "meta_test.task_batch_size=500")
    with pytest.raises(ConfigError, match=r"meta_test\.task_batch_size=500 does not fit"):
        memory.check(test_bound, available=memory.BASE_BYTES + 2**20)


def test_the_estimate_grows_with_what_the_step_keeps(make_cfg):
    """Second-order MAML keeps every inner step on the tape; first order and Reptile do not."""
    def step(*overrides: str) -> int:
        cfg, _ = make_cfg(*IMAGES, "data.root=/x", *overrides)
        return memory.train_step_bytes(cfg, memory.input_shape(cfg))

    second = step("algorithm.inner_steps=5")
    assert second > step("algorithm.inner_steps=1") > step("algorithm=fomaml",
                                                           "algorithm.inner_steps=5")
    assert step("algorithm.inner_steps=5", "meta_train.meta_batch_size=50") == 2 * second
    assert step("algorithm=reptile") < step("algorithm=fomaml")
    assert step("model=resnet12") > 4 * step("algorithm=fomaml")


def test_the_pre_training_step_is_counted_where_a_baseline_needs_it(make_cfg):
    """A pre-trained baseline adds a pre-training step of a meta-iteration's examples (or
    ``meta_test.pretrain.batch_size``): a batch too large for memory is refused by that key."""
    cfg, _ = make_cfg(*IMAGES, "data.root=/x", "meta_test.baselines=[scratch,linear_probe]")
    shape = memory.input_shape(cfg)
    assert memory.pretrain_step_bytes(make_cfg(*IMAGES, "data.root=/x")[0], shape) == 0
    per_iteration = memory.pretrain_per_iteration(cfg)
    assert per_iteration == cfg.meta_train.meta_batch_size * sum(memory.examples(cfg)[0])
    step = memory.pretrain_step_bytes(cfg, shape)
    assert step > memory.FLOAT_BYTES * per_iteration * memory.activations(cfg, shape)
    big, _ = make_cfg(*IMAGES, "data.root=/x", "meta_test.baselines=[finetune]",
                      "meta_test.pretrain.batch_size=4096", "meta_test.task_batch_size=1")
    assert memory.estimate(big).step == memory.pretrain_step_bytes(big, shape) > step
    with pytest.raises(ConfigError, match=r"meta_test\.pretrain\.batch_size=4096 does not fit "
                                          r"in memory: a pre-training step"):
        memory.check(big, available=memory.BASE_BYTES + step)


@pytest.mark.usefixtures("migrated_store")
def test_a_run_logs_its_memory_estimate(make_cfg):
    cfg, raw = make_cfg(*TINY, "tracking.log_model=false")
    result = execute(cfg, raw)
    logged = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics
    expected = memory.estimate(cfg, result.tasks.input_shape, result.tasks.nbytes)
    assert logged[keys.MEMORY_ESTIMATE] == pytest.approx(expected.gib)
    assert expected.data == result.tasks.nbytes > 0


@pytest.mark.usefixtures("migrated_store")
def test_images_smaller_than_the_model_takes_fail_in_one_line(make_cfg, tmp_path):
    """``data.image_size=null`` keeps the images' own size, known only once decoded: 8x8 images
    for conv4's four 2x2 pools end the run FAILED with the reason, not a Keras traceback."""
    root = image_sets.write(tmp_path / "set", "folders", size=8)
    cfg, raw = make_cfg(*IMAGES, *image_sets.overrides(root), *image_sets.TINY_IMAGES,
                        "data.image_size=null", "tracking.run_name=too-small")
    with pytest.raises(ConfigError, match=r"The images' size \(8x8, data\.image_size=null\) is "
                                          r"too small for model=conv4: its 4 2x2 max-pools need "
                                          r"images of at least 16x16 px"):
        execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id])
    assert run.info.status == "FAILED" and "at least 16x16 px" in run.data.tags[keys.ERROR]


#: Within this factor either way of the measured peak, where the step dominates.
FACTOR = 1.5


@pytest.mark.slow
def test_the_estimate_is_within_a_factor_of_the_measured_peak(tmp_path):
    """Second-order MAML on 84x84 images (the miniImageNet preset: 4 tasks x 5 inner steps x
    (5 + 75) images, conv4 with 32 filters), a few iterations; the whole process's peak RSS
    measured as bench/memory.py does."""
    root = image_sets.write(tmp_path / "set", "folders", size=84, per_class=20)
    overrides = ["experiment=miniimagenet_5w1s_maml", f"data.root={root}",
                 "meta_train.iterations=3", "meta_train.validate_every=0", "data.num_val_tasks=0",
                 "data.num_test_tasks=4", "meta_test.task_batch_size=4",
                 "tracking.log_model=false"]
    from pipeline.config import compose, validate

    cfg = validate(compose([*overrides, *store_overrides(tmp_path)]))
    estimate = memory.estimate(cfg)
    assert estimate.step > 2 * estimate.base  # the step dominates
    measured, _ = peak_rss(overrides)
    ratio = measured / estimate.gib
    assert 1 / FACTOR <= ratio <= FACTOR, (measured, estimate.gib)
