"""Config schemas: every group validated, bad keys and values refused with a clear message."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline.config import ConfigError, validate
from tests.conftest import compose_raw, run_cli, store_overrides


@pytest.mark.parametrize("experiment", [None, "notebook", "synthetic_maml"])
def test_presets_compose_and_validate(experiment, tmp_path):
    overrides = store_overrides(tmp_path)[:3] + ([f"experiment={experiment}"] if experiment else [])
    cfg = validate(compose_raw(*overrides))
    assert cfg.seed == 0
    assert str(tmp_path) in cfg.tracking.uri and cfg.tracking.uri.startswith("sqlite:///")


def test_default_store_is_absolute_under_project_root():
    from pipeline import PROJECT_ROOT

    cfg = validate(compose_raw("paths.output_dir=/tmp/x"))
    assert cfg.tracking.uri == f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"
    assert cfg.tracking.artifact_location == f"{PROJECT_ROOT}/mlruns/artifacts"


def test_notebook_preset_matches_notebook():
    cfg = validate(compose_raw("experiment=notebook", "paths.output_dir=/tmp/x"))
    d = cfg.data
    assert (d.family, d.num_train_tasks, d.num_test_tasks, d.samples_per_task, d.num_features,
            d.num_classes) == ("notebook", 100, 100, 100, 20, 2)
    assert cfg.model.hidden_units == [64, 64] and cfg.model.activation == "relu"
    assert cfg.model.head == "sigmoid"
    algo = cfg.algorithm
    assert (algo.name, algo.epochs, algo.batch_size) == ("notebook", 10, 32)
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate) == ("adam", 0.001)


@pytest.mark.parametrize("override", ["data.num_featres=3", "optimizer.lr=0.1", "bogus=1"])
def test_mistyped_key_is_refused(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as e:
        compose_raw(override)
    assert override.split("=")[0].split(".")[-1] in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("override", ["data.num_features=abc", "optimizer.learning_rate=fast",
                                      "meta_test.compare_to_scratch=maybe"])
def test_bad_type_is_refused(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_raw(override)


@pytest.mark.parametrize("overrides, key", [
    (["data.num_classes=1"], "data.num_classes"),
    (["data.k_shot=0"], "data.k_shot"),
    (["data.num_train_tasks=-5"], "data.num_train_tasks"),
    (["data.label_noise=1.5"], "data.label_noise"),
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["optimizer.learning_rate=nan"], "optimizer.learning_rate"),
    (["algorithm.inner_lr=0"], "algorithm.inner_lr"),
    (["model.activation=sinusoid"], "model.activation"),
    (["model.head=tanh"], "model.head"),
    (["meta_test.scratch.optimizer=rmsprop"], "meta_test.scratch.optimizer"),
    (["seed=-1"], "seed"),
    (["data.k_shot=30"], "data.k_shot"),
    (["model.head=sigmoid"], "model.head"),
    (["model.hidden_units=[64,0]"], "model.hidden_units"),
    (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum"),
])
def test_bad_value_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_raw("paths.output_dir=/tmp/x", *overrides))
    message = str(e.value)
    assert message.startswith(key) or f" {key}=" in message or f"{key}=" in message
    assert "must" in message or "choose" in message


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigCompositionException) as e:
        compose_raw("algorithm=mamll")
    assert "maml" in str(e.value) and "Available options" in str(e.value)


def test_cli_cfg_job_and_info():
    out = run_cli("--cfg", "job", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "algorithm:" in out.stdout and "name: maml" in out.stdout
    info = run_cli("--info", "defaults", timeout=60)
    assert info.returncode == 0 and "data/synthetic" in info.stdout


def test_cli_bad_value_exits_cleanly_before_any_work(tmp_path):
    out = run_cli("data.k_shot=0", *store_overrides(tmp_path), timeout=60)
    assert out.returncode == 2
    assert "data.k_shot=0" in out.stderr and ">= 1" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()


def test_cli_mistyped_key_exits_with_message(tmp_path):
    out = run_cli("data.k_shto=3", *store_overrides(tmp_path), timeout=60)
    assert out.returncode != 0 and "k_shto" in out.stderr
    assert not (tmp_path / "mlruns").exists()
