"""Sweeps, comparison and exact reruns, on real Hydra multiruns and a real MLflow store/server."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT, data, sweep
from pipeline.analysis import compare
from pipeline.config import ConfigError
from pipeline.replay import logged as replay
from pipeline.replay import rerun
from pipeline.run.runner import execute
from pipeline.tracking import keys
from pipeline.tracking.store import get_run
from tests.conftest import TINY, free_port, run_cli, store_overrides

#: Smaller still than TINY: a multirun job is a whole pipeline run.
SWEEP_TINY = [*TINY, "meta_train.iterations=8", "tracking.log_model=false"]


def multirun(tmp: Path, *args: str, timeout: int = 600,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = run_cli("-m", *SWEEP_TINY, *store_overrides(tmp)[:3], f"hydra.sweep.dir={tmp}/multirun",
                  *args, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def store(tmp: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    return uri, MlflowClient(uri)


def sweep_runs(client: MlflowClient) -> tuple[object, list]:
    """The sweep's parent and its job runs (group runs left out)."""
    exp = client.get_experiment_by_name("meta-learning")
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "child"]
    return parent, children


def group_runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("meta-learning")
    return client.search_runs([exp.experiment_id], "tags.sweep_role = 'group'",
                              order_by=["attributes.run_name ASC"])


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, str, MlflowClient]:
    """One basic-launcher multirun of 4 jobs (2 inner rates x 2 seeds: 2 seed groups), shared by
    the structure/group/compare/paired/register/rerun tests."""
    tmp = tmp_path_factory.mktemp("grid")
    store_overrides(tmp, schema=True)  # the store's schema copied, not migrated in the sweep
    multirun(tmp, "seed=0,1", "algorithm.inner_lr=0.1,0.3", "tracking.log_model=true")
    return (tmp, *store(tmp))


def test_multirun_is_one_parent_with_groups_of_named_jobs(grid):
    tmp, _uri, client = grid
    parent, children = sweep_runs(client)
    groups = group_runs(client)
    pt = parent.data.tags
    assert parent.info.status == "FINISHED"
    assert json.loads(pt[keys.SWEEP_PARAMS]) == ["seed", "algorithm.inner_lr"]
    assert "seed=0,1" in json.loads(pt[keys.SWEEP_OVERRIDES])
    assert pt[keys.SWEEP_DIR] == str(tmp / "multirun") and pt[keys.SWEEP_ID]
    assert sorted(r.info.run_name for r in children) == [
        "maml seed=0 inner_lr=0.1", "maml seed=0 inner_lr=0.3", "maml seed=1 inner_lr=0.1",
        "maml seed=1 inner_lr=0.3"]
    # parent -> group (one per inner rate) -> its two seeds' jobs: nested in the UI tree
    assert [g.info.run_name for g in groups] == ["maml inner_lr=0.1 (2 seeds)",
                                                "maml inner_lr=0.3 (2 seeds)"]
    by_group = {g.info.run_id: g for g in groups}
    for g in groups:
        assert g.info.status == "FINISHED"
        assert g.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert json.loads(g.data.tags[keys.GROUP_BY]) == ["seed"]
    for child in children:
        assert child.info.status == "FINISHED"
        group = by_group[child.data.tags["mlflow.parentRunId"]]
        assert child.data.tags[keys.GROUP_RUN] == group.info.run_id
        assert group.data.params["algorithm.inner_lr"] == child.data.params["algorithm.inner_lr"]
        assert child.data.tags[keys.SWEEP_ID] == pt[keys.SWEEP_ID]
    assert sorted(r.data.tags[keys.SWEEP_JOB] for r in children) == ["0", "1", "2", "3"]
    # the comparison on the parent lists the groups: CSV, MLflow table, plot, best group tagged
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/comparison_table.json",
            "comparison/objective_vs_swept.png"} <= files
    csv = pd.read_csv(client.download_artifacts(parent.info.run_id, "comparison/comparison.csv",
                                                str(tmp)))
    assert sorted(csv["run_id"]) == sorted(by_group)
    assert list(csv.columns[:5]) == ["run_name", "run_id", "status", "algorithm.inner_lr",
                                     "seeds/n_seeds"]
    objective = "seeds/test/query_acc_after_mean_mean"
    best = max(groups, key=lambda g: g.data.metrics[objective])
    assert pt[keys.BEST_RUN] == best.info.run_id
    assert float(pt[keys.BEST_VALUE]) == best.data.metrics[objective]
    assert pt[keys.SWEEP_CHILDREN] == "4" and pt[keys.SWEEP_CHILDREN_FINISHED] == "4"
    assert json.loads(pt["mlflow.loggedArtifacts"])[0]["type"] == "table"


