"""A search under faults, on real subprocesses and real SQLite stores: a launcher SIGKILLed
mid-trial leaves a study and a record that ``reap`` makes agree (no trial RUNNING without a
process), and that an immediate ``sweep.resume=last`` continues at once; odd input is refused
in one line before a parent run or a study exist."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from pipeline import PROJECT_ROOT
from pipeline.tracking import keys
from tests.test_search import runs_of, search_command
from tests.test_search_session import signal_a_training_worker, studies

#: Trials long enough to be caught meta-training (a validation every 20 iterations).
LONG = ["hydra.sweeper.n_trials=3", "meta_train.iterations=400", "meta_train.steps_per_call=5",
        "meta_train.validate_every=20", "hydra.sweeper.reevaluate.top_k=0"]


def studies_in(tmp: Path, storage: str | None) -> list[optuna.Study]:
    """The studies of the search's storage (the SQLite file beside its store by default)."""
    if storage is None:
        return studies(tmp)
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)]


def kill_mid_trial(tmp: Path, *args: str, storage: str | None = None) -> int:
    """Start a search and SIGKILL its launching process once a trial has reported a validation
    value (it is meta-training); the trial's number."""
    proc = subprocess.Popen(search_command(tmp, *args), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if storage is None and not (tmp / "mlruns" / "optuna.db").exists():
                continue
            try:
                trials = studies_in(tmp, storage)[0].trials
            except Exception:  # the search is creating its study
                continue
            caught = [t.number for t in trials if t.state.name == "RUNNING"
                      and t.intermediate_values]
            if caught:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return caught[0]
        raise AssertionError("the search ended before it could be killed: "
                             + proc.communicate()[0][-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def assert_stores_agree(tmp: Path, storage: str | None = None) -> optuna.Study:
    """No trial RUNNING in the study, and each trial's standing run tagged with its state."""
    [s] = studies_in(tmp, storage)
    assert "RUNNING" not in {t.state.name for t in s.trials}, [t.state for t in s.trials]
    _client, runs = runs_of(tmp)
    standing = {int(r.data.tags[keys.TRIAL_NUMBER]): r for r in runs
                if keys.TRIAL_NUMBER in r.data.tags and keys.REPLACED_BY not in r.data.tags}
    assert sorted(standing) == [t.number for t in s.trials]
    for t in s.trials:
        run = standing[t.number]
        assert run.data.tags[keys.TRIAL_STATE] == t.state.name, (t.number, run.data.tags)
        if t.state.name != "PRUNED":  # (a pruned trial's run status: the pruning's own test)
            assert run.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "FAILED")
    return s


@pytest.mark.slow
def test_reap_after_a_launcher_sigkill_fails_its_trial_in_the_study(tmp_path):
    """SIGKILL of a search's only process (jobs in-process) while a trial meta-trains: its run
    and the parent stay RUNNING, the trial RUNNING in the study. ``reap`` ends the runs and
    tells the study: the trial is FAIL there, its run FAILED and tagged ``trial_state=FAIL``."""
    number = kill_mid_trial(tmp_path, *LONG)
    assert studies(tmp_path)[0].trials[number].state.name == "RUNNING"
    out = subprocess.run([sys.executable, "-m", "pipeline.tracking", "reap", "--tracking-uri",
                          f"sqlite:///{tmp_path}/mlruns/mlflow.db"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"trial {number} of study" in out.stdout and "FAIL in the study" in out.stdout, \
        out.stdout
    s = assert_stores_agree(tmp_path)
    assert s.trials[number].state.name == "FAIL"
    _client, runs = runs_of(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    assert parent.info.status == "FAILED" and "process lost" in parent.data.tags[keys.ERROR]


@pytest.mark.slow
def test_an_immediate_resume_after_kill_9_of_the_launcher_runs_at_once(tmp_path):
    """``kill -9`` of a search's launcher (project launcher, a warm worker), then at once
    ``sweep.resume=last``: liveness comes from the process table, so the resume is not refused
    (no waiting for a heartbeat to age); it continues the killed trial under its number and
    ends with n_trials trials, none RUNNING, each run tagged with its trial's state."""
    args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1", *LONG]
    number = kill_mid_trial(tmp_path, *args)
    started = time.monotonic()
    out = subprocess.run(search_command(tmp_path, *args, "sweep.resume=last"),
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    said = out.stdout + out.stderr
    assert out.returncode == 0, said[-4000:]
    assert "still running" not in said and "Resuming" in said, said[-4000:]
    assert time.monotonic() - started < 600
    s = assert_stores_agree(tmp_path)
    assert [t.number for t in s.trials] == [0, 1, 2]
    assert s.trials[number].state.name == "COMPLETE"
    assert "UserWarning" not in said, said[-4000:]


@pytest.mark.slow
def test_a_password_in_the_study_storage_survives_a_kill_a_reap_and_a_resume_unrecorded(
        tmp_path):
    """A search whose study lives in PostgreSQL behind a password: SIGKILLed mid-trial, reaped
    (the record masks the storage's password: ``OPTUNA_STORAGE`` gives it to ``reap``, which
    then fails the trial in the study), resumed with ``sweep.resume=last``. The stores agree at
    the end, and no file of the store holds the password."""
    from tests.conftest import missing
    from tests.test_faults import SECRET, _grep_store
    from tests.test_team_setup import Postgres

    try:
        import psycopg2  # noqa: F401
    except ImportError:
        missing('psycopg2 (pip install -e ".[server]")')
    pg = Postgres()
    pg.start()
    try:
        storage = pg.optuna_uri.replace("postgres@", f"postgres:{SECRET}@")
        args = [*LONG, f"hydra.sweeper.storage={storage}"]
        number = kill_mid_trial(tmp_path, *args, storage=storage)
        uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
        reap = [sys.executable, "-m", "pipeline.tracking", "reap", "--tracking-uri", uri]
        out = subprocess.run(reap, cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OPTUNA_STORAGE": storage})
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"trial {number} of study" in out.stdout and "FAIL in the study" in out.stdout, \
            out.stdout
        assert SECRET not in out.stdout + out.stderr
        out = subprocess.run(search_command(tmp_path, *args, "sweep.resume=last"),
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        s = assert_stores_agree(tmp_path, storage)
        assert len(s.trials) == 3 and s.trials[number].state.name == "FAIL"
        assert _grep_store(tmp_path / "mlruns", SECRET) == []
    finally:
        pg.stop()


@pytest.mark.slow
def test_sigterm_to_a_worker_in_a_pruned_search_fails_only_its_trial(tmp_path):
    """SIGTERM to the worker running a trial of a pruned search (MedianPruner, 2 warm
    workers): that trial is FAIL in the study and its run FAILED (not KILLED: no resume will
    continue it), the search goes on to its n_trials and exits 0, the stores agree."""
    proc = subprocess.Popen(search_command(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=4", "meta_train.iterations=300", "meta_train.steps_per_call=5",
        "meta_train.validate_every=20", "hydra.sweeper.reevaluate.top_k=0",
        "+hydra.sweeper.pruner._target_=optuna.pruners.MedianPruner",
        "+hydra.sweeper.pruner.n_startup_trials=1", "+hydra.sweeper.pruner.n_warmup_steps=20"),
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = signal_a_training_worker(tmp_path, proc, signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert stopped is not None, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    s = assert_stores_agree(tmp_path)
    assert len(s.trials) == 4
    [failed] = [t for t in s.trials if t.state.name == "FAIL"]
    _client, runs = runs_of(tmp_path)
    [run] = [r for r in runs if r.data.tags.get(keys.TRIAL_NUMBER) == str(failed.number)]
    assert "signal 15" in run.data.tags[keys.ERROR]


def _refused(tmp: Path, *args: str) -> str:
    """A search that must be refused: exit 2, one line, no store, no study."""
    out = subprocess.run(search_command(tmp, *args), cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=300)
    lines = [x for x in out.stderr.splitlines() if x.strip() and not x.startswith(
        ("I0000", "WARNING: All log"))]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert not (tmp / "mlruns").exists() and not list(tmp.rglob("*.db")), list(tmp.rglob("*"))
    return lines[0]


def test_an_unsupported_tracking_uri_is_refused_in_one_line_naming_the_schemes(tmp_path):
    line = _refused(tmp_path, "tracking.uri=ftp://x",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path}/study/optuna.db")
    assert line.startswith("Error in config: tracking.uri='ftp://x' is not supported"), line
    assert "sqlite:///, http://, https://" in line


@pytest.mark.slow
@pytest.mark.parametrize(("uri", "says"), [
    ("postgresql://optuna:SECRET@127.0.0.1:9/db", "Error in config: tracking.uri="),
    ("file:///tmp/mlruns", "Error in config: tracking.uri="),
    ("http://user:SECRET@127.0.0.1:9", "Cannot start: Cannot reach the MLflow tracking server"),
])
def test_odd_tracking_uris_are_refused_before_a_parent_or_study_exist(tmp_path, uri, says):
    line = _refused(tmp_path, f"tracking.uri={uri}",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path}/study/optuna.db")
    assert line.startswith(says) and "SECRET" not in line, line


@pytest.mark.slow
@pytest.mark.parametrize(("args", "says"), [
    (["+hydra.sweeper.pruner=median"], "hydra.sweeper.pruner=median is not a pruner config"),
    (["+hydra.sweeper.pruner._target_=optuna.pruners.MedianPruner",
      "+hydra.sweeper.pruner.n_warmup_steps=-5"], "Number of warmup steps cannot be negative"),
])
def test_an_odd_pruner_is_refused_before_a_parent_or_study_exist(tmp_path, args, says):
    line = _refused(tmp_path, *args)
    assert line.startswith("Error in config: hydra.sweeper.pruner") and says in line, line


def test_a_sampler_or_pruner_that_cannot_be_made_is_refused_saying_why():
    from pipeline.errors import ConfigError
    from pipeline.search import refusals

    for spec, says in ((OmegaConf.create({"_target_": "optuna.pruners.MedianPrunr"}),
                        "MedianPrunr"),
                       ({"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": -5},
                        "cannot be negative"),
                       ("median", "hydra.sweeper.pruner=median is not a pruner config")):
        with pytest.raises(ConfigError, match=says):
            refusals._build("pruner", spec)


def test_a_resume_waits_for_the_workers_of_a_lost_launcher_instead_of_refusing(tmp_path):
    """Right after ``kill -9`` of a launcher on this host, its worker may still be stopping its
    job (the project's launcher's workers do within seconds): the resume waits for that process
    to end rather than refuse the job as still running."""
    from mlflow import MlflowClient

    from pipeline.sweep import callback
    from pipeline.tracking import liveness, store
    from tests.conftest import store_overrides
    from tests.test_faults import _plant, _start_ticks
    from tests.test_store_faults import _tracking_cfg

    store_overrides(tmp_path, schema=True)  # a copy of a migrated store: milliseconds
    cfg = _tracking_cfg(tmp_path / "mlruns")
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    here = socket.gethostname()
    launcher = subprocess.Popen([sys.executable, "-c", "pass"])
    launcher.wait()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    job = _plant(client, exp, host=here, pid=str(worker.pid),
                 pid_start=_start_ticks(worker.pid))
    parent = _plant(client, exp, host=here, pid=str(launcher.pid))
    try:
        standing = {0: store.get_run(cfg.uri, job)}
        assert liveness.is_alive(standing[0])
        started = time.monotonic()
        after = callback._after_orphans(cfg.uri, store.get_run(cfg.uri, parent), standing)
        assert not liveness.is_alive(after[0])
        assert time.monotonic() - started < callback.ORPHAN_WAIT_S
    finally:
        worker.kill()
        worker.wait()
