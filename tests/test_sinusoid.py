"""The sinusoid regression benchmark through the whole pipeline, and every algorithm on it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline import data
from pipeline.analysis.stats import paired_gain
from pipeline.config import ConfigError
from pipeline.run.runner import execute

#: A small sinusoid run: few tasks, short training, a cheap scratch baseline.
SMALL = ["data.num_train_tasks=2000", "data.num_test_tasks=100", "meta_test.scratch.steps=50",
         "tracking.log_model=false"]


def test_sinusoid_tasks_follow_the_maml_benchmark(make_cfg, tmp_path):
    cfg, _ = make_cfg("data=sinusoid", "data.num_train_tasks=500", "data.k_shot=5")
    d = dataclasses.asdict(cfg.data)
    d.pop("cache")
    ts = data.generate_or_load(d, cfg.seed, tmp_path / "data")
    assert ts.task_type == data.REGRESSION and ts.num_outputs == 1 and ts.input_shape == (1,)
    assert ts.train.support_x.shape == (500, 5, 1) and ts.train.query_x.shape == (500, 10, 1)
    assert ts.test.support_x.shape == (600, 5, 1) and ts.test.query_y.shape == (600, 100)
    grid = np.linspace(-5, 5, 100, dtype=np.float32)
    assert all(np.array_equal(ts.test.query_x[t, :, 0], grid) for t in (0, 599))
    xs = np.concatenate([ts.train.support_x.ravel(), ts.train.query_x.ravel()])
    assert xs.min() >= -5 and xs.max() <= 5 and abs(xs.mean()) < 0.1
    # y = A sin(x - phase): recover A and phase of a test task from its grid.
    x, y = ts.test.query_x[0, :, 0], ts.test.query_y[0]
    basis = np.stack([np.sin(x), np.cos(x)], 1)
    (a_cos, a_sin), *_ = np.linalg.lstsq(basis, y, rcond=None)
    amplitude, phase = np.hypot(a_cos, a_sin), np.arctan2(-a_sin, a_cos)
    assert 0.1 <= amplitude <= 5.0 and 0 <= phase <= np.pi
    np.testing.assert_allclose(basis @ [a_cos, a_sin], y, atol=1e-5)
    peaks = np.abs(np.concatenate([ts.train.support_y, ts.train.query_y], 1)).max(1)
    assert peaks.max() <= 5.0 and np.median(peaks) > 1.5
    again = data.generate_or_load(d, cfg.seed, tmp_path / "other")
    assert again.fingerprint == ts.fingerprint


@pytest.mark.parametrize("override, key", [
    ("data.amplitude_min=6.0", "data.amplitude_min"),
    ("meta_test.eval_steps=[1,-2]", "meta_test.eval_steps"),
])
def test_bad_sinusoid_settings_are_refused(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_cfg("data=sinusoid", override)


def test_fomaml_is_selectable_by_name(make_cfg):
    cfg, _ = make_cfg("algorithm=fomaml")
    assert cfg.algorithm.name == "fomaml" and cfg.algorithm.first_order


@pytest.mark.parametrize("name, iterations", [
    ("maml", 600), pytest.param("fomaml", 600, marks=pytest.mark.slow),
    pytest.param("anil", 2000, marks=pytest.mark.slow), ("metasgd", 600), ("reptile", 300),
])
def test_every_algorithm_learns_sinusoids(make_cfg, name, iterations):
    cfg, raw = make_cfg(f"experiment=sinusoid_{name}", f"meta_train.iterations={iterations}",
                        *SMALL)
    result = execute(cfg, raw, track=False)
    t = result.per_task
    # Paired over the same test tasks (lower MSE is better): one adaptation step already beats
    # no adaptation, and the configured adaptation beats it and the scratch baseline.
    assert paired_gain(t["mse_before"], t["mse_after_1step"]).low > 0
    assert paired_gain(t["mse_before"], t["mse_after"]).low > 0
    assert result.gain.low > 0 and not result.no_gain


@pytest.mark.parametrize("name", ["metasgd", "reptile"])
def test_same_seed_gives_bit_identical_sinusoid_metrics(make_cfg, name):
    cfg, raw = make_cfg(f"experiment=sinusoid_{name}", "meta_train.iterations=50",
                        "meta_test.compare_to_scratch=false", *SMALL)
    a, b = execute(cfg, raw, track=False), execute(cfg, raw, track=False)
    assert set(a.per_task) == {"mse_before", "mse_after", "mse_after_1step", "mse_after_10steps"}
    for key in a.per_task:
        np.testing.assert_array_equal(a.per_task[key], b.per_task[key])


@pytest.mark.usefixtures("migrated_store")
def test_sinusoid_run_logs_step_metrics_curve_and_fit_plot(make_cfg):
    cfg, raw = make_cfg("experiment=sinusoid_maml", "meta_train.iterations=100",
                        "meta_train.steps_per_call=30", *SMALL)
    result = execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    run_id = result.run_id
    m = client.get_run(run_id).data.metrics
    for key in ("test/query_mse_after_1step_mean", "test/query_mse_after_10steps_ci95",
                "scratch/query_mse_after_mean", "gain/query_mse", "gain/query_mse_ci95"):
        assert key in m, key
    per_task = client.get_metric_history(run_id, "task/query_mse_after_1step")
    assert sorted(p.step for p in per_task) == list(range(100))
    curve = {p.step: p.value for p in client.get_metric_history(
        run_id, "test/query_mse_after_steps_mean")}
    assert sorted(curve) == [0, 1, 10]
    assert curve[0] == pytest.approx(result.summaries["test/query_mse_before"].mean)
    assert curve[10] == pytest.approx(result.summaries["test/query_mse_after_10steps"].mean)
    train = client.get_metric_history(run_id, "train/mse")
    assert [p.step for p in train] == [99]
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/regression_fits.png", "plots/per_task_mse.png"} <= plots
