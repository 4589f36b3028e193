"""End to end: stages run, results are honest, and the MLflow store holds all of it."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.config import validate
from pipeline.errors import ConfigError
from pipeline.run.runner import execute
from pipeline.tracking.keys import NO_GAIN as NO_GAIN_TAG
from tests.conftest import TINY, compose_raw, run_cli, store_overrides


def _cfg_at(root, *overrides: str):
    raw = compose_raw(*store_overrides(root)[:3], *overrides)
    return validate(raw), raw


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny tracked run, shared by the tests that only read what it recorded (and by the
    test that meta-tests its logged model again in the same store)."""
    tmp_path = tmp_path_factory.mktemp("tiny-run")
    store_overrides(tmp_path, schema=True)
    cfg, raw = _cfg_at(tmp_path, *TINY)
    hydra_dir = tmp_path / "out" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text("seed: 0\n")
    result = execute(cfg, raw, ["meta_train.iterations=20"], hydra_dir)
    client = MlflowClient(cfg.tracking.uri)
    return cfg, result, client, client.get_run(result.run_id)


def test_store_holds_per_task_metrics_aggregates_params_tags_artifacts(tiny_run):
    cfg, result, client, run = tiny_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "maml synthetic 3-way 5-shot seed 0"  # what it is, at a glance
    n = cfg.data.num_test_tasks
    for name in ("task/query_acc_after", "task/query_loss_before", "scratch_task/query_acc_after"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(n)), name
    after = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                "task/query_acc_after")}
    np.testing.assert_allclose([after[i] for i in range(n)], result.per_task["acc_after"])
    m = run.data.metrics
    mean = result.summaries["test/query_acc_after"].mean
    assert m["test/query_acc_after_mean"] == pytest.approx(mean)
    for key in ("test/query_acc_after_ci95", "test/query_acc_before_mean",
                "test/query_loss_after_std", "scratch/query_acc_after_mean", "gain/query_acc",
                "gain/query_acc_ci95"):
        assert key in m, key
    curve = client.get_metric_history(run.info.run_id, "train/loss")
    assert [c.step for c in curve] == [4, 9, 14, 19]
    p = run.data.params
    assert p["data.k_shot"] == "5" and p["algorithm.name"] == "maml" and p["seed"] == "0"
    assert p["model.hidden_units"] == "[64, 64]"
    t = run.data.tags
    assert t["seed"] == "0" and len(t["git_commit"]) >= 7 and t["git_dirty"] in ("true", "false",
                                                                                   "unknown")
    assert t["data_fingerprint"] == result.tasks.fingerprint
    assert t["version/tensorflow"].startswith("2.") and t["version/mlflow"].startswith("3.")
    assert t["hydra_overrides"] == '["meta_train.iterations=20"]'
    assert t[NO_GAIN_TAG] in ("none", "positive")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"hydra", "plots", "config", "data"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/per_task_acc.png", "plots/meta_train_curves.png"} <= plots
    hydra = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert "hydra/config.yaml" in hydra
    assert run.inputs.dataset_inputs[0].dataset.digest == result.tasks.fingerprint[:32]


def test_fresh_episode_families_keep_episodes_as_the_unit_and_list_them(tiny_run, tmp_path):
    """Synthetic tasks are fresh draws: the CI stays over episodes (unchanged numbers), and the
    episodes table names each episode as its own task, with every method's values."""
    import pandas as pd

    from pipeline.tracking import keys

    cfg, result, client, run = tiny_run
    n = cfg.data.num_test_tasks
    assert run.data.tags[keys.CI_UNIT] == keys.UNIT_EPISODE
    assert run.data.metrics[keys.CI_UNITS] == n == run.data.metrics[keys.TEST_EPISODES]
    table = pd.read_csv(client.download_artifacts(run.info.run_id, keys.EPISODES_TABLE,
                                                  str(tmp_path)))
    assert list(table["episode"]) == list(table["task"]) == list(range(n))
    np.testing.assert_allclose(table["task/query_acc_after"], result.per_task["acc_after"])
    np.testing.assert_allclose(table["scratch_task/query_acc_after"],
                               result.baseline["acc_after"])
    from scipy import stats

    after = table["task/query_acc_after"]  # the t-interval over the episodes, as ever
    half = stats.t.ppf(0.975, n - 1) * after.std(ddof=1) / np.sqrt(n)
    assert run.data.metrics["test/query_acc_after_ci95"] == pytest.approx(half, abs=1e-12)


def test_logged_model_loads_and_predicts_like_the_trained_one(tiny_run):
    cfg, result, _client, run = tiny_run
    x = result.tasks.test.query_x[0]
    expected = np.asarray(result.algorithm.model(x))
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model_uri = f"runs:/{run.info.run_id}/model"
    loaded = mlflow.keras.load_model(model_uri)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    np.testing.assert_allclose(np.asarray(pyfunc.predict(x)), expected, rtol=1e-5, atol=1e-6)


