"""Interruption and resume on real subprocesses: a run stopped during meta-training or during
meta-test is continued in place, and ends with every training curve and every per-task metric
bit-identical to an uninterrupted twin of the same config run alongside (slow: the twins); the
fast suite keeps one stop-and-resume of the signal path without its twin."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.config import LocalTrackingConfig
from pipeline.tracking.store import prepare_store
from tests.conftest import store_overrides

COMMON = ["data.num_train_tasks=40", "data.num_test_tasks=12", "model.hidden_units=[8]",
          "meta_train.meta_batch_size=4", "meta_train.log_every=50", "tracking.log_model=false"]
#: Chunks of 20 iterations against curve points every 50: the curves' open window at the
#: checkpoint must be restored for the resumed curves to match.
IN_TRAINING = [*COMMON, "meta_train.iterations=6000", "meta_train.steps_per_call=20",
               "meta_test.scratch.steps=5"]
#: A short training, then a long scratch baseline to interrupt.
IN_TEST = [*COMMON, "meta_train.iterations=300", "meta_test.scratch.steps=4000"]
#: The same with a baseline long enough (~7 s idle) that a Ctrl-C lands inside it.
IN_LONG_TEST = [*COMMON, "meta_train.iterations=300", "meta_test.scratch.steps=20000"]


def _store(tmp_path):
    store_overrides(tmp_path, schema=True)  # the store's schema, copied
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(LocalTrackingConfig(uri=uri, artifact_location=str(tmp_path / "mlruns/art")))
    client = MlflowClient(uri)
    return uri, client, client.get_experiment_by_name("meta-learning").experiment_id


def _start(tmp_path, name: str, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *overrides, *store_overrides(tmp_path)[:3],
         f"hydra.run.dir={tmp_path}/out-{name}", f"tracking.run_name={name}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, text: str) -> None:
    lines: list[str] = []
    for line in proc.stdout:  # Hydra logs to stdout
        lines.append(line)
        if text in line:
            return
    raise AssertionError("".join(lines[-30:]))


def _run(client, exp_id, name):
    [run] = client.search_runs([exp_id], f"attributes.run_name = '{name}'")
    return run


def _record(client, run_id) -> dict[str, list]:
    """Every curve and per-task metric of a run, value by value at every step."""
    names = [k for k in client.get_run(run_id).data.metrics
             if k.startswith(("train/", "task/", "scratch_task/"))]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in names}


def _resume(uri: str, run_id: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.resume", run_id, "--tracking-uri", uri],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def _check_killed_and_resume(client, exp_id, uri, interrupted, name, rc: int) -> int:
    err, _ = interrupted.communicate(timeout=120)
    assert interrupted.returncode == rc, err[-3000:]
    assert "Traceback" not in err and "resume" in err
    run = _run(client, exp_id, name)
    assert run.info.status == "KILLED" and run.data.tags["error"], run.data.tags
    stopped_at = int(run.data.tags["checkpoint_iteration"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {
        "checkpoint/checkpoint.json", "checkpoint/state.npz"}
    out = _resume(uri, run.info.run_id)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"at meta-iteration {stopped_at}" in out.stdout
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and "error" not in resumed.data.tags
    assert resumed.data.tags["resumed_at_iteration"] == str(stopped_at)
    return stopped_at


def test_sigterm_during_meta_test_then_resume_completes_the_run(tmp_path):
    """The fast suite's stop-and-resume: SIGTERM during the scratch baseline, then
    ``pipeline.resume`` completes the run in place with every curve point and task (the
    bit-identical comparison with a twin is the slow tests' below)."""
    uri, client, exp_id = _store(tmp_path)
    interrupted = _start(tmp_path, "interrupted", IN_TEST)
    _wait_for(interrupted, "meta-tested maml on 12 tasks")
    interrupted.send_signal(signal.SIGTERM)
    assert _check_killed_and_resume(client, exp_id, uri, interrupted, "interrupted",
                                    143) == 300
    a = _record(client, _run(client, exp_id, "interrupted").info.run_id)
    assert len(a["train/loss"]) == 6 and len(a["scratch_task/query_acc_after"]) == 12


@pytest.mark.slow
def test_sigterm_during_meta_training_then_resume_is_bit_identical(tmp_path):
    uri, client, exp_id = _store(tmp_path)
    interrupted = _start(tmp_path, "interrupted", IN_TRAINING)
    _wait_for(interrupted, "iteration 1200/6000")
    reference = _start(tmp_path, "reference", IN_TRAINING)  # the uninterrupted twin
    interrupted.send_signal(signal.SIGTERM)
    stopped_at = _check_killed_and_resume(client, exp_id, uri, interrupted, "interrupted", 143)
    assert 0 < stopped_at < 6000, "interrupt the run during meta-training"
    err, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    a = _record(client, _run(client, exp_id, "interrupted").info.run_id)
    b = _record(client, _run(client, exp_id, "reference").info.run_id)
    assert len(a["train/loss"]) == 120 and len(a["task/query_acc_after"]) == 12
    assert a.keys() == b.keys() and a == b  # every curve point and per-task value, bit for bit


@pytest.mark.slow
def test_sigint_during_meta_test_resumes_straight_at_meta_test(tmp_path):
    uri, client, exp_id = _store(tmp_path)
    interrupted = _start(tmp_path, "interrupted", IN_LONG_TEST)
    reference = _start(tmp_path, "reference", IN_LONG_TEST)
    _wait_for(interrupted, "meta-tested maml on 12 tasks")  # the scratch baseline runs now
    interrupted.send_signal(signal.SIGINT)
    stopped_at = _check_killed_and_resume(client, exp_id, uri, interrupted, "interrupted", 130)
    assert stopped_at == 300  # training was done: nothing is trained again
    err, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    a = _record(client, _run(client, exp_id, "interrupted").info.run_id)
    b = _record(client, _run(client, exp_id, "reference").info.run_id)
    assert len(a["train/loss"]) == 6 and len(a["scratch_task/query_acc_after"]) == 12
    assert a.keys() == b.keys() and a == b


@pytest.mark.slow
def test_a_resume_or_a_rerun_stopped_by_a_signal_ends_killed_in_one_line(tmp_path):
    """``pipeline.resume`` and ``pipeline.rerun`` stop as a run does: exit 143 on SIGTERM and
    130 on Ctrl-C, one line and no traceback, the run KILLED with a later checkpoint (so it can
    be resumed again), never left RUNNING."""
    from pipeline import errors
    from pipeline.tracking import keys

    uri, client, exp_id = _store(tmp_path)
    first = _start(tmp_path, "first", [*IN_TRAINING, "meta_train.iterations=120000"])
    _wait_for(first, "/120000")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 143
    run_id = _run(client, exp_id, "first").info.run_id
    stopped_at = int(client.get_run(run_id).data.tags[keys.CHECKPOINT_ITERATION])
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.resume", run_id,
                                 "--tracking-uri", uri], cwd=PROJECT_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_for(proc, "/120000")  # meta-training goes on
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, out[-3000:]
        assert "Traceback" not in out and out.strip().endswith(errors.INTERRUPTED), out[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", run.data.tags
        assert int(run.data.tags[keys.CHECKPOINT_ITERATION]) > stopped_at
        stopped_at = int(run.data.tags[keys.CHECKPOINT_ITERATION])
    assert _resume(uri, run_id).returncode == 0
    rerun = subprocess.Popen([sys.executable, "-m", "pipeline.rerun", run_id, "--tracking-uri",
                              uri], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    new = []
    while not new and rerun.poll() is None:  # the rerun's run has started meta-training
        new = [r for r in client.search_runs([exp_id], f"tags.{keys.RERUN_OF} = '{run_id}'")
               if "train/loss" in r.data.metrics]
        time.sleep(0.2)
    rerun.send_signal(signal.SIGTERM)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 143, out[-3000:]
    assert "Traceback" not in out and out.strip().endswith(errors.INTERRUPTED), out[-3000:]
    assert client.get_run(new[0].info.run_id).info.status == "KILLED"
