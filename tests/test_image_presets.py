"""The image presets end to end on generated collections, one layout each, leaving a complete
MLflow run: every test episode's metrics, the ``val/`` curves, the selected iteration, the
model. The first runs in process; the others are the real CLI, as a user types it (slow)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.run.runner import execute
from pipeline.tracking import keys
from tests import image_sets
from tests.conftest import run_cli, store_overrides

#: Each preset shrunk to a tiny run (16x16 images, 8 filters, 20 iterations, 6 test episodes).
SHRINK = [*image_sets.TINY_IMAGES, "meta_train.iterations=20", "meta_train.validate_every=10",
          "meta_train.log_every=5"]


def _check_run(uri: str, run_id: str, preset: str) -> mlflow.entities.Run:
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[keys.DATA_FAMILY] == "images"
    episodes = client.get_metric_history(run_id, "task/query_acc_after")
    assert sorted(m.step for m in episodes) == list(range(6))
    val = client.get_metric_history(run_id, "val/query_acc_after_mean")
    assert sorted(m.step for m in val) == [10, 20]
    assert run.data.tags[keys.SELECTED_ITERATION] in ("10", "20")
    assert json.loads(run.data.tags[keys.HYDRA_OVERRIDES])[0] == f"experiment={preset}"
    assert "test/query_acc_after_mean" in run.data.metrics
    return run


@pytest.mark.slow  # conv4 on images end to end (the fast suite: test_images, test_validation)
def test_miniimagenet_protonet_preset_on_a_folder_collection(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    overrides = ["experiment=miniimagenet_5w1s_protonet", *image_sets.overrides(root), *SHRINK]
    cfg, raw = make_cfg(*overrides)
    result = execute(cfg, raw, overrides)
    _check_run(cfg.tracking.uri, result.run_id, "miniimagenet_5w1s_protonet")
    model = mlflow.keras.load_model(f"runs:/{result.run_id}/model")  # the selected weights
    x = result.tasks.test.take([0]).query_x[0]
    np.testing.assert_allclose(np.asarray(model(x)), result.algorithm.model(x).numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("preset, layout", [("miniimagenet_5w5s_protonet", "csv"),
                                            ("cifarfs_5w1s_protonet", "pickle"),
                                            ("miniimagenet_5w1s_maml", "flat")])
def test_preset_from_the_command_line(preset, layout, tmp_path):
    root = image_sets.write(tmp_path / "set", layout)
    extra = ["algorithm.inner_steps=1", "algorithm.test_inner_steps=1"] \
        if preset.endswith("maml") else []
    out = run_cli(f"experiment={preset}", *image_sets.overrides(root, layout), *SHRINK, *extra,
                  *store_overrides(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    [run] = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("meta-learning").experiment_id])
    _check_run(uri, run.info.run_id, preset)
    mlflow.set_tracking_uri(uri)
    assert mlflow.keras.load_model(f"runs:/{run.info.run_id}/model") is not None
