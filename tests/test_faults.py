"""Faults and frictions outside the search: duplicated ``eval_steps`` and a store that cannot be
created refused before anything is recorded, passwords masked in the whole record, liveness told
by the process table on the run's own host, reruns that check their data first, and run ids
taken by unique prefix. Real SQLite stores, a real tmpfs, real processes."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.analysis import compare
from pipeline.config import validate
from pipeline.models import build_model
from pipeline.replay import resume
from pipeline.tracking import Tracker, keys, store
from tests.conftest import TINY, compose_raw, run_cli, store_overrides
from tests.test_store_faults import _tracking_cfg, fill, tmpfs

SECRET = "s3cr3tPassw0rd"


def ours(stderr: str) -> list[str]:
    """The pipeline's own lines (TensorFlow's start-up chatter aside)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("I0000", "WARNING: All log"))]


def python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


# --- refused before anything is recorded ----------------------------------------------------


def test_duplicated_eval_steps_are_refused_in_one_line_before_anything_is_recorded(tmp_path):
    out = run_cli(*TINY, "meta_test.eval_steps=[1,1]", *store_overrides(tmp_path), timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    [line] = ours(out.stderr)
    assert line.startswith("Error in config: meta_test.eval_steps=[1, 1] is not allowed"), line
    assert "more than once" in line and "meta_test.eval_steps=[1]" in line
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()


def test_a_store_that_cannot_be_created_is_refused_and_nothing_half_made_is_left(tmp_path):
    """A full disk while a new SQLite store is created: one line, exit 2, and the disk holds
    what it held before (no store, no lock file, no folder)."""
    with tmpfs(tmp_path / "fs") as fs:
        fill(fs)
        out = run_cli(*TINY, *store_overrides(tmp_path), f"paths.mlruns_dir={fs}/mlruns",
                      timeout=300)
        assert out.returncode == 2, out.stderr[-3000:]
        [line] = ours(out.stderr)
        assert line.startswith(f"Cannot start: Cannot create the MLflow store "
                               f"{fs}/mlruns/mlflow.db (tracking.uri): database or disk is "
                               f"full."), line
        assert "Traceback" not in out.stdout + out.stderr
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]


# --- no secret in the record ----------------------------------------------------------------


