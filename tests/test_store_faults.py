"""Faults of the tracking store itself: a full disk, a store deleted mid-run, runs
whose process died (heartbeat and ``reap``), values over MLflow's limits, a model registered
twice, and the ``error`` tag as plain text. Real SQLite stores, a real tmpfs, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.analysis import compare, paired
from pipeline.analysis.registration import AlreadyRegistered, register
from pipeline.config import TrackingConfig, validate
from pipeline.models import build_model
from pipeline.replay import logged as replay
from pipeline.tracking import Tracker, keys, liveness, store
from pipeline.tracking.run import StoreLost, Undelivered
from tests.conftest import TINY, compose_raw, empty_store_schema, store_overrides

TRACKING = ["-m", "pipeline.tracking"]


def _tracking_cfg(root: Path, experiment: str = "meta-learning") -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{root}/mlflow.db", experiment_name=experiment,
                          artifact_location=str(root / "artifacts"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """One store for the module (a fresh SQLite store's schema takes seconds): each test has its
    own experiment in it."""
    return tmp_path_factory.mktemp("store") / "mlruns"


@pytest.fixture
def cfg(shared, request) -> TrackingConfig:
    return _tracking_cfg(shared, request.node.name[:60])


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "3M"):
    """A real, small filesystem (root only); the test is skipped where none can be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(fs: Path, leave_kb: int = 48) -> Path:
    """Fill the filesystem at ``fs`` but ``leave_kb`` KiB: SQLite's small UPDATEs still get
    through, its INSERTs of new pages do not."""
    free_kb = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize // 1024
    filler = fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free_kb - leave_kb, 0) * 1024)
    return filler


def test_full_disk_run_is_never_finished_and_its_records_can_be_imported(tmp_path):
    with tmpfs(tmp_path / "fs") as fs:
        cfg = _tracking_cfg(fs / "mlruns")
        tracker = Tracker(cfg, tmp_path / "out")
        with pytest.raises(Undelivered) as e, tracker.run("full disk", {"seed": 0}):
            tracker.log_metrics({"m": [0.0]})
            assert tracker.flush()
            filler = fill(fs)
            tracker.log_metrics({"task/x": np.arange(1000.0)}, steps=range(1000))
            tracker.log_params({f"p{i}": "x" * 200 for i in range(100)})
        fallback = tmp_path / "out" / keys.FALLBACK_FILE
        message = str(e.value)
        assert "\n" not in message and str(fallback) in message
        assert f"python -m pipeline.tracking import {fallback} --tracking-uri {cfg.uri}" \
            in message
        client = MlflowClient(cfg.uri)
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FAILED", "a run missing records was ended FINISHED"
        assert str(fallback) in run.data.tags[keys.ERROR]
        filler.unlink()
        out = subprocess.run([sys.executable, "-m", "pipeline.tracking", "import", str(fallback),
                              "--tracking-uri", cfg.uri], capture_output=True, text=True,
                             timeout=120)  # the command the message names, as a user runs it
        assert out.returncode == 0 and "Delivered" in out.stdout, out.stderr[-2000:]
        assert not fallback.exists()
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and keys.ERROR not in run.data.tags
        assert len(client.get_metric_history(tracker.run_id, "task/x")) == 1000
        assert len(run.data.params) == 100


