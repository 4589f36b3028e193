"""The team setup, for real: a PostgreSQL server (the Debian package) on 127.0.0.1, an ``mlflow
server`` on it, a Ray cluster from ``ray start --head`` with 2 CPUs, and an 8-job Ray sweep into
that server: nothing lost (8 FINISHED jobs, one parent, groups right), and a job rerun from the
server bit-identical; then an Optuna search on the cluster's actors (the project's launcher on
Ray) with its study in the same PostgreSQL. CI installs PostgreSQL and ``.[ray,server]``
(``.ci/run``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.tracking import keys
from tests.conftest import TINY, answers_health, free_port, missing

pytestmark = pytest.mark.slow


class Postgres:
    """A throwaway PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            missing("PostgreSQL (apt-get install postgresql)")
        self.bin = bins[-1].parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pg"))
        # As root, the server runs as the package's postgres user (it refuses to run as root).
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.uri = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"
        #: The Optuna studies' database, in the same cluster.
        self.optuna_uri = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/optuna"

    def _run(self, *args: str) -> None:
        out = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"

    def start(self) -> None:
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                  "--auth=trust")
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "log"), "-w",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")
        self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "-c", "CREATE DATABASE mlflow", "-c", "CREATE DATABASE optuna")

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
                        "-m", "fast", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def server(postgres: Postgres, tmp_path_factory) -> Iterator[str]:
    """``mlflow server`` with its store on PostgreSQL and its artifacts in a folder."""
    pytest.importorskip("psycopg2", reason='pip install -e ".[server]"') if not os.environ.get(
        "CI") else __import__("psycopg2")
    root = tmp_path_factory.mktemp("team-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2", "--backend-store-uri", postgres.uri,
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if not answers_health(url, proc, 240):
        proc.kill()
        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()}")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def test_ray_sweep_into_a_postgres_backed_server_loses_nothing(server, ray_head, tmp_path):
    address, env = ray_head
    client = MlflowClient(server)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", *TINY, "meta_train.iterations=8",
         "tracking.log_model=false", "tracking=server", f"tracking.uri={server}",
         "hydra/launcher=ray",
         f"hydra.launcher.ray.init.address={address}",
         "++hydra.launcher.ray.init.object_store_memory=null",
         f"hydra.sweep.dir={tmp_path}/multirun", f"paths.data_dir={tmp_path}/data",
         "seed=0,1,2,3", "algorithm.inner_lr=0.1,0.3"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, **env})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    exp = client.get_experiment_by_name("meta-learning")
    assert exp.tags[keys.EXPERIMENT_KIND] == keys.KIND_TRAINING
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    groups = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP]
    jobs = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_CHILD]
    assert parent.info.status == "FINISHED" and parent.data.tags[keys.SWEEP_LAUNCHER] == \
        "RayLauncher"
    assert len(jobs) == 8 and all(r.info.status == "FINISHED" for r in jobs)
    assert sorted(int(r.data.tags[keys.SWEEP_JOB]) for r in jobs) == list(range(8))
    assert len(groups) == 2
    for g in groups:
        assert g.info.status == "FINISHED"
        assert g.data.tags["mlflow.parentRunId"] == parent.info.run_id
        mine = [r for r in jobs if r.data.tags["mlflow.parentRunId"] == g.info.run_id]
        assert sorted(int(r.data.tags[keys.SWEEP_JOB]) for r in mine) == \
            json.loads(g.data.tags[keys.GROUP_JOBS])
        assert sorted(r.data.params["seed"] for r in mine) == ["0", "1", "2", "3"]
        assert {r.data.params["algorithm.inner_lr"] for r in mine} == \
            {g.data.params["algorithm.inner_lr"]}
        assert g.data.metrics["seeds/n_seeds"] == 4
    for job in jobs:  # every per-task value of every job reached the server
        history = client.get_metric_history(job.info.run_id, "task/query_acc_after")
        assert sorted(m.step for m in history) == list(range(12))
    # a job, rerun from what the server holds: bit-identical
    rerun = subprocess.run([sys.executable, "-m", "pipeline.rerun", jobs[0].info.run_id,
                            "--tracking-uri", server], cwd=PROJECT_ROOT, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0 and "IDENTICAL" in rerun.stdout, rerun.stdout + rerun.stderr


def test_a_search_on_the_ray_cluster_keeps_its_study_in_postgres(server, postgres, ray_head,
                                                                 tmp_path):
    """A small search into the server, its study in PostgreSQL (a database ``optuna`` beside
    MLflow's), its trials on the cluster's warm actors (``hydra/launcher=pipeline_ray``):
    exactly n_trials trials in the study, each trial's run tagged with its number and the
    study, the parent naming the study, and the winner's re-evaluation group."""
    import optuna

    address, env = ray_head
    experiment = "team-search"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", "hparams_search=maml_optuna", *TINY,
         "data.num_val_tasks=10", "meta_train.validate_every=10", "tracking.log_model=false",
         "tracking=server", f"tracking.uri={server}", f"tracking.experiment_name={experiment}",
         f"hydra.sweeper.storage={postgres.optuna_uri}", "hydra.sweeper.n_trials=3",
         "hydra.sweeper.reevaluate.top_k=1", "hydra.sweeper.reevaluate.seeds=2",
         "hydra/launcher=pipeline_ray", f"hydra.launcher.ray.init.address={address}",
         "++hydra.launcher.ray.init.object_store_memory=null",
         f"hydra.sweep.dir={tmp_path}/multirun", f"paths.data_dir={tmp_path}/data"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, **env})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    [summary] = optuna.get_all_study_summaries(postgres.optuna_uri)
    study = optuna.load_study(study_name=summary.study_name, storage=postgres.optuna_uri)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[keys.SWEEP_LAUNCHER] == "PipelineLauncher"
    assert parent.data.tags[keys.STUDY_NAME] == study.study_name
    assert parent.data.tags[keys.STUDY_STORAGE] == postgres.optuna_uri  # no password to mask
    trials = [r for r in runs if keys.TRIAL_NUMBER in r.data.tags]
    assert sorted(int(r.data.tags[keys.TRIAL_NUMBER]) for r in trials) == [0, 1, 2]
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.tags[keys.STUDY_NAME] == study.study_name
        assert r.data.tags[keys.TRIAL_STATE] == "COMPLETE"
    [group] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP]
    assert group.data.tags[keys.REEVALUATES] == str(study.best_trial.number)
    assert group.info.status == "FINISHED" and group.data.metrics["seeds/n_seeds"] == 2
    assert group.data.tags["mlflow.parentRunId"] == parent.info.run_id