def _grep_store(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` (the SQLite database and every artifact) holding ``secret``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_passwords_are_masked_in_every_param_tag_and_artifact(tmp_path):
    """What a run of a search against a team's servers writes (the study's PostgreSQL storage
    and a tracking URI with a password, in its params, its overrides tag, a long tag kept whole
    as an artifact, and Hydra's own ``.hydra`` files) reaches the store with the password
    masked; the rest of each value is kept."""
    storage = f"postgresql+psycopg2://optuna:{SECRET}@db.example:5432/optuna"
    tracking_uri = f"http://user:{SECRET}@mlflow.example:5000"
    hydra_dir = tmp_path / "job" / ".hydra"
    hydra_dir.mkdir(parents=True)
    escaped = tracking_uri.replace(":", "\\:")  # as Hydra writes a sweep job's overrides
    overrides = [f"tracking.uri={tracking_uri}", "seed=0", f"+team.uri={escaped}"]
    (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  sweeper:\n    storage: {storage}\n"
                                          f"  overrides:\n    hydra:\n"
                                          f"    - hydra.sweeper.storage={storage}\n")
    (hydra_dir / "config.yaml").write_text(f"tracking:\n  uri: {tracking_uri}\n")
    cfg = _tracking_cfg(tmp_path / "mlruns")
    tracker = Tracker(cfg, tmp_path / "out")
    with tracker.run(f"job of {storage}", {keys.HYDRA_OVERRIDES: json.dumps(overrides),
                                           "long": storage + "x" * store.MAX_TAG_LEN}):
        tracker.log_params({"hydra.sweeper.storage": storage, "seed": 0})
        tracker.set_tags({"tracking.uri": tracking_uri})
        tracker.log_artifacts(hydra_dir, keys.HYDRA_DIR)
        tracker.log_dict({"tracking": {"uri": tracking_uri}}, keys.CONFIG_FILE)
    store.set_tags(cfg.uri, tracker.run_id, {keys.STUDY_STORAGE: storage})
    assert _grep_store(tmp_path / "mlruns", SECRET) == []
    run = MlflowClient(cfg.uri).get_run(tracker.run_id)
    masked = storage.replace(SECRET, "***")
    assert run.data.params["hydra.sweeper.storage"] == masked
    assert run.data.tags["tracking.uri"] == tracking_uri.replace(SECRET, "***")
    assert json.loads(run.data.tags[keys.HYDRA_OVERRIDES])[0] == \
        f"tracking.uri={tracking_uri.replace(SECRET, '***')}"
    [hydra_yaml] = (tmp_path / "mlruns" / "artifacts").rglob(f"{keys.HYDRA_DIR}/hydra.yaml")
    assert f"storage: {masked}" in hydra_yaml.read_text()
    assert SECRET in (hydra_dir / "hydra.yaml").read_text()  # the job's own folder keeps it


@pytest.mark.slow
def test_a_search_against_password_protected_servers_leaves_no_password_in_the_store(tmp_path):
    """The issue's case, for real: a search whose study lives in PostgreSQL and whose runs go
    to an MLflow server, both URIs with a password (the servers accept any: trust auth, no
    auth). The whole store - the server's database and every artifact file - is grepped."""
    from tests.conftest import MlflowServer, missing
    from tests.test_team_setup import Postgres

    try:
        import psycopg2  # noqa: F401
    except ImportError:
        missing('psycopg2 (pip install -e ".[server]")')
    pg = Postgres()
    pg.start()
    server = MlflowServer(tmp_path / "server")
    try:
        server.start()
        storage = pg.optuna_uri.replace("postgres@", f"postgres:{SECRET}@")
        tracking = server.uri.replace("http://", f"http://user:{SECRET}@")
        out = subprocess.run(
            [sys.executable, "-m", "pipeline", "-m", "hparams_search=maml_optuna", *TINY,
             "data.num_val_tasks=10", "meta_train.validate_every=10",
             "tracking.log_model=false", "tracking=server", f"tracking.uri={tracking}",
             f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.reevaluate.top_k=1", "hydra.sweeper.reevaluate.seeds=2",
             "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path}/multirun",
             f"paths.data_dir={tmp_path}/data"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1500)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("meta-learning")
                                   .experiment_id])
        assert len(runs) >= 4  # parent, 2 trials, a re-evaluation group and its jobs
        [hydra_yaml, *_] = sorted((tmp_path / "server" / "artifacts").rglob("hydra/hydra.yaml"))
        assert storage.replace(SECRET, "***") in hydra_yaml.read_text()
        assert SECRET in next((tmp_path / "multirun").rglob(".hydra/hydra.yaml")).read_text()
        assert _grep_store(tmp_path / "server", SECRET) == []
    finally:
        server.stop()
        pg.stop()


# --- liveness from the process itself ---------------------------------------------------------


def _plant(client: MlflowClient, exp: str, **tags: str) -> str:
    """A RUNNING run with a fresh heartbeat, as a job leaves it."""
    beat = datetime.now(UTC)
    run = client.create_run(exp, start_time=int((beat - timedelta(seconds=30)).timestamp()
                                                 * 1000),
                            tags={keys.HEARTBEAT: beat.isoformat(timespec="seconds"), **tags})
    return run.info.run_id


def _start_ticks(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]


def test_a_run_whose_pid_is_gone_from_this_host_is_dead_now(tmp_path):
    """A fresh heartbeat does not keep a run alive whose process is gone from the host it
    names, or whose pid is now another process; a live process keeps it, and so does a
    heartbeat from another host."""
    cfg = _tracking_cfg(tmp_path / "mlruns")
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    here = socket.gethostname()
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        gone = _plant(client, exp, host=here, pid=str(done.pid))
        reused = _plant(client, exp, host=here, pid=str(sleeper.pid), pid_start="1")
        alive = _plant(client, exp, host=here, pid=str(sleeper.pid),
                       pid_start=_start_ticks(sleeper.pid))
        elsewhere = _plant(client, exp, host="node7", pid=str(done.pid))
        out = python("-m", "pipeline.tracking", "reap", "--tracking-uri", cfg.uri)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "2 lost run(s) marked FAILED" in out.stdout, out.stdout
        status = {r: client.get_run(r).info.status for r in (gone, reused, alive, elsewhere)}
        assert status == {gone: "FAILED", reused: "FAILED", alive: "RUNNING",
                          elsewhere: "RUNNING"}
        assert f"pid {done.pid} is gone from this host" in \
            client.get_run(gone).data.tags[keys.ERROR]
        assert f"pid {sleeper.pid} is now another process" in \
            client.get_run(reused).data.tags[keys.ERROR]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reap_run_id_ends_a_run_at_once_and_the_resume_refusal_says_so(tmp_path):
    """A sweep whose launcher was lost on another host: its heartbeat is fresh, so
    ``sweep.resume`` (given the id's first 8 characters) must wait; the refusal says how long,
    and that ``reap RUN_ID`` ends it at once. That command, run as printed, does."""
    cfg = _tracking_cfg(tmp_path / "mlruns")
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    command = ["-m", *TINY, "seed=0,1", f"paths.mlruns_dir={tmp_path}/mlruns",
               f"paths.data_dir={tmp_path}/data"]
    parent = _plant(client, exp, host="node7", pid="4242", **{
        keys.SWEEP_ROLE: keys.ROLE_PARENT, keys.SWEEP_OVERRIDES: json.dumps(command[1:]),
        keys.SWEEP_PARAMS: json.dumps(["seed"])})
    out = run_cli(*command, f"hydra.sweep.dir={tmp_path}/multirun",
                  f"sweep.resume={parent[:8]}", timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    [line] = [x for x in ours(out.stderr) if x.startswith("Error in config")]
    assert f"sweep.resume={parent}: that sweep is still running: host node7, pid 4242" in line
    assert "counts as lost" in line and "s from now" in line, line
    reap = line.split("`")[1]
    assert reap == f"python -m pipeline.tracking reap {parent}"
    done = python(*reap.split()[1:], "--tracking-uri", cfg.uri)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 lost run(s) marked FAILED" in done.stdout
    assert client.get_run(parent).info.status == "FAILED"
    assert len(client.search_runs([exp])) == 1  # nothing started


# --- run ids by prefix ----------------------------------------------------------------------


def _share_prefix(db: Path, runs: list[str], prefix: str) -> list[str]:
    """Give runs ids that start with ``prefix`` (MLflow's ids are random: two that share 8
    characters are made by renaming, in every table that names the run)."""
    new = [prefix + r[len(prefix):] for r in runs]
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if "run_uuid" in [c[1] for c in con.execute(f"PRAGMA table_info({t})")]]
        for old, renamed in zip(runs, new, strict=True):
            for table in tables:
                con.execute(f"UPDATE {table} SET run_uuid=? WHERE run_uuid=?", (renamed, old))
    return new


