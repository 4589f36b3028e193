"""Pre-trained baselines (finetune, linear_probe) beside scratch: scored on the method's own test
episodes, pre-trained on the training split only, and cached across the jobs of a sweep."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.analysis import paired
from pipeline.analysis.stats import paired_gain
from pipeline.baselines import finetune, linear_probe
from pipeline.baselines.pretrain import run as pretrain
from pipeline.config import ConfigError
from pipeline.data import TaskSplit
from pipeline.errors import DataError
from pipeline.run.runner import execute, task_loss
from pipeline.stages import generate, meta_test
from pipeline.tracking import keys
from tests.conftest import TINY, store_overrides

ALL = "meta_test.baselines=[scratch,finetune,linear_probe]"


def test_baselines_are_scored_on_the_methods_episodes(make_cfg, tmp_path):
    """Every baseline has one value per test task, in the method's task order: a probe re-run
    on single episodes, in reverse order, gives the logged value of each; the logged paired
    gains and ``compare --paired RUN:BASELINE`` are the differences of the logged values."""
    store_overrides(tmp_path, schema=True)
    cfg, raw = make_cfg(*TINY, ALL, "tracking.log_model=false")
    result = execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    metric = "query_acc_after"

    def history(scope: str) -> np.ndarray:
        points = client.get_metric_history(result.run_id, scope + metric)
        assert [p.step for p in points] == list(range(12))
        return np.array([p.value for p in points])

    method = history(keys.TASK)
    for name in ("scratch", "finetune", "linear_probe"):
        values = history(keys.baseline_task(name))
        gain = paired_gain(method, values)
        assert run.data.metrics[f"{keys.gain_vs(name)}query_acc"] == pytest.approx(gain.mean)
        assert run.data.metrics[f"{keys.gain_vs(name)}query_acc_ci95"] == pytest.approx(gain.ci95)
        assert run.data.metrics[f"{name}/{metric}_mean"] == pytest.approx(values.mean())
    beats = {n for n, g in result.gains.items() if g.low > 0}
    assert set(filter(None, run.data.tags[keys.BEATS_BASELINES].split(","))) - {"none"} == beats
    assert run.data.tags[keys.PRETRAIN_CACHE] == "miss"
    test = result.tasks.test
    per_task = test.support_x.shape[1] + test.query_x.shape[1]
    assert run.data.metrics[keys.PRETRAIN_EXAMPLES] == 20 * 4 * per_task  # as meta-training
    assert keys.TIME_PRETRAIN in run.data.metrics
    assert [a.path for a in client.list_artifacts(result.run_id, keys.PRETRAIN_DIR)]

    # The same episodes: the cached body's probe on each test task alone, last task first.
    tasks, loss = result.tasks, task_loss(cfg, result.tasks)
    body = pretrain(cfg, tasks, loss)
    assert body.cached
    probe = linear_probe.build(cfg.meta_test.linear_probe, body.body, loss, tasks.num_outputs)
    logged = history(keys.LINEAR_PROBE_TASK)
    for t in (11, 7, 3, 0):
        alone = meta_test.run(probe, tasks.test.take(slice(t, t + 1)), 1, quiet=True)
        assert alone.per_task["acc_after"][0] == pytest.approx(logged[t], abs=1e-6)

    # A baseline as a side of a paired comparison: MAML against its own run's linear probe.
    compared = paired.compare(cfg.tracking.uri, result.run_id, f"{result.run_id}:linear_probe")
    assert compared.mean == pytest.approx(paired_gain(method, logged).mean)
    assert len(compared.pairs) == 12
    with pytest.raises(paired.NotPaired, match="names no baseline"):
        paired.compare(cfg.tracking.uri, result.run_id, f"{result.run_id}:linear")


def test_pretraining_never_reads_validation_or_test_tasks(make_cfg):
    """Validation and test tasks replaced by NaNs: the pre-trained body is bit-identical."""
    cfg, _ = make_cfg(*TINY, "data.num_val_tasks=5", "meta_test.pretrain.cache=false")
    tasks = generate.run(cfg.data, cfg.seed, cfg.paths.data_dir, None)
    assert tasks.val is not None
    loss = task_loss(cfg, tasks)

    def poison(split: TaskSplit) -> TaskSplit:
        return TaskSplit(*(np.full_like(a, np.nan if a.dtype.kind == "f" else -1)
                           for a in (split.support_x, split.support_y, split.query_x,
                                     split.query_y)))

    clean = pretrain(cfg, tasks, loss)
    poisoned = pretrain(cfg, dataclasses.replace(tasks, test=poison(tasks.test),
                                                 val=poison(tasks.val)), loss)
    for a, b in zip(clean.body.get_weights(), poisoned.body.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(w).all() for w in poisoned.body.get_weights())
    # The training split is read: poisoning it changes the body.
    train = dataclasses.replace(tasks.train, query_x=tasks.train.query_x + 1.0)
    changed = pretrain(cfg, dataclasses.replace(tasks, train=train), loss)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(clean.body.get_weights(), changed.body.get_weights(), strict=True))


def test_cached_body_is_reused_across_a_sweep_and_refused_when_the_data_changed(make_cfg,
                                                                                caplog):
    """Jobs differing in a meta-learning setting share one pre-training; other data misses the
    cache; a cached body recorded for other data is refused, not used."""
    caplog.set_level("INFO")
    cfg, _ = make_cfg(*TINY, "algorithm.inner_lr=0.5")
    tasks = generate.run(cfg.data, cfg.seed, cfg.paths.data_dir, None)
    loss = task_loss(cfg, tasks)
    first = pretrain(cfg, tasks, loss)
    assert not first.cached and first.path.is_file()
    other_lr, _ = make_cfg(*TINY, "algorithm.inner_lr=0.1")
    again = pretrain(other_lr, tasks, loss)
    assert again.cached and again.path == first.path
    for a, b in zip(first.body.get_weights(), again.body.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "cache hit" in caplog.text

    other_data, _ = make_cfg(*TINY, "data.num_train_tasks=30")
    changed = generate.run(other_data.data, other_data.seed, other_data.paths.data_dir, None)
    assert changed.fingerprint != tasks.fingerprint
    rebuilt = pretrain(other_data, changed, loss)
    assert not rebuilt.cached and rebuilt.path != first.path

    shutil.copyfile(first.path, rebuilt.path)  # a body of other data where this one belongs
    with pytest.raises(DataError, match=r"trained on other data.*data_fingerprint"):
        pretrain(other_data, changed, loss)


def test_finetune_trains_the_new_head_alone_then_the_body_at_its_own_rate(make_cfg):
    """Frozen for every step, the body is the pre-trained one after fine-tuning and only the
    head moved (Chen et al.'s Baseline); joining after the head's steps, the body moves too."""
    cfg, _ = make_cfg(*TINY, "meta_test.pretrain.cache=false", "meta_test.finetune.steps=4")
    tasks = generate.run(cfg.data, cfg.seed, cfg.paths.data_dir, None)
    loss = task_loss(cfg, tasks)
    body = pretrain(cfg, tasks, loss).body
    test = tasks.test.take(slice(0, 2))

    def adapted(freeze: int) -> tuple[list, list, list[int]]:
        tuned = dataclasses.replace(cfg.meta_test.finetune, freeze_body_steps=freeze)
        algo = finetune.build(dataclasses.replace(
            cfg, meta_test=dataclasses.replace(cfg.meta_test, finetune=tuned)), tasks, loss, body)
        start = algo.initial_state(np.arange(2))
        return start, algo.adapt(start, test.support_x, test.support_y), algo._head_ids

    start, frozen, head = adapted(4)
    for i, (a, b) in enumerate(zip(start, frozen, strict=True)):
        assert np.array_equal(a, b) != (i in head), i
    _, joined, _ = adapted(2)
    assert all(not np.array_equal(a, b) for a, b in zip(start, joined, strict=True))


def test_unknown_baseline_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"meta_test\.baselines=.*'probe' is not one"):
        make_cfg("meta_test.baselines=[scratch,probe]")
