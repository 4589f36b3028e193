"""The project's launcher on Ray (``hydra/launcher=pipeline_ray``): warm actors whose later jobs
reuse compiled steps yet compute exactly what a cold ``python -m pipeline`` run computes; an
actor killed by SIGKILL fails only its job, with the reason in its MLflow run; actors die with
the launching process; an Optuna search on actors ends with exactly ``n_trials`` trials. Real
Ray (started by the launcher, or a ``ray start --head`` cluster), real processes and signals, a
real SQLite store (slow: several TensorFlow processes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.tracking import keys
from tests.test_launcher import JOB, _alive, _busy_workers, _jobs, _wait_for_training
from tests.test_search import JOB as SEARCH_JOB
from tests.test_search import runs_of, the_study

pytestmark = pytest.mark.slow

pytest.importorskip("ray", reason='pip install -e ".[ray]"')

#: Jobs 0 and 1 train long enough to be killed (~30 s); 2 and 3 are short.
LONG = 10000
GRID = [f"meta_train.iterations={LONG},20", "seed=0,1"]


def _command(tmp: Path, *extra: str, address: str | None = None) -> list[str]:
    ray = [f"hydra.launcher.ray.init.address={address}",
           "++hydra.launcher.ray.init.object_store_memory=null"] if address else \
        ["hydra.launcher.ray.init.num_cpus=2"]
    return [sys.executable, "-m", "pipeline", "-m", *JOB, f"paths.data_dir={tmp}/data",
            f"paths.mlruns_dir={tmp}/mlruns", f"hydra.sweep.dir={tmp}/multirun",
            "hydra/launcher=pipeline_ray", "hydra.launcher.n_jobs=2", *ray, *extra]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Ray folds log lines that differ only in numbers ("[repeated 29x across cluster]"), which
    # hides the progress lines the tests wait for.
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
            **(extra or {})}


def _metrics(client: MlflowClient, run_id: str, prefix: str) -> dict[str, list[float]]:
    """Every metric of the run under ``prefix``, its values in step order."""
    names = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefix)]
    return {n: [m.value for m in sorted(client.get_metric_history(run_id, n),
                                        key=lambda m: m.step)] for n in names}


def test_a_grid_on_ray_actors_is_warm_and_equals_a_cold_run(tmp_path):
    """4 jobs of one graph on 2 actors (Ray started by the launcher): all FINISHED; a job
    that follows another in the same actor reuses its compiled steps, the first in each traces
    them; and a warm job's per-task metrics are those of a cold single run, bit for bit."""
    out = subprocess.run(_command(tmp_path, "meta_train.iterations=20", "seed=0,1,2,3"),
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                         env=_env())
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    jobs = _jobs(tmp_path)
    assert {n: [r.info.status for r in runs] for n, runs in jobs.items()} == {
        n: ["FINISHED"] for n in range(4)}, text[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [parent] = client.search_runs(
        [jobs[0][0].info.experiment_id], f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_PARENT}'")
    assert parent.data.tags[keys.SWEEP_LAUNCHER] == "PipelineLauncher"
    order = sorted((runs[0] for runs in jobs.values()), key=lambda r: r.info.start_time)
    pids = {int(r.data.tags[keys.SWEEP_JOB]): r.data.tags[keys.PID] for r in order}
    assert len(set(pids.values())) == 2 and str(os.getpid()) not in pids.values(), pids
    seen: set[str] = set()
    reused = []
    for run in order:
        n = int(run.data.tags[keys.SWEEP_JOB])
        log = (tmp_path / "multirun" / str(n) / "__main__.log").read_text()
        warm = "(compiled steps reused)" in log
        assert warm == (pids[n] in seen), (n, pids, log[-2000:])
        assert warm != ("(compiled steps traced in this job)" in log)
        seen.add(pids[n])
        if warm:
            reused.append(n)
    assert len(reused) == 2, pids
    # a warm job against a cold single run of the same params (its own process, store)
    n = reused[-1]
    cold = subprocess.run(
        [sys.executable, "-m", "pipeline", *JOB, "meta_train.iterations=20", f"seed={n}",
         f"paths.data_dir={tmp_path}/data", f"paths.mlruns_dir={tmp_path}/cold",
         f"hydra.run.dir={tmp_path}/cold-out"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert cold.returncode == 0, cold.stderr[-3000:]
    cold_client = MlflowClient(f"sqlite:///{tmp_path}/cold/mlflow.db")
    [cold_run] = cold_client.search_runs(
        [cold_client.get_experiment_by_name("meta-learning").experiment_id])
    for prefix in (keys.TASK, keys.SCRATCH_TASK):
        warm_values = _metrics(client, jobs[n][0].info.run_id, prefix)
        assert warm_values and warm_values == _metrics(cold_client, cold_run.info.run_id, prefix)


def test_sigkill_of_an_actor_fails_only_its_job(tmp_path, ray_head):
    """On a ``ray start`` cluster: SIGKILL to the actor running job 0 (as the OOM killer does)
    fails that job alone, its run FAILED with the reason; a fresh actor takes the slot and the
    other 3 jobs finish; the sweep ends with one summary line, exit status 1, no traceback."""
    address, env = ray_head
    proc = subprocess.Popen(_command(tmp_path, *GRID, address=address), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(env))
    lines: list[str] = []
    _wait_for_training(proc, lines, jobs=1, iterations=LONG)
    deadline = time.monotonic() + 60
    while 0 not in _busy_workers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(_busy_workers(tmp_path)[0], signal.SIGKILL)
    rest, _ = proc.communicate(timeout=600)
    out = "".join(lines) + rest
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert re.search(r"1 of 4 jobs lost their worker \(job 0: worker died during the job "
                     r"\(Ray: .*often: killed by a signal or out of memory\)\)", out), out[-3000:]
    jobs = _jobs(tmp_path)
    assert {n: [r.info.status for r in runs] for n, runs in jobs.items()} == {
        0: ["FAILED"], 1: ["FINISHED"], 2: ["FINISHED"], 3: ["FINISHED"]}, out[-3000:]
    assert jobs[0][0].data.tags[keys.ERROR].startswith("worker died during the job (Ray: ")


def test_actors_die_with_their_launcher(tmp_path, ray_head):
    """``kill -9`` of the launching process (Ray's driver): the cluster lives on, the sweep's
    actors do not (Ray ends a driver's non-detached actors; no watchdog of ours in them)."""
    address, env = ray_head
    proc = subprocess.Popen(
        _command(tmp_path, "meta_train.iterations=100000,20", "seed=0,1", address=address),
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(env))
    deadline = time.monotonic() + 300
    while len(_busy_workers(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    actors = _busy_workers(tmp_path)
    assert sorted(actors) == [0, 1], actors
    proc.kill()
    proc.wait()
    killed_at = time.monotonic()
    while any(_alive(p) for p in actors.values()) and time.monotonic() - killed_at < 60:
        time.sleep(0.2)
    assert not any(_alive(p) for p in actors.values()), "orphan actors"
    print(f"actors gone {time.monotonic() - killed_at:.1f} s after the launcher's kill -9")


def test_an_optuna_search_on_ray_actors_ends_with_exactly_n_trials(tmp_path, ray_head):
    """``hparams_search`` through the launcher's ``submit`` on 2 actors: exactly n_trials
    trials, all COMPLETE, one run each, and the winner re-evaluated as a seed group."""
    address, env = ray_head
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", "hparams_search=maml_optuna", *SEARCH_JOB,
         f"paths.data_dir={tmp_path}/data", f"paths.mlruns_dir={tmp_path}/mlruns",
         f"paths.output_dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multirun",
         "hydra/launcher=pipeline_ray", f"hydra.launcher.ray.init.address={address}",
         "++hydra.launcher.ray.init.object_store_memory=null", "hydra.sweeper.n_trials=3",
         "meta_train.validate_every=10", "hydra.sweeper.reevaluate.top_k=1",
         "hydra.sweeper.reevaluate.seeds=2"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900, env=_env(env))
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    s = the_study(tmp_path)
    assert [t.number for t in s.trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in s.trials)
    _client, runs = runs_of(tmp_path)
    trial_runs = [r for r in runs if keys.TRIAL_NUMBER in r.data.tags]
    assert sorted(int(r.data.tags[keys.TRIAL_NUMBER]) for r in trial_runs) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" for r in trial_runs)
    [group] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP]
    assert group.info.status == "FINISHED" and group.data.metrics["seeds/n_seeds"] == 2
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    assert parent.data.tags[keys.SWEEP_LAUNCHER] == "PipelineLauncher"
    assert parent.data.tags[keys.STUDY_NAME] == s.study_name


def test_sigterm_to_the_launcher_stops_the_actors_jobs_with_checkpoints(tmp_path, ray_head):
    """SIGTERM to the launching process: no job starts any more, the busy actors get SIGTERM
    (from a task on their node: they are not the launcher's children) and their runs end
    KILLED with checkpoints, so ``sweep.resume`` continues them; exit status 143."""
    address, env = ray_head
    proc = subprocess.Popen(
        _command(tmp_path, "meta_train.iterations=100000,20", "seed=0,1", address=address),
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(env))
    logs = [tmp_path / "multirun" / str(n) / "__main__.log" for n in (0, 1)]
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None and not all(
            p.exists() and re.search(r"iteration \d+/100000", p.read_text()) for p in logs):
        time.sleep(0.5)  # until both long jobs are meta-training
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    jobs = _jobs(tmp_path)
    assert sorted(jobs) == [0, 1], out[-3000:]  # the short jobs never started
    assert [r.info.status for r in jobs[0] + jobs[1]] == ["KILLED", "KILLED"], out[-3000:]
    assert all(keys.CHECKPOINT_ITERATION in r.data.tags for r in jobs[0] + jobs[1])
