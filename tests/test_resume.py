"""Interruption and resume: a real subprocess is stopped mid-meta-training and continued; the
final per-task metrics are bit-identical to an uninterrupted run of the same config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.config import TrackingConfig
from pipeline.tracking import prepare_store
from tests.conftest import store_overrides

LONG = ["data.num_train_tasks=40", "data.num_test_tasks=12", "model.hidden_units=[8]",
        "meta_train.iterations=20000", "meta_train.meta_batch_size=4",
        "meta_train.steps_per_call=20", "meta_train.log_every=50", "meta_test.scratch.steps=5",
        "tracking.log_model=false"]


def _start(tmp_path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *LONG, *store_overrides(tmp_path)[:3],
         f"hydra.run.dir={tmp_path}/out-{name}", f"tracking.run_name={name}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _run(client, exp_id, name):
    runs = client.search_runs([exp_id], f"attributes.run_name = '{name}'")
    return runs[0] if runs else None


def _per_task(client, run_id):
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in ("task/query_acc_after", "task/query_loss_after",
                        "scratch_task/query_acc_after")}


def test_sigterm_checkpoints_and_resume_is_bit_identical(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "mlruns/artifacts")))
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("meta-learning").experiment_id

    interrupted = _start(tmp_path, "interrupted")
    lines: list[str] = []
    for line in interrupted.stdout:  # Hydra logs to stdout; wait until 10% is trained
        lines.append(line)
        if "iteration 2000/20000" in line:
            break
    else:
        raise AssertionError("".join(lines[-30:]))
    reference = _start(tmp_path, "reference")  # the uninterrupted twin runs meanwhile
    interrupted.send_signal(signal.SIGTERM)
    err, _ = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "resume" in err

    run = _run(client, exp_id, "interrupted")
    assert run.info.status == "KILLED"
    assert "KeyboardInterrupt" in run.data.tags["error"]
    stopped_at = int(run.data.tags["checkpoint_iteration"])
    assert 0 < stopped_at < 20000, "interrupt the run during meta-training"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {
        "checkpoint/checkpoint.json", "checkpoint/state.npz"}
    curve = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert curve and max(curve) < stopped_at, stopped_at  # logged before the stop: kept

    out = subprocess.run([sys.executable, "-m", "pipeline.resume", run.info.run_id,
                          "--tracking-uri", uri], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"at meta-iteration {stopped_at}" in out.stdout

    err, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and "error" not in resumed.data.tags
    assert resumed.data.tags["resumed_at_iteration"] == str(stopped_at)
    ref = _run(client, exp_id, "reference")
    a, b = _per_task(client, resumed.info.run_id), _per_task(client, ref.info.run_id)
    assert len(a["task/query_acc_after"]) == 12
    assert a == b  # bit-identical, task by task
    curve = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert max(curve) == 19999
