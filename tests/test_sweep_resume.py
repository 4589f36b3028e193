"""A joblib sweep stopped by SIGTERM in the middle, then resumed with ``sweep.resume``: every
job ends exactly once FINISHED, with per-task metrics bit-identical to an uninterrupted sweep of
the same command (real subprocesses, a real SQLite store)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.tracking import keys
from tests.conftest import store_overrides

pytestmark = pytest.mark.slow

#: Seed 1 first: its two jobs fail (its data file is corrupted for the interrupted sweep), then
#: seed 0: a short job that finishes and a long one stopped during meta-training. Groups: one
#: per meta_train.iterations, two seeds each.
GRID = ["seed=1,0", "meta_train.iterations=20,40000"]
JOB = ["data.num_train_tasks=40", "data.num_test_tasks=12", "model.hidden_units=[8]",
       "meta_train.meta_batch_size=4", "meta_train.log_every=50", "meta_train.steps_per_call=20",
       "meta_test.scratch.steps=5", "tracking.log_model=false"]


def _command(tmp: Path, store: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "-m", *JOB, *GRID, *store_overrides(store)[:2],
            f"hydra.sweep.dir={tmp}/{name}", *extra]


def _per_job(client: MlflowClient, exp_id: str, parent_id: str) -> dict[int, list]:
    """Job number -> every run of that job under the parent's groups."""
    groups = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    out: dict[int, list] = {}
    for g in groups:
        for r in client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{g.info.run_id}'"):
            out.setdefault(int(r.data.tags[keys.SWEEP_JOB]), []).append(r)
    return out


def _record(client: MlflowClient, run_id: str) -> dict[str, list]:
    names = [k for k in client.get_run(run_id).data.metrics
             if k.startswith(("train/", "task/", "scratch_task/"))]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in names}


def test_sigterm_a_joblib_sweep_then_resume_it(tmp_path):
    reference_store, store = tmp_path / "reference", tmp_path / "interrupted"
    # the uninterrupted sweep, same command (basic launcher: launchers do not change results)
    ref = subprocess.run(_command(tmp_path, reference_store, "m-ref"), cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]

    # seed 1's data file is corrupt: its jobs end FAILED (DataError), the file is put back later
    store.mkdir()
    ref_client = MlflowClient(f"sqlite:///{reference_store}/mlruns/mlflow.db")
    ref_exp = ref_client.get_experiment_by_name("meta-learning").experiment_id
    [ref_parent] = ref_client.search_runs([ref_exp], "tags.sweep_role = 'parent'")
    reference = {n: runs[0] for n, runs in
                 _per_job(ref_client, ref_exp, ref_parent.info.run_id).items()}
    assert sorted(reference) == [0, 1, 2, 3] and all(
        r.info.status == "FINISHED" for r in reference.values())
    seed1_file = Path(reference[0].data.tags[keys.DATA_FILE])
    good = seed1_file.read_bytes()
    (store / "data").mkdir()
    for p in (reference_store / "data").iterdir():
        (store / "data" / p.name).write_bytes(p.read_bytes())
    corrupt = store / "data" / seed1_file.name
    corrupt.write_bytes(b"not a data file")

    args = _command(tmp_path, store, "m1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    sweep = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lines, job2_done = [], False
    for line in sweep.stdout:
        lines.append(line)
        job2_done = job2_done or "MLflow run" in line  # the short job of seed 0 ended
        at = re.search(r"iteration (\d+)/40000", line)
        if job2_done and at and int(at.group(1)) <= 32000:  # job 3 is training
            break
    else:
        pytest.fail("".join(lines[-40:]))
    sweep.send_signal(signal.SIGTERM)
    rest, _ = sweep.communicate(timeout=300)
    out = "".join(lines) + rest
    assert sweep.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "sweep.resume=" in out

    uri = f"sqlite:///{store}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("meta-learning").experiment_id
    [parent] = client.search_runs([exp], "tags.sweep_role = 'parent'")
    assert parent.info.status == "KILLED" and "sweep.resume=" in parent.data.tags["error"]
    before = {n: [r.info.status for r in runs] for n, runs in
              _per_job(client, exp, parent.info.run_id).items()}
    assert before == {0: ["FAILED"], 1: ["FAILED"], 2: ["FINISHED"], 3: ["KILLED"]}, \
        (before, out[-3000:])  # nothing left RUNNING
    [killed] = _per_job(client, exp, parent.info.run_id)[3]
    stopped_at = int(killed.data.tags["checkpoint_iteration"])
    assert 0 < stopped_at < 40000

    # put seed 1's data back; the same command with sweep.resume=last finishes the sweep
    corrupt.write_bytes(good)
    resumed = subprocess.run([*args, "sweep.resume=last"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-3000:]
    assert ("1 FINISHED jobs skipped, 1 resumed from checkpoints, 2 rerun, 0 not run before"
            in text), text[-3000:]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    assert (parent.data.tags["sweep_resume_skipped"], parent.data.tags["sweep_resume_resumed"],
            parent.data.tags["sweep_resume_rerun"]) == ("1", "1", "2")
    jobs = _per_job(client, exp, parent.info.run_id)
    for n in range(4):  # every job exactly once FINISHED
        finished = [r for r in jobs[n] if r.info.status == "FINISHED"]
        assert len(finished) == 1, (n, [r.info.status for r in jobs[n]])
        assert _record(client, finished[0].info.run_id) == \
            _record(ref_client, reference[n].info.run_id), f"job {n} differs"
    # the KILLED run was continued in place; the FAILED ones are kept, linked to their reruns
    assert client.get_run(killed.info.run_id).data.tags["resumed_at_iteration"] == str(stopped_at)
    for n in (0, 1):
        failed = next(r for r in jobs[n] if r.info.status == "FAILED")
        new = next(r for r in jobs[n] if r.info.status == "FINISHED")
        assert new.data.tags[keys.REPLACES] == failed.info.run_id
        assert client.get_run(failed.info.run_id).data.tags[keys.REPLACED_BY] == new.info.run_id
        assert "DataError" in failed.data.tags["error"]
    for g in client.search_runs([exp], "tags.sweep_role = 'group'"):
        assert g.info.status == "FINISHED" and g.data.metrics["seeds/n_seeds"] == 2