def test_every_command_takes_a_unique_prefix_and_refuses_an_ambiguous_one(tmp_path):
    run_cfg = validate(compose_raw(*store_overrides(tmp_path)[:3]))
    cfg = run_cfg.tracking
    tracker = Tracker(cfg, tmp_path / "out")
    with tracker.run("with a model", {"seed": 0}):
        tracker.log_keras_model(build_model(run_cfg.model, (4,), 3, seed=0),
                                np.zeros((2, 4), np.float32))
    unique = tracker.run_id
    exp = tracker.experiment_id
    client = MlflowClient(cfg.uri)
    twins = _share_prefix(store.sqlite_path(cfg.uri),
                          [client.create_run(exp).info.run_id for _ in range(2)], "abcdef01")
    # one resolver: a whole id, a unique prefix, then the refusals
    assert store.get_run(cfg.uri, unique[:8]).run_id == unique
    assert store.resolve_run_id(cfg.uri, unique.upper()) == unique
    weights = store.model_weights(f"runs:/{unique[:8]}/model", cfg.uri)
    assert [w.shape for w in weights] == [w.shape for w in
                                          build_model(run_cfg.model, (4,), 3, seed=0).get_weights()]
    with pytest.raises(store.AmbiguousRunId, match="at least its first 8"):
        store.get_run(cfg.uri, unique[:7])
    # the commands, as a user types them
    rerun = python("-m", "pipeline.rerun", "abcdef01", "--tracking-uri", cfg.uri)
    assert rerun.returncode == 2, rerun.stderr[-2000:]
    [line] = ours(rerun.stderr)
    assert "run id prefix 'abcdef01' is ambiguous" in line and "2 runs start with it" in line
    assert twins[0] in line and twins[1] in line
    reap = python("-m", "pipeline.tracking", "reap", "abcdef01", "--tracking-uri", cfg.uri)
    assert reap.returncode == 2 and "is ambiguous" in reap.stderr, reap.stderr[-2000:]
    assert client.get_run(twins[0]).info.status == "RUNNING"  # nothing was reaped
    assert resume.main(["abcdef01", "--tracking-uri", cfg.uri]) == 2
    assert compare.main(["--tracking-uri", cfg.uri, "--paired", "abcdef01", unique[:8]]) == 2
    assert compare.main(["--tracking-uri", cfg.uri, "--parent", "abcdef01"]) == 2
    assert compare.main(["--tracking-uri", cfg.uri, "--register", "m", "--run",
                         unique[:8]]) == 0
    assert client.get_model_version("m", "1").run_id == unique
    assert resume.main([unique[:8], "--tracking-uri", cfg.uri]) == 2  # FINISHED: said so


# --- reruns check their data first ----------------------------------------------------------


def _tabular_run(tmp_path: Path) -> tuple[Path, str, str]:
    data = tmp_path / "tables"
    made = python("scripts/make_fake_tabular.py", str(data), "--tasks", "40",
                  "--samples-per-task", "20", "--features", "4", "--layouts", "long")
    assert made.returncode == 0, made.stderr[-2000:]
    out = run_cli("experiment=tabular_maml", f"data.root={data}/long.csv",
                  "meta_train.iterations=3", "meta_train.meta_batch_size=2",
                  "meta_test.scratch.steps=2", "tracking.log_model=false",
                  *store_overrides(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("meta-learning").experiment_id])
    return data / "long.csv", uri, run.info.run_id