def test_init_from_a_logged_model_meta_tests_it_again(tiny_run, caplog):
    """``model.init_from`` + 0 iterations: the logged model scores the same episodes exactly as
    the run that trained it; a model that does not fit is a clear error, the run FAILED."""
    tiny_cfg, result, client, run = tiny_run
    root = Path(tiny_cfg.paths.mlruns_dir).parent

    def make_cfg(*overrides: str):
        return _cfg_at(root, *overrides)

    uri = f"runs:/{run.info.run_id}/model"
    cfg, raw = make_cfg(*TINY, f"model.init_from={uri}", "meta_train.iterations=0",
                        "meta_test.compare_to_scratch=false", "tracking.log_model=false")
    with caplog.at_level(logging.INFO):
        again = execute(cfg, raw)
    assert "meta-training of maml skipped" in caplog.text and "0 iterations in" not in caplog.text
    for key in ("acc_before", "acc_after", "loss_after"):
        np.testing.assert_allclose(again.per_task[key], result.per_task[key], rtol=1e-5,
                                   atol=1e-6)
    assert client.get_run(again.run_id).data.params["model.init_from"] == uri
    cfg, raw = make_cfg(*TINY, f"model.init_from={uri}", "model.hidden_units=[8]",
                        "tracking.run_name=misfit")
    with pytest.raises(ConfigError, match=r"model\.init_from='runs:/.*' has weights of shapes"):
        execute(cfg, raw)
    [failed] = client.search_runs([run.info.experiment_id], "attributes.run_name = 'misfit'")
    assert failed.info.status == "FAILED" and "model.init_from" in failed.data.tags["error"]
    cfg, raw = make_cfg(*TINY, "model.init_from=runs:/0123456789abcdef/model")
    with pytest.raises(ConfigError, match=r"model\.init_from=.* could not be loaded"):
        execute(cfg, raw)


def test_same_seed_gives_identical_per_task_metrics(tiny_run):
    """The same config run again (untracked, later in the same process) gives bit for bit the
    tracked run's per-task metrics."""
    cfg, a, _client, _run = tiny_run
    b = execute(cfg, track=False)
    assert set(a.per_task) == set(b.per_task)
    for key in a.per_task:
        np.testing.assert_array_equal(a.per_task[key], b.per_task[key])


@pytest.mark.usefixtures("migrated_store")
def test_learning_rate_schedule_is_followed_and_logged_as_a_curve(make_cfg):
    cfg, raw = make_cfg(*TINY, "optimizer.schedule=cosine", "optimizer.min_lr_fraction=0.1",
                        "tracking.log_model=false", "meta_test.compare_to_scratch=false")
    result = execute(cfg, raw)
    assert float(result.algorithm.ctx.optimizer.iterations) == 20
    history = MlflowClient(cfg.tracking.uri).get_metric_history(result.run_id,
                                                                "train/learning_rate")
    steps, rates = zip(*sorted((m.step, m.value) for m in history), strict=True)
    assert steps == (4, 9, 14, 19)
    lr, expected = 1e-3, [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / 20)) for s in steps]
    np.testing.assert_allclose(rates, lr * np.array(expected), rtol=1e-5)


@pytest.mark.usefixtures("migrated_store")
def test_failed_run_is_marked_failed_with_reason_and_keeps_what_was_logged(make_cfg):
    cfg, raw = make_cfg(*TINY, "optimizer.learning_rate=1e30", "algorithm.inner_lr=1e30",
                        "tracking.run_name=diverges")
    with pytest.raises(RuntimeError, match="diverged"):
        execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id],
                               "attributes.run_name = 'diverges'")
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["error"] and "iteration" in run.data.tags["error"]
    assert run.data.params["algorithm.name"] == "maml"
    assert run.data.tags["data_fingerprint"]


@pytest.mark.usefixtures("migrated_store")
def test_notebook_preset_scores_chance_and_warns(make_cfg, caplog):
    cfg, raw = make_cfg("experiment=notebook", "tracking.log_model=false")
    with caplog.at_level(logging.WARNING):
        result = execute(cfg, raw)
    after = result.summaries["test/query_acc_after"]
    assert after.n == 100 and after.contains(0.5), after
    assert result.no_gain and "no gain" in caplog.text
    run = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    assert run.data.tags[NO_GAIN_TAG] == "none"


def test_maml_beats_scratch_on_synthetic_tasks(make_cfg):
    cfg, raw = make_cfg("meta_train.iterations=400", "tracking.log_model=false")
    result = execute(cfg, raw, track=False)
    maml = result.summaries["test/query_acc_after"]
    scratch = result.summaries["scratch/query_acc_after"]
    assert maml.low > scratch.high, (maml, scratch)
    assert result.gain.low > 0 and not result.no_gain
    assert maml.mean > result.summaries["test/query_acc_before"].high


def test_cli_run_logs_hydra_folder_and_works_from_any_directory(tmp_path):
    out = run_cli(*TINY, *store_overrides(tmp_path), "tracking.log_model=false",
                  "meta_train.iterations=5", "meta_test.compare_to_scratch=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id])
    hydra = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml"} <= hydra
    assert run.data.tags["hydra_overrides"].startswith('["data.num_train_tasks=40"')
    assert (tmp_path / "mlruns" / "artifacts").is_dir()
