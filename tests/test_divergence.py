"""Test tasks whose adaptation diverges (a non-finite query loss, or one 1e3 times the loss
before adaptation): counted, located, left out of the aggregates (never
hidden in them), plotted around; a run whose every test task diverges fails with the reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from pipeline import data
from pipeline.config.validate import warnings
from pipeline.errors import DivergenceError
from pipeline.run.runner import execute
from pipeline.stages import meta_test
from pipeline.tracking import keys

#: Sinusoid regression with the classification inner rate (0.5) and 5 test-time steps: about
#: half of the test tasks blow up after 3-5 steps (the old default's failure, made small).
PARTIAL = ["data=sinusoid", "data.num_train_tasks=200", "data.num_test_tasks=60",
           "meta_train.iterations=50", "algorithm.inner_lr=0.5", "algorithm.test_inner_steps=5",
           "meta_test.scratch.steps=5", "meta_test.eval_steps=[1]", "tracking.log_model=false"]


def _history(client, run_id, key):
    return np.array([m.value for m in sorted(client.get_metric_history(run_id, key),
                                             key=lambda m: m.step)])


@pytest.mark.usefixtures("migrated_store")
def test_diverged_tasks_are_counted_located_and_left_out_of_the_aggregates(make_cfg, caplog):
    cfg, raw = make_cfg(*PARTIAL)
    result = execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    per_task = _history(client, result.run_id, "task/query_mse_after")
    bad = ~np.isfinite(per_task)
    assert len(per_task) == 60 and 0 < bad.sum() < 60
    assert m["test/diverged_tasks"] == bad.sum() == result.diverged
    assert m["test/diverged_tasks_before"] == 0 and m["test/diverged_tasks_after_1step"] == 0
    assert m["scratch/diverged_tasks"] == 0
    assert m["test/query_mse_after_mean"] == pytest.approx(per_task[~bad].mean())
    assert result.summaries["test/query_mse_after"].n == (~bad).sum()
    # the one-step phase is complete, and is not polluted by the 5-step divergence
    assert np.isfinite(_history(client, result.run_id, "task/query_mse_after_1step")).all()
    note = run.data.tags[keys.DIVERGED]
    assert f"{bad.sum()} of 60 test tasks diverged" in note and "inner step" in note
    assert note in caplog.text
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/per_task_mse.png", "plots/regression_fits.png"} <= plots
    # the gain is paired over the tasks where both methods have a value
    assert result.gain.n == (~bad).sum()


@pytest.mark.usefixtures("migrated_store")
def test_a_run_whose_every_test_task_diverges_fails_with_the_reason(make_cfg):
    cfg, raw = make_cfg("data.num_train_tasks=50", "data.num_test_tasks=20",
                        "meta_train.iterations=20", "algorithm.inner_lr=1e4",
                        "tracking.run_name=all-diverge", "tracking.log_model=false")
    with pytest.raises(DivergenceError, match="20 of 20 test tasks diverged"):
        execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id],
                               "attributes.run_name = 'all-diverge'")
    assert run.info.status == "FAILED"
    assert "meta-test diverged" in run.data.tags["error"] and "inner step" in run.data.tags["error"]
    assert run.data.metrics["test/diverged_tasks"] == 20
    acc = _history(client, run.info.run_id, "task/query_acc_after")
    assert len(acc) == 20 and all(math.isnan(a) for a in acc)  # no made-up chance accuracy


def test_the_default_sinusoid_config_does_not_diverge(make_cfg):
    """``data=sinusoid`` alone takes the benchmark's inner loop (conf/data_algorithm/), not the
    classification step size that made 221 of 600 test tasks diverge."""
    cfg, raw = make_cfg("data=sinusoid", "data.num_train_tasks=500", "data.num_test_tasks=100",
                        "meta_train.iterations=200", "meta_test.scratch.steps=20",
                        "tracking.log_model=false")
    assert (cfg.algorithm.inner_lr, cfg.algorithm.test_inner_steps) == (0.01, 10)
    result = execute(cfg, raw, track=False)
    assert result.diverged == 0
    assert result.summaries["test/query_mse_after"].mean < result.summaries[
        "test/query_mse_before"].mean


def test_divergence_is_non_finite_or_a_thousand_times_the_loss_before():
    before = np.array([1.0, 1.0, 2.0, np.nan, 1.0, 0.5])
    after = np.array([0.5, 999.0, 2001.0, 3.0, np.inf, np.nan])
    assert meta_test.DIVERGENCE_FACTOR == 1e3
    assert meta_test.diverged(after, before).tolist() == [False, False, True, False, True, True]
    assert meta_test.diverged(after, None).tolist() == [False, False, False, False, True, True]


@pytest.mark.usefixtures("migrated_store")
def test_finite_blow_ups_are_counted_and_left_out_like_nans(make_cfg, caplog):
    """Meta-SGD tested with more inner steps than its rates were trained for blew up
    to MSEs of ~1e27 that stayed finite and were averaged. Cheaper: learned rates started at
    0.5 (the classification step), trained for 1 step, tested for 3; most blown-up tasks are
    finite. They are counted, located and left out exactly as non-finite ones, and the
    untrained step count is warned about."""
    cfg, raw = make_cfg(*PARTIAL, "algorithm=metasgd", "algorithm.test_inner_steps=3",
                        "tracking.run_name=finite-blow-ups")
    result = execute(cfg, raw)
    assert "meta-learns its inner learning rates for algorithm.inner_steps=1 step(s) and is " \
           "tested with [3] steps" in caplog.text
    algo, test = result.algorithm, result.tasks.test
    state = algo.initial_state(np.arange(test.num_tasks))
    sx, sy, qx, qy = (tf.constant(getattr(test, f)) for f in data.FIELDS)
    before = algo.evaluate(state, qx, qy)["mse"]
    raw_after = algo.evaluate(algo.adapt(state, sx, sy), qx, qy)["mse"]
    finite_blow_ups = np.isfinite(raw_after) & (raw_after > 1e3 * before)
    assert finite_blow_ups.sum() >= 5, raw_after  # what used to be averaged as a result
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    per_task = _history(client, result.run_id, "task/query_mse_after")
    expected = ~np.isfinite(raw_after) | (raw_after > 1e3 * before)
    np.testing.assert_array_equal(np.isnan(per_task), expected)
    assert run.data.metrics["test/diverged_tasks"] == expected.sum() == result.diverged
    assert run.data.metrics["test/query_mse_after_mean"] == pytest.approx(
        raw_after[~expected].mean(), rel=1e-5)
    assert run.data.metrics["test/query_mse_after_mean"] < 1e3 * np.nanmax(before)
    note = run.data.tags[keys.DIVERGED]
    assert f"{expected.sum()} of 60 test tasks diverged after adaptation (query mse not finite " \
           f"or over 1000 x its value before adaptation), first diverged at inner step" in note


def test_no_warning_when_learned_rates_are_tested_with_the_steps_they_learned(make_cfg):
    cfg, _ = make_cfg("experiment=sinusoid_metasgd", "meta_test.eval_steps=[1]")
    assert warnings(cfg) == []
    cfg, _ = make_cfg("experiment=sinusoid_metasgd")  # the preset scores 1 and 10 steps
    [line] = warnings(cfg)
    assert "algorithm.inner_steps=1 step(s) and is tested with [10] steps" in line
    cfg, _ = make_cfg("data=sinusoid", "algorithm.test_inner_steps=10")  # MAML: rates are fixed
    assert warnings(cfg) == []