def test_group_runs_hold_across_seed_means_and_cis(grid):
    """Each group's ``seeds/<metric>_<stat>`` equal the mean, std and Student-t 95% CI of its
    jobs' values, computed here independently."""
    from scipy import stats

    _tmp, _uri, client = grid
    _parent, children = sweep_runs(client)
    for g in group_runs(client):
        jobs = [r for r in children if r.data.tags["mlflow.parentRunId"] == g.info.run_id]
        assert len(jobs) == 2 and g.data.metrics["seeds/n_seeds"] == 2
        for name in ("test/query_acc_after_mean", "gain/query_acc",
                     "scratch/query_acc_after_mean", "test/query_acc_before_mean"):
            v = np.array([r.data.metrics[name] for r in jobs])
            assert g.data.metrics[f"seeds/{name}_mean"] == pytest.approx(v.mean(), abs=1e-12)
            assert g.data.metrics[f"seeds/{name}_std"] == pytest.approx(v.std(ddof=1),
                                                                        abs=1e-12)
            half = stats.t.ppf(0.975, 1) * v.std(ddof=1) / np.sqrt(2)
            assert g.data.metrics[f"seeds/{name}_ci95"] == pytest.approx(half, abs=1e-12)
        assert "seed" not in g.data.params and "data.k_shot" in g.data.params
        files = {a.path for a in client.list_artifacts(g.info.run_id, "seeds")}
        assert files == {"seeds/seeds.csv", "seeds/seeds.png"}


