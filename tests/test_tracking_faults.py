"""The tracking store under faults: a dead server, a server that dies and comes back."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from pipeline.errors import TrackingError
from pipeline.run.runner import execute
from pipeline.tracking import Tracker
from pipeline.tracking.keys import FALLBACK_FILE
from pipeline.tracking.run import Undelivered
from pipeline.tracking.store import check_reachable
from tests.conftest import TINY, free_port, run_cli, store_overrides


def test_dead_server_fails_fast_with_a_clear_message(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match="Cannot reach the MLflow tracking server"):
        check_reachable(uri)
    assert time.monotonic() - start < 15


def test_cli_with_dead_server_fails_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    out = run_cli(*TINY, *store_overrides(tmp_path), f"tracking.uri={uri}", timeout=120)
    assert out.returncode == 2  # refused before anything started
    [line] = [line for line in out.stderr.splitlines() if line.strip()]
    assert line.startswith("Cannot start: Cannot reach the MLflow tracking server"), line
    assert uri in line and line.endswith("Nothing was run.")
    assert "Traceback" not in out.stderr and "FAILED" not in out.stderr
    assert not (tmp_path / "data").exists()  # stopped before the generate stage
    assert time.monotonic() - start < 60  # includes ~10 s of Python/TF start-up


def _metric_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow  # a server stopped and started again (the fast suite: the import below)
def test_server_outage_mid_run_loses_nothing(make_cfg, mlflow_server, tmp_path):
    cfg, _ = make_cfg(f"tracking.uri={mlflow_server.uri}", "tracking.artifact_location=null")
    tracker = Tracker(cfg.tracking, tmp_path / "out")
    client = MlflowClient(mlflow_server.uri)
    with tracker.run("outage", {"seed": 0}):
        tracker.log_metrics({"m": [0.0, 1.0]}, steps=[0, 1])
        assert tracker.flush() is True  # delivered (by the background thread) before the outage
        mlflow_server.stop()
        tracker.log_metrics({"m": [2.0, 3.0]}, steps=[2, 3])  # refused: queued, mirrored to file
        tracker.log_params({"p": 1})
        assert tracker.flush() is False  # the store refuses: nothing delivered, nothing lost
        fallback = tmp_path / "out" / FALLBACK_FILE
        queued = [json.loads(line) for line in fallback.read_text().splitlines()]
        assert [r["kind"] for r in queued] == ["batch", "batch"]
        mlflow_server.start()
        tracker.log_metrics({"m": [4.0]}, steps=[4])  # delivers the queue first, in order
        assert tracker.flush() is True
        assert not fallback.exists()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["p"] == "1"
    assert _metric_steps(client, tracker.run_id, "m") == [0, 1, 2, 3, 4]


@pytest.mark.slow  # a server restarted (the fast suite imports through the CLI: test_store_faults)
def test_records_left_at_the_end_can_be_imported(make_cfg, mlflow_server, tmp_path):
    cfg, _ = make_cfg(f"tracking.uri={mlflow_server.uri}", "tracking.artifact_location=null")
    tracker = Tracker(cfg.tracking, tmp_path / "out")
    with pytest.raises(Undelivered, match=r"python -m pipeline\.tracking import"), \
            tracker.run("ends-during-outage", {"seed": 0}):
        tracker.log_metrics({"m": [0.0]})
        assert tracker.flush() is True
        mlflow_server.stop()
        tracker.log_metrics({"m": [1.0, 2.0]}, steps=[1, 2])
    fallback = tmp_path / "out" / FALLBACK_FILE
    assert fallback.exists()  # metrics and the FINISHED status (last) wait there
    assert json.loads(fallback.read_text().splitlines()[-1])["status"] == "FINISHED"
    mlflow_server.start()
    out = subprocess.run([sys.executable, "-m", "pipeline.tracking", "import", str(fallback),
                          "--tracking-uri", mlflow_server.uri], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Delivered 3 records" in out.stdout and not fallback.exists()
    client = MlflowClient(mlflow_server.uri)
    assert _metric_steps(client, tracker.run_id, "m") == [0, 1, 2]
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


@pytest.mark.slow  # a whole run through a real server (the fast suite: the refusals above)
def test_full_run_against_a_server(make_cfg, mlflow_server):
    cfg, raw = make_cfg(*TINY, f"tracking.uri={mlflow_server.uri}",
                        "tracking.artifact_location=null")
    result = execute(cfg, raw)
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert _metric_steps(client, result.run_id, "task/query_acc_after") == list(range(12))
    assert "plots" in {a.path for a in client.list_artifacts(result.run_id)}


def test_background_delivery_is_complete_when_the_run_is_finished(make_cfg, tmp_path):
    """Records go to the store from a background thread; the run is FINISHED only after all of
    them (5,000 metric values, params, a model) were accepted, in order."""
    import numpy as np

    from pipeline.models import build_model

    cfg, _ = make_cfg()
    tracker = Tracker(cfg.tracking, tmp_path / "out")
    model = build_model(cfg.model, (4,), 3, seed=0)
    with tracker.run("background", {"seed": 0}):
        for chunk in range(5):
            tracker.log_metrics({"task/x": np.arange(1000) + 1000 * chunk},
                                steps=range(1000 * chunk, 1000 * (chunk + 1)))
        tracker.log_params({"p": 2})
        tracker.log_keras_model(model, np.zeros((2, 4), np.float32))
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["p"] == "2"
    history = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id,
                                                                          "task/x"))
    assert history == [(i, float(i)) for i in range(5000)]
    assert tracker.delivered == 7 and not (tmp_path / "out" / FALLBACK_FILE).exists()
    import mlflow.keras

    loaded = mlflow.keras.load_model(f"runs:/{tracker.run_id}/model")
    assert [w.shape for w in loaded.get_weights()] == [w.shape for w in model.get_weights()]
