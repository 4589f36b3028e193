"""The project's launcher (``hydra/launcher=joblib``, hydra_plugins/pipeline_launcher): warm
workers whose later jobs reuse compiled steps yet compute exactly what a cold run computes; a
worker killed by SIGKILL fails only its job, and ``sweep.resume`` finishes the rest; workers die
with their launcher (real processes, signals and a real SQLite store)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from hydra_plugins.pipeline_launcher.launcher import death_reason
from pipeline import PROJECT_ROOT
from pipeline.run import warm
from pipeline.run.runner import execute
from pipeline.sweep.workers import JOBS_DIR
from pipeline.tracking import keys
from tests.conftest import TINY, store_overrides


@pytest.fixture
def warm_cache():
    warm.enable()
    yield
    warm.enable(False)
    warm.new_job()


def _run(make_cfg, *overrides: str):
    cfg, raw = make_cfg(*TINY, "meta_train.steps_per_call=7", *overrides)
    return execute(cfg, raw, [], track=False)


@pytest.mark.parametrize("algorithm", ["maml", pytest.param("metasgd", marks=pytest.mark.slow)])
def test_a_warm_workers_later_job_equals_a_cold_run(make_cfg, warm_cache, algorithm):
    """Job B, run after job A in a warm process (reusing A's compiled steps with B's inner
    rate, learning rate, seed and weights), gives bit for bit the per-task metrics, the scratch
    baseline and the meta-trained weights of B run cold."""
    b = [f"algorithm={algorithm}", "algorithm.inner_lr=0.3", "optimizer.learning_rate=0.003",
         "seed=5"]
    warm.enable(False)
    cold = _run(make_cfg, *b)
    warm.enable()
    warm.new_job()
    _run(make_cfg, f"algorithm={algorithm}", "algorithm.inner_lr=0.05", "seed=1")
    assert warm.reused == {algorithm: False, "scratch": False}
    warm.new_job()
    again = _run(make_cfg, *b)
    assert warm.reused == {algorithm: True, "scratch": True}  # no tracing in this job
    assert set(again.per_task) == set(cold.per_task)
    for name, values in cold.per_task.items():
        np.testing.assert_array_equal(again.per_task[name], values, err_msg=name)
    for name, values in cold.baseline.items():
        np.testing.assert_array_equal(again.baseline[name], values, err_msg=name)
    for a, c in zip(again.algorithm.model.get_weights(), cold.algorithm.model.get_weights(),
                    strict=True):  # the meta-trained weights
        np.testing.assert_array_equal(a, c)


@pytest.mark.slow  # the fast suite: a warm job equal to a cold one
def test_a_different_graph_is_not_reused(make_cfg, warm_cache):
    warm.new_job()
    _run(make_cfg, "algorithm.inner_steps=1")
    warm.new_job()
    _run(make_cfg, "algorithm.inner_steps=2")  # another graph: built and traced anew
    assert warm.reused == {"maml": False, "scratch": True}


def test_death_reasons_name_the_signal():
    assert death_reason(-9) == ("worker killed by signal 9 (often: out of memory)", 9)
    assert death_reason(-11) == ("worker killed by signal 11 (SIGSEGV)", 11)
    assert death_reason(3)[0] == "worker exited with status 3 during the job"


def test_ray_death_reasons_say_what_ray_knows():
    """A dead actor's reason, as its job's run records it (``hydra.launcher.backend=ray``)."""
    pytest.importorskip("ray")
    from ray import exceptions as rx

    from hydra_plugins.pipeline_launcher import _ray

    assert _ray.death_reason(rx.OutOfMemoryError("Task was killed due to the node running "
                                                 "low on memory.")) == \
        "worker killed by Ray's memory monitor (out of memory)"
    monitor = rx.ActorDiedError()
    monitor.error_msg = ("The actor is dead because its worker process has died. Worker exit "
                         "type: NODE_OUT_OF_MEMORY Worker exit detail: Task was killed due to "
                         "the node running low on memory.")
    assert _ray.death_reason(monitor) == "worker killed by Ray's memory monitor (out of memory)"
    sigkill = rx.ActorDiedError()
    sigkill.error_msg = ("The actor is dead because its worker process has died. Worker exit "
                         "type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with "
                         "a connection error code 2. End of file. Some common causes include: ...")
    assert _ray.death_reason(sigkill) == (
        "worker died during the job (Ray: Worker unexpectedly exits with a connection error code "
        "2. End of file; often: killed by a signal or out of memory)")


def test_an_unknown_backend_is_refused_in_one_line(capsys):
    from hydra_plugins.pipeline_launcher.launcher import PipelineLauncher

    with pytest.raises(SystemExit) as stop:
        PipelineLauncher(backend="dask")
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "hydra.launcher.backend=dask" in line and "loky or ray" in line


def test_the_plugin_imports_nothing_of_the_application():
    """The launcher reaches the pipeline only through the hooks the pipeline installs."""
    import ast

    plugin = PROJECT_ROOT / "hydra_plugins" / "pipeline_launcher"
    for path in plugin.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("pipeline", "tests")], \
                (path.name, names)


def test_the_sweep_and_both_backends_fill_the_launchers_protocols(tmp_path):
    from hydra_plugins.pipeline_launcher import LauncherHooks
    from hydra_plugins.pipeline_launcher._core import WORKER_SPAN, WorkerBackend
    from hydra_plugins.pipeline_launcher._loky import LokyBackend
    from pipeline.search.occupancy import SPAN_ATTR
    from pipeline.sweep.hooks import SweepHooks
    from pipeline.sweep.workers import STOP_FILE

    hooks = SweepHooks()
    assert isinstance(hooks, LauncherHooks) and not hooks.is_stopping(tmp_path)
    (tmp_path / STOP_FILE).write_text("15")  # what a stopped sweep's callback leaves
    assert hooks.is_stopping(tmp_path)
    assert WORKER_SPAN == SPAN_ATTR  # what the search reads is what the workers write
    members = [m for m in [*vars(WorkerBackend), *WorkerBackend.__annotations__]
               if not m.startswith("_")]
    backends = [LokyBackend]
    with contextlib.suppress(ImportError):
        from hydra_plugins.pipeline_launcher._ray import RayBackend

        backends.append(RayBackend)
    for backend in backends:
        assert all(hasattr(backend, m) for m in members), (backend, members)


def test_a_failed_job_ends_a_basic_sweep_quietly_after_the_one_line_summary(caplog):
    """Hydra's basic sweeper reads each result's ``return_value``: a failed one exits 1 without
    Hydra's "Error executing job with overrides" block; a stop still raises as a stop."""
    from concurrent.futures import Future

    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.pipeline_launcher._core import SweepFailed, Workers

    def done(status, value) -> Future:
        ret = JobReturn(overrides=["seed=0"], status=status)
        ret._return_value = value
        future: Future = Future()
        future.set_result(ret)
        return future

    workers = Workers(None, 1, init_args=tuple, failed=None, sweep_dir=lambda: None)
    ok, failed, stopped = workers.wait_all(
        [done(JobStatus.COMPLETED, 0.5), done(JobStatus.FAILED, ValueError("bad\nmore")),
         done(JobStatus.FAILED, KeyboardInterrupt("stopping"))], [4, 5, 6])
    assert ok.return_value == 0.5
    with pytest.raises(SweepFailed) as stop:
        _ = failed.return_value
    assert stop.value.code == 1 and stop.value.job_idx == 5
    with pytest.raises(KeyboardInterrupt):
        _ = stopped.return_value
    assert "1 of 3 jobs failed (job 5: ValueError: bad); 1 jobs completed." in caplog.text