def test_locations_are_tags_and_the_experiment_opens_as_model_training(grid):
    tmp, uri, client = grid
    _parent, children = sweep_runs(client)
    for r in children:
        assert not any(k.startswith("paths.") for k in r.data.params)
        assert "tracking.uri" not in r.data.params and "sweep.resume" not in r.data.params
        assert r.data.tags["paths.output_dir"] == f"{tmp}/out"
        assert r.data.tags["tracking.uri"] == uri
        assert "data.k_shot" in r.data.params and "sweep.group_by" in r.data.params
    exp = client.get_experiment_by_name("meta-learning")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_compare_command_table_matches_the_store(grid, tmp_path, capsys):
    _tmp, uri, client = grid
    parent, children = sweep_runs(client)
    groups = {g.info.run_id: g for g in group_runs(client)}
    csv, png = tmp_path / "c.csv", tmp_path / "c.png"
    assert compare.main(["--tracking-uri", uri, "--parent", parent.info.run_id, "--csv", str(csv),
                         "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(csv)
    assert len(df) == 2 and png.stat().st_size > 1000
    for row in df.itertuples(index=False):
        g = groups[row.run_id]
        for col in ("seeds/test/query_acc_after_mean_mean", "seeds/test/query_acc_after_mean_ci95",
                    "seeds/gain/query_acc_mean"):
            assert df.loc[df.run_id == row.run_id, col].item() == g.data.metrics[col], col
        mean = g.data.metrics["seeds/test/query_acc_after_mean_mean"]
        ci = g.data.metrics["seeds/test/query_acc_after_mean_ci95"]
        assert f"{mean:.4f} ± {ci:.4f}" in printed
    # a group's jobs, one row each
    some = next(iter(groups))
    assert compare.main(["--tracking-uri", uri, "--parent", some, "--csv", str(csv)]) == 0
    df = pd.read_csv(csv)
    by_id = {r.info.run_id: r for r in children}
    assert len(df) == 2 and all(by_id[i].data.tags["mlflow.parentRunId"] == some
                                for i in df["run_id"])
    for row in df.itertuples(index=False):
        run = by_id[row.run_id]
        assert row.run_name == run.info.run_name and str(row.seed) == run.data.params["seed"]
        assert df.loc[df.run_id == row.run_id, "test/query_acc_after_mean"].item() == \
            run.data.metrics["test/query_acc_after_mean"]
    # MLflow search syntax filters
    assert compare.main(["--tracking-uri", uri, "--filter",
                         "params.seed = '1' and params.`algorithm.inner_lr` = '0.1'",
                         "--csv", str(csv)]) == 0
    only = pd.read_csv(csv)
    assert list(only["run_name"]) == ["maml seed=1 inner_lr=0.1"]
    assert compare.main(["--tracking-uri", uri, "--filter", "params.nope = = 1"]) == 2


def test_compare_writes_files_only_when_asked_and_shows_missing_values_alike(grid, tmp_path,
                                                                          monkeypatch, capsys):
    _tmp, uri, client = grid
    parent, children = sweep_runs(client)
    monkeypatch.chdir(tmp_path)
    assert compare.main(["--tracking-uri", uri, "--parent", parent.info.run_id]) == 0
    assert list(tmp_path.iterdir()) == []  # nothing written unasked
    df = compare.table([get_run(uri, r.info.run_id) for r in children])
    df.loc[0, "scratch/query_acc_after_mean"] = float("nan")
    df.loc[1, "time/meta_train_s"] = float("nan")
    shown = compare.display(df)
    assert "nan" not in shown.lower() and " - " in f" {shown} "


def test_rerun_from_local_store_is_bit_identical(grid, capsys):
    _tmp, uri, client = grid
    _parent, children = sweep_runs(client)
    original = children[0]
    assert rerun.main([original.info.run_id, "--tracking-uri", uri]) == 0
    assert "IDENTICAL" in capsys.readouterr().out
    [new] = client.search_runs([original.info.experiment_id],
                               f"tags.rerun_of = '{original.info.run_id}'")
    assert new.data.tags[keys.RERUN_IDENTICAL] == "true"
    assert "mlflow.parentRunId" not in new.data.tags
    a = client.get_metric_history(original.info.run_id, "task/query_acc_after")
    b = client.get_metric_history(new.info.run_id, "task/query_acc_after")
    assert [(m.step, m.value) for m in a] == [(m.step, m.value) for m in b] and len(a) == 12


def test_rerun_refuses_a_tampered_data_file(grid, capsys):
    _tmp, uri, client = grid
    _parent, children = sweep_runs(client)
    run = children[1]
    path = Path(run.data.tags["data_file"])
    tasks = data.load(path)
    query_x = tasks.test.query_x.copy()
    query_x[0, 0, 0] += 1.0  # one value, re-saved with a self-consistent stored fingerprint
    data.save(path, tasks.train, data.TaskSplit(tasks.test.support_x, tasks.test.support_y,
                                                query_x, tasks.test.query_y),
              {"task_type": tasks.task_type, "num_outputs": tasks.num_outputs})
    before = len(client.search_runs([run.info.experiment_id]))
    assert rerun.main([run.info.run_id, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "Refused" in err and "does not match the expected fingerprint" in err
    assert len(client.search_runs([run.info.experiment_id])) == before  # nothing was run


def _history(client, run_id: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, "task/query_acc_after"),
                                    key=lambda m: m.step)]


def test_paired_groups_pair_per_seed_and_task(grid, capsys):
    """Groups pair job with job of the same seed, task with task; the numbers are recomputed
    here from the per-task metrics in the store, with scipy's tests."""
    from scipy import stats

    _tmp, uri, client = grid
    _parent, children = sweep_runs(client)
    a, b = (g.info.run_id for g in group_runs(client))  # inner_lr 0.1, 0.3
    diffs = []
    for seed in ("0", "1"):
        [ja] = [r for r in children if r.data.tags["mlflow.parentRunId"] == a
                and r.data.params["seed"] == seed]
        [jb] = [r for r in children if r.data.tags["mlflow.parentRunId"] == b
                and r.data.params["seed"] == seed]
        diffs += list(np.subtract(_history(client, ja.info.run_id),
                                  _history(client, jb.info.run_id)))
    assert compare.main(["--tracking-uri", uri, "--paired", a, b, "--log"]) == 0
    out = capsys.readouterr().out
    d = np.array(diffs)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    assert f"pairs: {d.size}" in out and d.size == 24
    assert f"mean difference: {d.mean():.4f} ± {half:.4f}" in out
    [logged] = client.search_runs([client.get_run(a).info.experiment_id],
                                  "tags.sweep_role = 'paired_comparison'")
    m = logged.data.metrics
    assert m["paired/query_acc_after_diff_mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert m["paired/query_acc_after_diff_ci95"] == pytest.approx(half, abs=1e-12)
    assert m["paired/t_pvalue"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue, rel=1e-9)
    if np.any(d != 0):
        assert m["paired/wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)
    assert [x.value for x in sorted(client.get_metric_history(
        logged.info.run_id, "paired/query_acc_after_diff"), key=lambda x: x.step)] == diffs
    assert logged.data.tags["paired_a"] == a and logged.info.status == "FINISHED"
    assert {f.path for f in client.list_artifacts(logged.info.run_id, "paired")} == {
        "paired/per_task_differences.csv", "paired/per_task_differences.png"}
    # the logged comparison is not a row of the experiment's comparison table
    assert logged.info.run_id not in {r.run_id for r in compare.store.search_runs(uri)}


def test_paired_refuses_runs_on_different_tasks(grid, capsys):
    _tmp, uri, client = grid
    _parent, children = sweep_runs(client)
    by_name = {r.info.run_name: r.info.run_id for r in children}
    # the same seed: the same tasks, paired task by task
    assert compare.main(["--tracking-uri", uri, "--paired", by_name["maml seed=0 inner_lr=0.1"],
                         by_name["maml seed=0 inner_lr=0.3"]]) == 0
    assert "pairs: 12" in capsys.readouterr().out
    # another seed generated other tasks: refused in one line, nothing logged
    assert compare.main(["--tracking-uri", uri, "--paired", by_name["maml seed=0 inner_lr=0.1"],
                         by_name["maml seed=1 inner_lr=0.3"], "--log"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Refused") and "different tasks" in err and "\n" not in err
    group = group_runs(client)[0].info.run_id
    assert compare.main(["--tracking-uri", uri, "--paired", group,
                         by_name["maml seed=0 inner_lr=0.3"]]) == 2
    assert "a group with a group" in capsys.readouterr().err


def test_register_the_best_groups_model_with_its_metrics(grid, capsys):
    _tmp, uri, client = grid
    parent, children = sweep_runs(client)
    best_group = parent.data.tags[keys.BEST_RUN]
    assert compare.main(["--tracking-uri", uri, "--register", "meta-learner",
                         "--parent", parent.info.run_id]) == 0
    assert "version 1" in capsys.readouterr().out
    [version] = client.search_model_versions("name = 'meta-learner'")
    jobs = [r for r in children if r.data.tags["mlflow.parentRunId"] == best_group]
    best_job = max(jobs, key=lambda r: r.data.metrics["test/query_acc_after_mean"])
    assert version.run_id == best_job.info.run_id
    group = client.get_run(best_group)
    mean = group.data.metrics["seeds/test/query_acc_after_mean_mean"]
    assert f"seeds/test/query_acc_after_mean_mean: {mean:.4f}" in version.description
    assert best_job.info.run_id in version.description
    assert version.tags["registered_from_run"] == best_group
    # an unknown run: refused in one line, nothing registered
    assert compare.main(["--tracking-uri", uri, "--register", "x", "--run",
                         "0" * 32]) == 2
    assert "Cannot register a model from run" in capsys.readouterr().err
    assert not client.search_model_versions("name = 'x'")


@pytest.mark.parametrize(("override", "message"), [
    ("sweep.resume=abc", "sweep.resume='abc' is not allowed: give a sweep's parent run id"),
    ("sweep.group_by=[nope]", "'nope' is not a config value"),
    (f"sweep.resume={'0' * 32}", "applies to sweeps only"),
])
def test_bad_sweep_keys_are_refused_in_one_line(tmp_path, override, message):
    out = run_cli(*TINY, *store_overrides(tmp_path), override, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.slow  # two sweep subprocesses (the fast suite: test_bad_sweep_keys_are_refused...)
def test_resume_of_an_unknown_or_other_sweep_is_refused(grid, tmp_path):
    _tmp, _uri, client = grid
    parent, _children = sweep_runs(client)
    base = ["-m", *SWEEP_TINY, *store_overrides(grid[0])[:3],
            f"hydra.sweep.dir={tmp_path}/multirun"]
    out = run_cli(*base, "seed=0,1", f"sweep.resume={'f' * 32}", timeout=120)
    assert out.returncode == 2 and "no sweep parent run with that id" in out.stderr, out.stderr
    out = run_cli(*base, "seed=0,1,2", f"sweep.resume={parent.info.run_id}", timeout=120)
    assert out.returncode == 2 and "resume with the same command" in out.stderr, out.stderr
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # untouched


def test_rerun_reports_differences():
    """The comparison itself: one changed per-task value is found and named."""
    from pipeline.tracking.store import RunRecord

    a = RunRecord("a", "a", "FINISHED", "0", 0, {}, {"test/x_mean": 0.5, "time/s": 1.0},
                  {"data_fingerprint": "f"})
    b = RunRecord("b", "b", "FINISHED", "0", 0, {}, {"test/x_mean": 0.5000001, "time/s": 2.0},
                  {"data_fingerprint": "f"})
    diff = rerun.compare_runs("unused", a, b)
    assert not diff.identical and diff.compared == 1 and "test/x_mean" in diff.differences[0]


def test_config_drift_is_detected_paths_ignored():
    logged = {"seed": 0, "algorithm": {"inner_lr": 0.1}, "paths": {"data_dir": "/a"}}
    now = {"seed": 0, "algorithm": {"inner_lr": 0.2}, "paths": {"data_dir": "/b"}}
    assert replay.config_drift(logged, now) == ["algorithm.inner_lr: logged 0.1, now 0.2"]


def test_swept_keys_and_child_names():
    keys = sweep.swept_keys(["seed=0,1", "data.k_shot=1", "algorithm=maml,scratch",
                             "optimizer.learning_rate=range(1,3)"], {"algorithm.inner_lr": "x"})
    assert keys == ["seed", "algorithm", "optimizer.learning_rate", "algorithm.inner_lr"]
    name = sweep.run_name("maml", ["data.k_shot=1", "seed=1", "algorithm=scratch"], keys)
    assert name == "maml seed=1 algorithm=scratch"


def test_objective_direction_must_fit_the_metric():
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.instance()
    old = hc.cfg
    try:
        hc.cfg = OmegaConf.create({"hydra": {"sweeper": {"direction": "maximize"}}})
        assert sweep.objective(0.7, higher_is_better=True) == 0.7
        with pytest.raises(ConfigError, match=r"hydra.sweeper.direction=minimize"):
            sweep.objective(0.3, higher_is_better=False)
    finally:
        hc.cfg = old


# --- a real MLflow server ----------------------------------------------------------------------


@pytest.mark.slow  # two runs against a server; the fast suite reruns from the local store
def test_rerun_from_a_server_is_bit_identical(mlflow_server, make_cfg, tmp_path, capsys):
    cfg, raw = make_cfg(*TINY, "tracking=server", f"tracking.uri={mlflow_server.uri}",
                        "tracking.log_model=false", "seed=3")
    overrides = [*store_overrides(tmp_path)[:2], *TINY, "tracking=server",
                 f"tracking.uri={mlflow_server.uri}", "tracking.log_model=false", "seed=3"]
    first = execute(cfg, raw, overrides)
    assert rerun.main([first.run_id, "--tracking-uri", mlflow_server.uri]) == 0
    assert "IDENTICAL" in capsys.readouterr().out
    client = MlflowClient(mlflow_server.uri)
    [new] = client.search_runs([client.get_run(first.run_id).info.experiment_id],
                               f"tags.rerun_of = '{first.run_id}'")
    got = {m.step: m.value for m in client.get_metric_history(new.info.run_id,
                                                              "task/query_acc_after")}
    np.testing.assert_array_equal([got[i] for i in range(12)], first.per_task["acc_after"])


# --- parallel launchers and Optuna (slow: several TensorFlow processes) -------------------------


@pytest.mark.slow
def test_joblib_multirun_with_2_workers_loses_no_run(tmp_path):
    multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
             "algorithm.inner_lr=0.1,0.3")
    _uri, client = store(tmp_path)
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hydra_launcher"] == "PipelineLauncher"
    assert sorted(int(r.data.tags[keys.SWEEP_JOB]) for r in children) == [0, 1, 2, 3]
    assert len({r.info.run_name for r in children}) == 4
    groups = {g.info.run_id: g for g in group_runs(client)}
    assert len(groups) == 2 and all(g.info.status == "FINISHED" and g.data.tags[
        "mlflow.parentRunId"] == parent.info.run_id for g in groups.values())
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] in groups
               for r in children)
    assert all(g.data.metrics["seeds/n_seeds"] == 2 for g in groups.values())
    assert parent.data.tags["sweep_children_finished"] == "4"


@pytest.mark.slow
def test_optuna_search_returns_the_objective_and_tags_the_best(tmp_path):
    """The search's objective is each trial's best validation accuracy (tests/test_search.py
    holds pruning, resuming, the re-evaluation and the no-barrier path)."""
    out = multirun(tmp_path, "hparams_search=maml_optuna", "hydra.sweeper.n_trials=4",
                   "data.num_val_tasks=10", "meta_train.validate_every=4",
                   "hydra.sweeper.reevaluate.top_k=0")
    _uri, client = store(tmp_path)
    parent, children = sweep_runs(client)
    assert len(children) == 4 and parent.info.status == "FINISHED"
    results = (tmp_path / "multirun" / "optimization_results.yaml").read_text()
    objectives = [max(m.value for m in client.get_metric_history(r.info.run_id,
                                                                  "val/query_acc_after_mean"))
                  for r in children]
    best_value = float(parent.data.tags["optuna_best_value"])
    assert best_value == pytest.approx(max(objectives)) and str(best_value)[:6] in results
    best = {k: float(v) for k, v in json.loads(parent.data.tags[keys.BEST_PARAMS]).items()}
    [best_child] = [r for r in children
                    if r.data.tags[keys.TRIAL_NUMBER] == parent.data.tags[keys.SEARCH_BEST_TRIAL]]
    assert float(best_child.data.params["algorithm.inner_lr"]) == pytest.approx(
        best["algorithm.inner_lr"])
    assert json.loads(parent.data.tags[keys.SWEEP_PARAMS]) == [
        "algorithm.inner_lr", "optimizer.learning_rate", "algorithm.inner_steps"]
    assert parent.data.tags[keys.SWEEP_SWEEPER] == "PipelineOptunaSweeper"
    assert "Best trial" in out.stderr + out.stdout


@pytest.mark.slow
def test_ray_launcher_against_a_local_ray_cluster(tmp_path):
    """A Ray head started here with ``ray start`` (as on a cluster); jobs are Ray tasks.

    ``--block`` keeps the head in one process of ours, so stopping it stops only this cluster.
    """
    if not os.environ.get("CI"):  # CI installs .[ray]: there the test runs, never skips
        pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason='pip install -e ".[ray]"')
    ray_bin = Path(sys.executable).parent / "ray"
    port = free_port()
    # the workers import this checkout's pipeline, whatever is installed
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONPATH": str(PROJECT_ROOT)}
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must be short
    with open(tmp_path / "ray.log", "w") as ray_log:
        head = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", f"--temp-dir={ray_tmp}"],
            stdout=ray_log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 180
            while "Ray runtime started" not in (tmp_path / "ray.log").read_text():
                assert head.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "ray.log").read_text()[-3000:]
                time.sleep(1)
            multirun(tmp_path, "hydra/launcher=ray",
                     f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                     "++hydra.launcher.ray.init.object_store_memory=null", "seed=0,1",
                     env=auth)
        finally:
            head.terminate()
            head.wait(timeout=120)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    _uri, client = store(tmp_path)
    parent, children = sweep_runs(client)
    assert parent.data.tags["hydra_launcher"] == "RayLauncher"
    assert sorted(r.info.run_name for r in children) == ["maml seed=0", "maml seed=1"]
    [group] = group_runs(client)
    assert group.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert all(r.info.status == "FINISHED" and
               r.data.tags["mlflow.parentRunId"] == group.info.run_id for r in children)


@pytest.mark.slow
def test_two_parallel_sweeps_on_one_fresh_store_lose_nothing(tmp_path):
    """8 jobs at once on one new SQLite store: two joblib sweeps (2 workers each) started
    together. Every run completes with all of its metrics and the store stays readable."""
    args = ["-m", *SWEEP_TINY, *store_overrides(tmp_path)[:3], "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", "seed=0,1,2,3"]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", *args,
                               f"hydra.sweep.dir={tmp_path}/multirun{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ))
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-4000:]
    _uri, client = store(tmp_path)
    exp = client.get_experiment_by_name("meta-learning")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    groups = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "group"]
    children = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "child"]
    assert len(parents) == 2 and len(groups) == 2 and len(children) == 8
    assert all(r.info.status == "FINISHED" for r in runs)
    for parent in parents:
        [group] = [g for g in groups if g.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        mine = [r for r in children if r.data.tags["mlflow.parentRunId"] == group.info.run_id]
        assert sorted(int(r.data.tags[keys.SWEEP_JOB]) for r in mine) == [0, 1, 2, 3]
        assert group.data.metrics["seeds/n_seeds"] == 4
    for child in children:  # every per-task metric of every job arrived
        history = client.get_metric_history(child.info.run_id, "task/query_acc_after")
        assert sorted(m.step for m in history) == list(range(12))
        assert "test/query_acc_after_mean" in child.data.metrics