@pytest.mark.slow
def test_full_disk_cli_run_exits_non_zero_saying_how_to_import(tmp_path):
    with tmpfs(tmp_path / "fs") as fs:
        store.prepare_store(TrackingConfig(uri=f"sqlite:///{fs}/mlruns/mlflow.db",
                                           artifact_location=str(fs / "mlruns" / "artifacts")))
        fill(fs)
        out = subprocess.run([sys.executable, "-m", "pipeline", *TINY,
                              *store_overrides(tmp_path), f"paths.mlruns_dir={fs}/mlruns"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 1, out.stderr[-3000:]
        ours = [line for line in out.stderr.splitlines()  # TensorFlow's start-up lines aside
                if line.strip() and not line.startswith(("I0000", "WARNING: All log"))]
        assert len(ours) == 1, out.stderr[-3000:]
        assert ours[0].startswith("Run not recorded in full: ")
        assert f"python -m pipeline.tracking import {tmp_path}/out/{keys.FALLBACK_FILE}" \
            in ours[0]
        assert "Traceback" not in out.stdout + out.stderr
        client = MlflowClient(f"sqlite:///{fs}/mlruns/mlflow.db")
        [run] = client.search_runs([client.get_experiment_by_name("meta-learning")
                                    .experiment_id])
        assert run.info.status != "FINISHED"


def test_a_store_deleted_mid_run_is_said_lost(tmp_path):
    cfg = _tracking_cfg(tmp_path / "mlruns")
    tracker = Tracker(cfg, tmp_path / "out")
    with pytest.raises(StoreLost) as e, tracker.run("deleted", {"seed": 0}):
        tracker.log_params({"p": 1})
        assert tracker.flush()
        shutil.rmtree(tmp_path / "mlruns")
        tracker.log_metrics({"m": [1.0, 2.0]})
    message = str(e.value)
    assert "was deleted" in message and "lost" in message and "nothing is lost" not in message
    assert "\n" not in message and str(tmp_path / "out") in message


def test_error_tag_is_plain_text(cfg, tmp_path):
    tracker = Tracker(cfg, tmp_path / "out")
    with pytest.raises(ValueError), tracker.run("ansi", {"seed": 0}):
        raise ValueError("\x1b[1mInput 0 of layer \x1b[31m'conv'\x1b[0m is\n  incompatible\t!")
    tags = MlflowClient(cfg.uri).get_run(tracker.run_id).data.tags
    assert tags[keys.ERROR] == "ValueError: Input 0 of layer 'conv' is incompatible !"


def test_values_over_mlflows_limits_are_kept_whole(cfg, tmp_path):
    """A tag over 8,000 characters (MLflow 3.17's limit; params: 6,000) is cut in the store and
    kept whole as an artifact, which a rerun reads its overrides from."""
    from mlflow.utils import validation

    assert (store.MAX_TAG_LEN, store.MAX_PARAM_LEN) == (validation.MAX_TAG_VAL_LENGTH,
                                                        validation.MAX_PARAM_VAL_LENGTH)
    assert store.MAX_EXPERIMENT_NAME_LEN <= validation.MAX_EXPERIMENT_NAME_LENGTH
    overrides = [f"+x{i}={'v' * 90}" for i in range(120)]  # 11,760 characters of JSON
    tracker = Tracker(cfg, tmp_path / "out")
    with tracker.run("long", {keys.HYDRA_OVERRIDES: json.dumps(overrides)}):
        tracker.log_params({"long.param": "p" * 7000})
    run = store.get_run(cfg.uri, tracker.run_id)
    assert len(run.tags[keys.HYDRA_OVERRIDES]) == store.MAX_TAG_LEN
    assert replay.logged_overrides(cfg.uri, run) == overrides
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.tags[keys.HYDRA_OVERRIDES])  # what rerun read before: now refused/whole
    got = store.download_artifacts(cfg.uri, run.run_id, keys.full_value("long.param"),
                                   tmp_path / "dl")
    assert got is not None and got.read_text() == "p" * 7000


# --- liveness: heartbeat and reap -----------------------------------------------------------


def _plant(client: MlflowClient, exp: str, beat: datetime | None, status: str = "RUNNING",
           started: datetime | None = None, **tags: str) -> str:
    """A run as a job leaves it, through the real store API: RUNNING, with a heartbeat."""
    started = started or (beat or datetime.now(UTC)) - timedelta(seconds=30)
    start = int(started.timestamp() * 1000)
    planted = {keys.HOST: "node7", keys.PID: "4242", **tags}
    if beat is not None:
        planted[keys.HEARTBEAT] = beat.isoformat(timespec="seconds")
    run = client.create_run(exp, start_time=start, tags=planted)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_heartbeat_is_written_while_the_run_is_open(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(keys, "HEARTBEAT_S", 0.3)
    tracker = Tracker(cfg, tmp_path / "out")
    client = MlflowClient(cfg.uri)
    with tracker.run("beating", {"seed": 0}):
        tags = client.get_run(tracker.run_id).data.tags
        assert tags[keys.HOST] and tags[keys.PID] == str(os.getpid())
        first = tags[keys.HEARTBEAT]
        time.sleep(1.5)
        assert client.get_run(tracker.run_id).data.tags[keys.HEARTBEAT] > first
        assert liveness.is_alive(store.get_run(cfg.uri, tracker.run_id), older_than=5)


def test_reap_ends_lost_runs_and_leaves_live_ones(cfg, tmp_path):
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    now = datetime.now(UTC)
    lost = _plant(client, exp, now - timedelta(minutes=10))
    alive = _plant(client, exp, now)
    # logged before heartbeats: judged by their start time
    old = _plant(client, exp, None, started=now - timedelta(hours=1))
    recent = _plant(client, exp, None)
    dead_parent = _plant(client, exp, now - timedelta(hours=1),
                         **{keys.SWEEP_ROLE: keys.ROLE_PARENT})
    live_parent = _plant(client, exp, now, **{keys.SWEEP_ROLE: keys.ROLE_PARENT})
    group_of_dead = _plant(client, exp, None, **{keys.SWEEP_ROLE: keys.ROLE_GROUP,
                                                  keys.PARENT_RUN: dead_parent})
    group_of_live = _plant(client, exp, None, **{keys.SWEEP_ROLE: keys.ROLE_GROUP,
                                                  keys.PARENT_RUN: live_parent})
    done = _plant(client, exp, now - timedelta(hours=1), status="FINISHED")
    out = subprocess.run([sys.executable, *TRACKING, "reap", "--older-than", "60",
                          "--tracking-uri", cfg.uri, "--experiment", cfg.experiment_name],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 lost run(s) marked FAILED" in out.stdout, out.stdout
    status = {r: client.get_run(r).info.status for r in
              (lost, alive, old, recent, dead_parent, live_parent, group_of_dead, group_of_live,
               done)}
    assert [status[r] for r in (lost, old, dead_parent, group_of_dead)] == ["FAILED"] * 4
    assert [status[r] for r in (alive, recent, live_parent, group_of_live)] == ["RUNNING"] * 4
    assert status[done] == "FINISHED"
    error = client.get_run(lost).data.tags[keys.ERROR]
    since = (now - timedelta(minutes=10)).isoformat(timespec="seconds")
    assert error == f"process lost (no heartbeat since {since}; host node7, pid 4242)"


def test_compare_never_shows_a_dead_run_as_running(cfg, tmp_path, capsys):
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    lost = _plant(client, exp, datetime.now(UTC) - timedelta(hours=2))
    assert compare.main(["--tracking-uri", cfg.uri, "--experiment", cfg.experiment_name]) == 0
    out = capsys.readouterr()
    assert "RUNNING" not in out.out and "FAILED" in out.out
    assert out.err.startswith(f"Run {lost} (") and "marked FAILED: process lost" in out.err


def test_sweep_resume_refuses_to_run_a_live_job_twice(shared, tmp_path):
    """A sweep whose launcher is gone (its parent's heartbeat stopped) but whose job 0 still
    runs elsewhere: the resume reaps the parent's lost job 1, then refuses in one line naming
    the live run, its host and pid, before any job starts."""
    cfg = _tracking_cfg(shared, "resume-refused")
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    grid = ["seed=0,1"]
    command = ["-m", *TINY, *grid, f"paths.mlruns_dir={shared}",
               f"paths.data_dir={tmp_path}/data", f"tracking.experiment_name={cfg.experiment_name}"]
    sweep_dir = f"hydra.sweep.dir={tmp_path}/multirun"  # not an override of the job config
    now = datetime.now(UTC)
    parent = _plant(client, exp, now - timedelta(hours=1), **{
        keys.SWEEP_ROLE: keys.ROLE_PARENT, keys.SWEEP_OVERRIDES: json.dumps(command[1:]),
        keys.SWEEP_PARAMS: json.dumps(["seed"])})
    child = {keys.SWEEP_ROLE: keys.ROLE_CHILD, keys.PARENT_RUN: parent}
    live = _plant(client, exp, now, **child, **{keys.SWEEP_JOB: "0"})
    lost = _plant(client, exp, now - timedelta(hours=1), **child, **{keys.SWEEP_JOB: "1"})
    out = subprocess.run([sys.executable, "-m", "pipeline", *command, sweep_dir,
                          f"sweep.resume={parent}"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    [line] = [line for line in out.stderr.splitlines() if line.startswith("Error in config")]
    assert f"job 0's run {live} is still running (host node7, pid 4242" in line, line
    assert "Traceback" not in out.stderr
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(lost).info.status == "FAILED"
    assert len(client.search_runs([exp])) == 3  # nothing started


def _training_and_beating(uri: str) -> bool:
    """Whether the store's one run has a training curve and a heartbeat after its start tags."""
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("meta-learning")
        runs = client.search_runs([exp.experiment_id]) if exp is not None else []
    except Exception:  # the store is still being created by the run
        return False
    if not runs or "train/loss" not in runs[0].data.metrics or \
            keys.HEARTBEAT not in runs[0].data.tags:
        return False
    beat = datetime.fromisoformat(runs[0].data.tags[keys.HEARTBEAT])
    return beat.timestamp() > runs[0].info.start_time / 1000 + 1


@pytest.mark.slow
def test_sigkilled_run_is_reaped_as_lost(tmp_path):
    """A real ``python -m pipeline`` SIGKILLed mid meta-training stays RUNNING (nothing in the
    process can say otherwise); its heartbeat stops and ``reap`` marks it FAILED with why."""
    # A budget no machine finishes within the test (tiny runs reach ~2,000 iterations/s), and
    # the kill waits on the store itself: training curves delivered and a beat after the start.
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *TINY,
                             "meta_train.iterations=10000000", "meta_train.log_every=50",
                             *store_overrides(tmp_path)],
                            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    deadline = time.monotonic() + 300
    while not _training_and_beating(uri):
        assert proc.poll() is None, f"the run ended by itself (rc {proc.returncode})"
        assert time.monotonic() < deadline, "no training curve and heartbeat within 300 s"
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id])
    assert run.info.status == "RUNNING"
    beat = datetime.fromisoformat(run.data.tags[keys.HEARTBEAT])
    assert beat.timestamp() > run.info.start_time / 1000 + 1  # beaten after the start tags
    reap = [sys.executable, *TRACKING, "reap", "--tracking-uri", uri]
    # on its own host a run whose pid is gone is lost at once, whatever its heartbeat's age
    out = subprocess.run([*reap, "--older-than", "600"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "1 lost run(s)" in out.stdout, out.stdout + out.stderr
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[keys.ERROR].startswith(
        f"process lost (pid {proc.pid} is gone from this host; last heartbeat "
        f"{run.data.tags[keys.HEARTBEAT]}; host ")
    assert f"pid {proc.pid})" in run.data.tags[keys.ERROR]


# --- messages -----------------------------------------------------------------------------


def test_paired_with_a_failed_run_says_it_failed(cfg, tmp_path):
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    fp = {keys.DATA_FINGERPRINT: "f" * 64}
    done = _plant(client, exp, None, "FINISHED", **fp)
    store.log_values(cfg.uri, done, metrics={"test/query_acc_after_mean": 0.5})
    store.log_series(cfg.uri, done, "task/query_acc_after", [0.5] * 20)
    failed = _plant(client, exp, None, "FAILED", **fp)
    with pytest.raises(paired.NotPaired, match=f"run {failed} .* is FAILED and has no test tasks"):
        paired.compare(cfg.uri, done, failed)


def test_register_twice_is_skipped_unless_forced(cfg, tmp_path):
    tracker = Tracker(cfg, tmp_path / "out")
    model_cfg = validate(compose_raw(*store_overrides(tmp_path)[:3])).model
    with tracker.run("with a model", {"seed": 0}):
        tracker.log_keras_model(build_model(model_cfg, (4,), 3, seed=0),
                                np.zeros((2, 4), np.float32))
    assert register(cfg.uri, tracker.run_id, "m")[1] == "1"
    with pytest.raises(AlreadyRegistered, match="version 1 already holds the model of run"):
        register(cfg.uri, tracker.run_id, "m")
    assert compare.main(["--tracking-uri", cfg.uri, "--register", "m", "--run",
                         tracker.run_id]) == 0
    assert len(MlflowClient(cfg.uri).search_model_versions("name = 'm'")) == 1
    assert register(cfg.uri, tracker.run_id, "m", force=True)[1] == "2"


def test_a_logged_model_is_found_without_a_store_in_the_cwd(tmp_path):
    """A fresh process (no MLflow URI set in it or its environment) asks whether a run holds a
    model: MLflow's own logged-model lookup must use the store named, not open its default
    ``sqlite:///mlflow.db`` in the working folder (how a stray store once got committed)."""
    run_cfg = validate(compose_raw(*store_overrides(tmp_path)[:3]))
    tracker = Tracker(run_cfg.tracking, tmp_path / "out")
    with tracker.run("with a model", {"seed": 0}):
        tracker.log_keras_model(build_model(run_cfg.model, (4,), 3, seed=0),
                                np.zeros((2, 4), np.float32))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", "import sys; from pipeline.tracking import store;"
                          " print(store.has_artifact(sys.argv[1], sys.argv[2], 'model'))",
                          run_cfg.tracking.uri, tracker.run_id], cwd=fresh, capture_output=True,
                         text=True, env={**env, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    assert not list(fresh.iterdir()), "a store was created outside the one named"


def test_the_store_layer_leaves_other_clients_registries_alone(tmp_path):
    """After the store layer opened store A, a client made for store B registers its models in
    B: the process-wide URI the store layer sets must not redirect other clients' registries
    (a test that registered into its own store once found its model in another one)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        shutil.copyfile(empty_store_schema(), root / "mlflow.db")
    uri_a, uri_b = f"sqlite:///{a}/mlflow.db", f"sqlite:///{b}/mlflow.db"
    store.client(uri_a)
    MlflowClient(uri_b).create_registered_model("only-in-b")
    assert [m.name for m in MlflowClient(uri_b).search_registered_models()] == ["only-in-b"]
    assert store.client(uri_a).search_registered_models() == []


def test_unknown_run_ids_are_refused(cfg, tmp_path, capsys):
    from pipeline.replay import rerun, resume
    store.prepare_store(cfg)
    missing = uuid.uuid4().hex
    for main in (rerun.main, resume.main):
        assert main([missing, "--tracking-uri", cfg.uri]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Refused: no run with id") and missing in err, err


_STUBBORN_LAUNCHER = """
import subprocess, sys, time
from pathlib import Path
from pipeline.sweep import workers
from pipeline.sweep.callback import SweepCallback

sweep_dir = Path(sys.argv[1])
worker = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                           "time.sleep(120)"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
worker.stdout.readline()  # SIGTERM is ignored from now on
(sweep_dir / workers.JOBS_DIR).mkdir(parents=True)
(sweep_dir / workers.JOBS_DIR / str(worker.pid)).write_text("0")
callback = SweepCallback()
callback.sweep_dir, callback.parent_run_id = sweep_dir, "parent0123"
callback._handle_signals()
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_a_second_signal_stops_the_wait_for_stubborn_workers(tmp_path):
    """A stopped sweep waits for its busy workers' runs to end; a worker that ignores SIGTERM
    keeps it waiting, and the second Ctrl-C ends the wait: one line naming the parent to
    resume, exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", _STUBBORN_LAUNCHER, str(tmp_path)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while not (tmp_path / ".stop").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / ".stop").exists(), "the first signal did not stop the sweep"
        time.sleep(0.5)
        assert proc.poll() is None, "the sweep did not wait for its busy worker"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(OSError):
            os.kill(worker, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    [line] = err.strip().splitlines()
    assert line.startswith("Sweep stopped again by signal 2") and "sweep.resume=parent0123" in line


@pytest.mark.slow
def test_double_ctrl_c_on_a_sweep_ends_in_one_line(tmp_path):
    """Ctrl-C twice to a joblib sweep's launcher: the second stops waiting for the workers,
    without a traceback, exit 130; nothing is left RUNNING that a reap would not end."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "-m", *TINY, "seed=0,1",
                             "meta_train.iterations=20000", "meta_train.log_every=50",
                             "tracking.log_model=false", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", *store_overrides(tmp_path)[:3],
                             f"hydra.sweep.dir={tmp_path}/multirun"],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "/20000" in line:
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest
    # The second signal lands while the first waits for the workers ("stopped again",
    # test_a_second_signal_stops_the_wait_for_stubborn_workers) or, when they stopped within
    # the half second, in the launcher's exit: 130 and one line either way.
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("meta-learning").experiment_id
    [parent] = client.search_runs([exp], "tags.sweep_role = 'parent'")
    assert parent.info.status == "KILLED"
    assert f"sweep.resume={parent.info.run_id}" in out.split("Sweep stopped")[-1]
    liveness.reap(uri, older_than=0)
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")