# --- real sweeps (slow: several TensorFlow processes) ------------------------------------------

#: Jobs 0 and 1 train long enough to be killed; 2 and 3 are short.
GRID = ["meta_train.iterations=3000,20", "seed=0,1"]
JOB = ["data.num_train_tasks=40", "data.num_test_tasks=12", "model.hidden_units=[8]",
       "meta_train.meta_batch_size=4", "meta_train.log_every=50", "meta_train.steps_per_call=20",
       "meta_test.scratch.steps=5", "tracking.log_model=false"]


def _command(tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "-m", *JOB, *GRID, *store_overrides(tmp)[:2],
            f"hydra.sweep.dir={tmp}/multirun", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", *extra]


def _jobs(tmp: Path) -> dict[int, list]:
    """Job number -> its runs (oldest first), under the sweep's groups."""
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("meta-learning").experiment_id
    out: dict[int, list] = {}
    for r in sorted(client.search_runs([exp], "tags.sweep_role = 'child'"),
                    key=lambda r: r.info.start_time):
        out.setdefault(int(r.data.tags[keys.SWEEP_JOB]), []).append(r)
    return out


def _busy_workers(tmp: Path) -> dict[int, int]:
    """Job number -> pid of the worker running it (the sweep's job markers)."""
    out = {}
    for p in (tmp / "multirun" / JOBS_DIR).glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            out[int(p.read_text())] = int(p.name)
    return out


def _wait_for_training(proc: subprocess.Popen, lines: list[str], jobs: int,
                       iterations: int = 3000) -> None:
    """Read the sweep's output until ``jobs`` jobs are meta-training ``iterations``."""
    training: set[str] = set()
    for line in proc.stdout:
        lines.append(line)
        if re.search(rf"iteration \d+/{iterations}\b", line):
            training.add(line.split("]")[0])  # one timestamp per log line, any job
        if len(training) >= jobs * 2:
            return
    pytest.fail("".join(lines[-40:]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_sigkill_of_a_worker_fails_only_its_job_and_resume_finishes_the_rest(tmp_path):
    proc = subprocess.Popen(_command(tmp_path), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    _wait_for_training(proc, lines, jobs=1)
    deadline = time.monotonic() + 60
    while 0 not in _busy_workers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(_busy_workers(tmp_path)[0], signal.SIGKILL)  # as the OOM killer does
    rest, _ = proc.communicate(timeout=600)
    out = "".join(lines) + rest
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "1 of 4 jobs lost their worker (job 0: worker killed by signal 9 (often: out of " \
           "memory))" in out, out[-3000:]
    jobs = _jobs(tmp_path)
    assert {n: [r.info.status for r in runs] for n, runs in jobs.items()} == {
        0: ["FAILED"], 1: ["FINISHED"], 2: ["FINISHED"], 3: ["FINISHED"]}, out[-3000:]
    assert jobs[0][0].data.tags[keys.ERROR] == "worker killed by signal 9 (often: out of memory)"

    resumed = subprocess.run([*_command(tmp_path), "sweep.resume=last"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=600)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-3000:]
    assert "3 FINISHED jobs skipped, 0 resumed from checkpoints, 1 rerun, 0 not run before" \
        in text, text[-3000:]
    jobs = _jobs(tmp_path)
    for n in range(4):  # every job exactly once FINISHED
        assert [r.info.status for r in jobs[n]].count("FINISHED") == 1, (n, jobs[n])
    assert jobs[0][1].data.tags[keys.REPLACES] == jobs[0][0].info.run_id


@pytest.mark.slow
def test_workers_die_with_their_launcher(tmp_path):
    """``kill -9`` of the Hydra process: its workers stop their jobs (runs KILLED, with
    checkpoints) and exit within seconds, rather than live on as orphans."""
    proc = subprocess.Popen(_command(tmp_path, "meta_train.iterations=100000,20"),
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while len(_busy_workers(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = _busy_workers(tmp_path)
    assert sorted(workers) == [0, 1], workers
    for line in proc.stdout:  # both are meta-training
        lines.append(line)
        if len({m for m in re.findall(r"iteration \d+/100000", "".join(lines))}) >= 2:
            break
    proc.kill()
    proc.wait()
    killed_at = time.monotonic()
    while any(_alive(p) for p in workers.values()) and time.monotonic() - killed_at < 30:
        time.sleep(0.2)
    gone_after = time.monotonic() - killed_at
    assert not any(_alive(p) for p in workers.values()), "orphan workers"
    assert gone_after < 10, gone_after
    jobs = _jobs(tmp_path)
    assert [r.info.status for r in jobs[0] + jobs[1]] == ["KILLED", "KILLED"]
    assert all(keys.CHECKPOINT_ITERATION in r.data.tags for r in jobs[0] + jobs[1])


def test_only_local_workers_are_warned_about_oversubscribing_the_cores(caplog):
    """More loky workers than cores fight for this machine's cores; as many Ray actors of 1 CPU
    each are placed by Ray on a cluster's CPUs (the launcher lowers n_jobs to what it holds)."""
    from omegaconf import OmegaConf

    from pipeline.sweep.callback import _warn_oversubscription

    for backend, warned in (("loky", True), ("ray", False)):
        caplog.clear()
        _warn_oversubscription(OmegaConf.create({
            "hydra": {"launcher": {"n_jobs": 2 * (os.cpu_count() or 1) + 1, "backend": backend}},
            "runtime": {"intra_op_threads": 1}}))
        assert ("oversubscribes" in caplog.text) == warned, backend


class _Counted:
    """Hydra's real config loader, its compositions counted."""

    def __init__(self, loader):
        self.loader, self.composed = loader, []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.composed.append(list(sweep_overrides))
        return self.loader.load_sweep_config(master_config, sweep_overrides)


def test_a_job_the_sweeper_checked_is_not_composed_again_to_run_it():
    """Hydra's basic sweeper composes each job to check it; the launcher runs that config, not
    a second composition (0.3-0.4 s each); a job nobody checked is composed once and not kept;
    pickled to a worker, the loader is Hydra's own."""
    import pickle

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext, RunMode

    from hydra_plugins.pipeline_launcher._compose import ComposeOnce
    from hydra_plugins.pipeline_launcher._worker import job_config
    from pipeline.config import register_configs

    register_configs()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        hydra_loader = GlobalHydra.instance().config_loader()
        master = hydra_loader.load_configuration("config", [], RunMode.MULTIRUN)
        counted = _Counted(hydra_loader)
        context = HydraContext(config_loader=ComposeOnce.around(counted), callbacks=None)
        checked = context.config_loader.load_sweep_config(master, ["seed=3"])  # the sweeper
        ran = job_config(context, master, 7, ["seed=3"])
        assert ran is checked and counted.composed == [["seed=3"]]
        assert (ran.seed, ran.hydra.job.num) == (3, 7)
        unchecked = [job_config(context, master, n, ["seed=4"]) for n in (8, 9)]
        assert counted.composed == [["seed=3"], ["seed=4"], ["seed=4"]]
        assert unchecked[0] is not unchecked[1] and not context.config_loader._kept
        assert type(pickle.loads(pickle.dumps(context)).config_loader) is _Counted
