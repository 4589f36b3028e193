"""Bad input, table-driven: each is refused before any stage runs, with one message that names the
key, the value and what is allowed; nothing is written to the tracking store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from mlflow import MlflowClient
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import ConfigError, validate
from pipeline.errors import PipelineError
from pipeline.run.runner import execute
from tests.conftest import TINY, compose_raw, run_cli, store_overrides

# (overrides, the key the message must name, a fragment of what is allowed)
BAD_VALUES = [
    (["data.num_train_tasks=0"], "data.num_train_tasks", ">= 1"),
    (["data.num_train_tasks=-5"], "data.num_train_tasks", ">= 1"),
    (["data.num_test_tasks=1"], "data.num_test_tasks", ">= 2"),
    (["data.num_features=0"], "data.num_features", ">= 1"),
    (["data.num_classes=1"], "data.num_classes", ">= 2"),
    (["data.samples_per_task=-1"], "data.samples_per_task", ">= 2"),
    (["data.k_shot=0"], "data.k_shot", ">= 1"),
    (["data.k_shot=30"], "data.k_shot", "< samples_per_task"),
    (["data.num_classes=30"], "data.num_classes", "< samples_per_task"),
    (["data.samples_per_task=15"], "data.k_shot", "< samples_per_task"),
    (["data.latent_dim=0"], "data.latent_dim", ">= 1"),
    (["data.map_scale=0"], "data.map_scale", "> 0"),
    (["data.task_diversity=-1"], "data.task_diversity", ">= 0"),
    (["data.label_noise=1.5"], "data.label_noise", "<= 1"),
    (["data.label_noise=-0.1"], "data.label_noise", ">= 0"),
    (["model.hidden_units=[64,0]"], "model.hidden_units", ">= 1"),
    (["model.activation=sinusoid"], "model.activation", "relu"),
    (["model.head=tanh"], "model.head", "softmax"),
    (["model.head=sigmoid"], "model.head", "num_classes=2"),
    (["optimizer.learning_rate=0"], "optimizer.learning_rate", "> 0"),
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate", "> 0"),
    (["optimizer.learning_rate=nan"], "optimizer.learning_rate", "finite"),
    (["optimizer.learning_rate=inf"], "optimizer.learning_rate", "finite"),
    (["optimizer.beta_1=1.0"], "optimizer.beta_1", "< 1"),
    (["optimizer.clipnorm=0"], "optimizer.clipnorm", "> 0"),
    (["optimizer.schedule=linear"], "optimizer.schedule", "cosine"),
    (["model.head_init=ones"], "model.head_init", "zeros"),
    (["optimizer.decay_rate=0"], "optimizer.decay_rate", "> 0"),
    (["optimizer.min_lr_fraction=2"], "optimizer.min_lr_fraction", "<= 1"),
    (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum", "< 1"),
    (["algorithm.inner_lr=0"], "algorithm.inner_lr", "> 0"),
    (["algorithm.inner_steps=0"], "algorithm.inner_steps", ">= 1"),
    (["algorithm.test_inner_steps=-1"], "algorithm.test_inner_steps", ">= 0"),
    (["algorithm=scratch", "algorithm.steps=-1"], "algorithm.steps", ">= 0"),
    (["algorithm=scratch", "algorithm.optimizer=rmsprop"], "algorithm.optimizer", "adam"),
    (["algorithm=notebook", "algorithm.epochs=0"], "algorithm.epochs", ">= 1"),
    (["algorithm=notebook", "algorithm.batch_size=0"], "algorithm.batch_size", ">= 1"),
    (["meta_train.iterations=-1"], "meta_train.iterations", ">= 0"),
    (["meta_train.meta_batch_size=0"], "meta_train.meta_batch_size", ">= 1"),
    (["meta_train.log_every=0"], "meta_train.log_every", ">= 1"),
    (["meta_test.task_batch_size=0"], "meta_test.task_batch_size", ">= 1"),
    (["meta_test.scratch.optimizer=rmsprop"], "meta_test.scratch.optimizer", "sgd"),
    (["seed=-1"], "seed", ">= 0"),
    (["runtime.intra_op_threads=-2"], "runtime.intra_op_threads", ">= 0"),
    (["tracking.log_dataset_max_mb=-1"], "tracking.log_dataset_max_mb", ">= 0"),
    (["tracking.uri=ftp://example.org/store"], "tracking.uri", "sqlite:///"),
    (["tracking.uri=mlruns"], "tracking.uri", "http://"),
    (["+unknown.key=1"], "unknown", "the root config has"),
    (["+data.bogus_key=1"], "data.bogus_key", "num_classes"),
    (["+model.extra=[1]"], "model.extra", "hidden_units"),
    (["algorithm=reptile", "+algorithm.zero_head=true"], "algorithm.zero_head", "inner_lr"),
    (["meta_test.eval_steps=[5]", "algorithm=protonet"], "meta_test.eval_steps", "[]"),
    (["meta_test.eval_steps=[1,10,1]"], "meta_test.eval_steps", "more than once"),
    (["data=sinusoid", "algorithm=protonet"], "algorithm", "classification"),
    (["data=images", "model=conv4"], "data.root", "required"),
    (["data=images", "model=mlp", "data.root=/x"], "model", "image model"),
    (["data=synthetic", "model=resnet12"], "model", "image data"),
    (["data=images", "model=conv4", "data.root=/x", "data.layout=tiff"], "data.layout", "pickle"),
    (["data=images", "model=conv4", "data.root=/x", "data.image_size=2"], "data.image_size",
     ">= 4"),
    (["data=images", "model=conv4", "data.root=/x", "data.class_split=[0.5,0.5]"],
     "data.class_split", "sum to 1"),
    (["data=images", "model=conv4", "data.root=/x", "data.layout=csv",
      "data.class_split=[0.6,0.2,0.2]"], "data.class_split", "layout=folders"),
    (["data=images", "model=resnet12", "data.root=/x", "model.filters=[64,0]"], "model.filters",
     ">= 1"),
    (["meta_train.validate_every=-1"], "meta_train.validate_every", ">= 0"),
    (["meta_train.validate_every=100"], "meta_train.validate_every", "data.num_val_tasks > 0"),
    (["experiment=notebook", "meta_train.validate_every=100"], "meta_train.validate_every",
     "no validation split"),
    (["data=omniglot", "model=conv4", "meta_train.validate_every=100"],
     "meta_train.validate_every", "data.num_val_characters"),
    (["data=images", "model=conv4", "data.root=/x", "data.num_val_tasks=0",
      "meta_train.validate_every=100"], "meta_train.validate_every", "data.num_val_tasks > 0"),
    (["algorithm=scratch", "meta_train.validate_every=100"], "meta_train.validate_every",
     "learns nothing"),
    # settings that cannot fit, found before the run
    (["meta_train.meta_batch_size=100000"], "meta_train.meta_batch_size", "<= 2000"),
    (["data=sinusoid", "meta_train.meta_batch_size=20001"], "meta_train.meta_batch_size",
     "<= 20000"),
    (["data=images", "model=conv4", "data.root=/x", "data.num_train_tasks=10",
      "meta_train.meta_batch_size=11"], "meta_train.meta_batch_size", "<= 10"),
    (["data=images", "model=conv4", "data.root=/x", "data.image_size=4"], "data.image_size",
     "at least 16x16 px"),
    (["data=images", "model=resnet12", "data.root=/x", "data.image_size=15"], "data.image_size",
     "at least 16x16 px"),
    (["data=omniglot", "model=conv4", "model.blocks=5"], "data.image_size", "at least 32x32 px"),
    # tabular tasks
    (["data=tabular"], "data.root", "required"),
    (["data=tabular", "data.root=/x", "model=conv4"], "model", "image data"),
    (["data=tabular", "data.root=/x", "data.layout=wide"], "data.layout", "per_task"),
    (["data=tabular", "data.root=/x", "data.normalize=zscore"], "data.normalize", "support"),
    (["data=tabular", "data.root=/x", "data.missing=drop"], "data.missing", "impute"),
    (["data=tabular", "data.root=/x", "data.task_type=ranking"], "data.task_type", "regression"),
    (["data=tabular", "data.root=/x", "data.task_split=[0.5,0.6,0.1]"], "data.task_split",
     "sum to 1"),
    (["data=tabular", "data.root=/x", "data.task_split=null"], "data.task_split",
     "data.split_column"),
    (["data=tabular", "data.root=/x", "data.k_shot=0"], "data.k_shot", ">= 1"),
    (["data=tabular", "data.root=/x", "data.num_classes=1"], "data.num_classes", ">= 2"),
    (["data=tabular", "data.root=/x", "data.task_type=regression", "algorithm=protonet"],
     "algorithm", "classification"),
    (["data=tabular", "data.root=/x", "data.task_split=[0.8,0,0.2]",
      "meta_train.validate_every=100"], "meta_train.validate_every", "data.task_split"),
    (["data=tabular", "data.root=/x", "data.features=[a]", "data.categorical=[b]"],
     "data.categorical", "data.features"),
]

# Refused while Hydra composes: unknown keys, wrong types, unknown group options.
BAD_COMPOSITION = [
    ("data.num_featres=3", "num_featres"),
    ("optimizer.lr=0.1", "lr"),
    ("bogus=1", "bogus"),
    ("data.num_features=abc", "num_features"),
    ("optimizer.learning_rate=fast", "learning_rate"),
    ("meta_test.compare_to_scratch=maybe", "compare_to_scratch"),
    ("data.k_shot=2.5", "k_shot"),
    ("algorithm=mamll", "mamll"),
    ("optimizer=rmsprop", "rmsprop"),
    ("data=imagenet", "imagenet"),
    ("model.hidden_units=wide", "hidden_units"),
    ("algorithm=schema.algorithm.maml", "schema.algorithm.maml"),  # schemas are not options
]


def test_the_table_has_at_least_30_bad_inputs():
    assert len(BAD_VALUES) + len(BAD_COMPOSITION) >= 30


@pytest.mark.parametrize("overrides, key, allowed", BAD_VALUES)
def test_bad_value_is_refused_naming_key_value_and_what_is_allowed(overrides, key, allowed,
                                                                   tmp_path):
    with pytest.raises(ConfigError) as e:
        validate(compose_raw(*store_overrides(tmp_path)[:3], *overrides))
    message = str(e.value)
    assert f"{key}=" in message, message
    assert allowed in message, message
    assert "\n" not in message
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("override, name", BAD_COMPOSITION)
def test_bad_key_type_or_option_is_refused_at_composition(override, name):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as e:
        compose_raw(override)
    text = f"{e.value} {e.value.__cause__}"
    assert name in text, text


@pytest.mark.parametrize("overrides, expected", [
    (["data.k_shot=0"], "data.k_shot=0 is out of range: it must be >= 1."),
    (["model.activation=sinusoid"], "model.activation='sinusoid' is not allowed"),
    (["data.num_featres=3"], "num_featres"),
    (["optimizer.learning_rate=fast"], "learning_rate"),
    (["algorithm=mamll"], "mamll"),
])
def test_cli_prints_one_message_no_traceback_and_writes_nothing(overrides, expected, tmp_path):
    out = run_cli(*overrides, *store_overrides(tmp_path), timeout=60)
    assert out.returncode == 2, out.stderr  # refused (Hydra's composition errors too)
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()
    full = run_cli(*overrides, *store_overrides(tmp_path), timeout=60,
                   env={"HYDRA_FULL_ERROR": "1"})
    assert "Traceback" in full.stderr


@pytest.mark.usefixtures("migrated_store")
def test_error_found_after_the_run_started_marks_it_failed(make_cfg):
    # 45 of each class per task fits 100 samples on paper, but random labels leave some task
    # with fewer than 45 of a class: only the generate stage can tell.
    cfg, raw = make_cfg("experiment=notebook", "data.k_shot=45", *TINY[:2],
                        "tracking.run_name=too-many-shots")
    with pytest.raises(ConfigError, match=r"data\.k_shot=45 is too large"):
        execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name("meta-learning")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "data.k_shot=45 is too large" in run.data.tags["error"]
    assert run.data.params["data.k_shot"] == "45"  # what was logged before the failure stays


def _csv_with_an_empty_filename(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "train.csv").write_text("filename,label\n,n0153282900\n")


def _garbage_store(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mlflow.db").write_bytes(b"not an SQLite file " * 100)


# Refused by the checks of the surroundings (pipeline.run.preflight), before anything is written:
# (overrides, files to make under the folder {root}, the key or file named, what is said).
BAD_SURROUNDINGS = [
    (["tracking.experiment_name=" + "e" * 2000], None, "tracking.experiment_name=",
     "at most 256"),
    (["tracking.run_name=" + "r" * 20000], None, "tracking.run_name=", "at most 250"),
    (["paths.mlruns_dir={root}"], _garbage_store, "mlflow.db", "not a valid SQLite database"),
    (["data=images", "model=conv4", "data.layout=csv", "data.root={root}"],
     _csv_with_an_empty_filename, "train.csv, line 2, column 'filename'", "is empty"),
]


@pytest.mark.parametrize("overrides, make, named, said", BAD_SURROUNDINGS,
                         ids=[o[0][:40] for o, *_ in BAD_SURROUNDINGS])
def test_bad_surroundings_are_refused_in_one_line(overrides, make, named, said, tmp_path):
    from pipeline.run import preflight

    root = tmp_path / "given"
    if make is not None:
        make(root)
    cfg = validate(compose_raw(*store_overrides(tmp_path)[:3],
                               *(o.format(root=root) for o in overrides)))
    with pytest.raises(PipelineError) as e:
        preflight.check(cfg)
    message = str(e.value)
    assert named in message and said in message, message
    assert "\n" not in message
    assert not (tmp_path / "data").exists()