@pytest.mark.slow
def test_rerun_refuses_edited_or_deleted_source_tables_before_anything_runs(tmp_path):
    csv, uri, run_id = _tabular_run(tmp_path)
    client = MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    lines = csv.read_text().splitlines()
    cells = lines[1].split(",")
    cells[1] = str(float(cells[1]) + 1.0)
    csv.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    edited = python("-m", "pipeline.rerun", run_id[:8], "--tracking-uri", uri)
    assert edited.returncode == 2, edited.stdout + edited.stderr[-3000:]
    [line] = ours(edited.stderr)
    assert line.startswith(f"Refused: not an exact rerun of {run_id[:8]}: data check failed "
                           f"before anything ran:"), line
    assert "source files changed since the run" in line
    assert "DIFFERENT" not in edited.stdout
    csv.unlink()
    deleted = python("-m", "pipeline.rerun", run_id, "--tracking-uri", uri)
    assert deleted.returncode == 2, deleted.stdout + deleted.stderr[-3000:]
    [line] = ours(deleted.stderr)
    assert "data check failed before anything ran" in line and str(csv) in line, line
    assert len(client.search_runs([exp])) == 1  # no rerun was recorded


# --- presets ------------------------------------------------------------------------------


def _preset_commands() -> list[tuple[str, list[str]]]:
    """The shell commands the presets' comments show (``#   python ...``)."""
    found = []
    for preset in sorted((PROJECT_ROOT / "conf" / "experiment").glob("*.yaml")):
        for line in preset.read_text().splitlines():
            text = line.lstrip("#").strip()
            if line.startswith("#") and text.startswith("python "):
                found.append((preset.stem, text.split()[1:]))
    return found


def test_every_command_in_a_presets_comment_works(tmp_path):
    """Each command a preset's comment shows runs as written (its ``/tmp/...`` paths moved
    under this test's folder): scripts to completion, pipeline commands through validation
    and the checks of their surroundings (data files included)."""
    from pipeline.run import preflight

    commands = _preset_commands()
    assert commands, "no preset shows a command"
    for preset, args in commands:
        args = [a.replace("/tmp/", f"{tmp_path}/") for a in args]
        if args[0].endswith(".py"):
            out = python(*args, timeout=300)
            assert out.returncode == 0, f"{preset}: {' '.join(args)}: {out.stderr[-2000:]}"
            continue
        assert args[:2] == ["-m", "pipeline"], args
        cfg = validate(compose_raw(*args[2:], *store_overrides(tmp_path)[:3]))
        preflight.check(cfg)


def test_preset_run_names_follow_the_algorithm_run():
    """A preset's run name names the algorithm that runs, also when it is overridden
    (``experiment=tabular_maml algorithm=protonet`` is not named ``tabular_maml``)."""
    from omegaconf import OmegaConf

    checked = []
    for preset in sorted((PROJECT_ROOT / "conf" / "experiment").glob("*.yaml")):
        default = compose_raw(f"experiment={preset.stem}")
        name, algorithm = (OmegaConf.select(default, k) for k in ("tracking.run_name",
                                                                     "algorithm.name"))
        assert name is None or name.endswith(algorithm), (preset.stem, name)
        for other in ("protonet", "anil", "fomaml", "reptile", "maml"):
            if other == algorithm:
                continue
            try:
                raw = compose_raw(f"experiment={preset.stem}", f"algorithm={other}")
            except Exception:  # the preset sets keys this algorithm has not
                continue
            renamed = OmegaConf.select(raw, "tracking.run_name")
            assert renamed == name.removesuffix(algorithm) + other, (preset.stem, renamed)
            checked.append(preset.stem)
            break  # (sinusoid_reptile sets keys no other algorithm has: nothing to rename)
    assert "tabular_maml" in checked and len(checked) >= 15, checked


def test_the_joblib_launcher_is_composed_without_hydras_deprecation_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        compose_raw("hydra/launcher=joblib")
    assert not [w for w in caught if "validated against ConfigStore schema" in str(w.message)]


_TRACING_JOBS = """
from pipeline.run import runtime_env
runtime_env.import_tensorflow()
import tensorflow as tf

def step(x):
    return x * 2.0

for _ in range(8):  # one tf.function per job, as a warm sweep worker makes them
    tf.function(step)(tf.constant(1.0))
print("done", flush=True)
"""


def test_a_worker_making_each_jobs_steps_anew_prints_no_retracing_warning():
    out = python("-c", _TRACING_JOBS, timeout=300)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-2000:]
    assert "retracing" not in out.stderr, out.stderr[-2000:]
