"""Config schemas: every group validated, bad keys and values refused with a clear message."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pipeline.config import registry, validate
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


def test_cli_cfg_job_and_info():
    out = run_cli("--cfg", "job", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "algorithm:" in out.stdout and "name: maml" in out.stdout
    info = run_cli("--info", "defaults", timeout=60)
    assert info.returncode == 0 and "data/synthetic" in info.stdout


#: (group, option) -> keys a YAML option sets on purpose, over its dataclass defaults. Empty:
#: every option's defaults live in its schema alone.
ON_PURPOSE: dict[tuple[str, str], set[str]] = {}


@pytest.mark.parametrize("group", registry.GROUPS)
def test_every_yaml_option_composes_to_its_dataclass_defaults(group):
    """One source of truth: ``conf/<group>/<option>.yaml`` selects its schema and adds no second
    copy of its defaults; every registered option has a YAML file and vice versa."""
    from pipeline import CONFIG_DIR

    files = {p.stem: p for p in (CONFIG_DIR / group).glob("*.yaml")}
    options = registry.options(group)
    assert set(files) == set(options), group
    for name, opt in options.items():
        values = set(OmegaConf.load(files[name])) - {"defaults"}
        assert values == ON_PURPOSE.get((group, name), set()), (group, name, values)
        composed = OmegaConf.to_container(compose_raw(f"{group}={name}")[group], resolve=False)
        defaults = OmegaConf.to_container(OmegaConf.structured(opt.schema), resolve=False)
        assert composed == defaults, (group, name)


def test_options_name_what_they_build():
    for group in ("data", "model", "algorithm", "optimizer"):
        for name, opt in registry.options(group).items():
            assert callable(opt.target()), (group, name)
