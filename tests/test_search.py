"""The Optuna search (``hydra/sweeper=optuna``): selection on validation, a persistent study in a
real SQLite storage, pruning, resuming a killed search, no batch barrier, the re-evaluation on
fresh seeds. The searches are real Hydra multiruns in subprocesses (slow); the pieces they are
made of are checked in-process."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline import PROJECT_ROOT
from pipeline.config import ConfigError
from pipeline.data import sinusoid, stream_rng, synthetic
from pipeline.search import objective, space, study
from pipeline.tracking import keys
from tests.conftest import TINY, compose_raw, run_cli, store_overrides

#: A search's job: tiny synthetic tasks, validation tasks of the family's own.
JOB = [*TINY, "data.num_val_tasks=10", "meta_train.validate_every=5", "tracking.log_model=false"]


def search_command(tmp: Path, *args: str, name: str = "multirun") -> list[str]:
    return [sys.executable, "-m", "pipeline", "-m", "hparams_search=maml_optuna", *JOB,
            *store_overrides(tmp)[:3], f"hydra.sweep.dir={tmp}/{name}", *args]


def search(tmp: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(search_command(tmp, *args), cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def runs_of(tmp: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("meta-learning")
    return client, client.search_runs([exp.experiment_id])


def the_study(tmp: Path) -> optuna.Study:
    [summary] = optuna.get_all_study_summaries(f"sqlite:///{tmp}/mlruns/optuna.db")
    return optuna.load_study(study_name=summary.study_name,
                             storage=f"sqlite:///{tmp}/mlruns/optuna.db")


# --- the pieces, in-process (fast) ----------------------------------------------------------


def test_hydra_search_space_syntax_maps_to_optuna_distributions():
    dists, fixed = space.parse(["a=tag(log, interval(0.01, 1.0))", "b=range(1, 3)",
                                "c=choice(sgd, adam)", "d=0.5", "e=interval(0.1, 0.2)",
                                "f=range(0, 1, 0.25)", "g=1,2"])
    assert dists == {"a": FloatDistribution(0.01, 1.0, log=True),
                     "b": IntDistribution(1, 3), "c": CategoricalDistribution(["sgd", "adam"]),
                     "e": FloatDistribution(0.1, 0.2),
                     "f": FloatDistribution(0.0, 1.0, step=0.25),
                     "g": CategoricalDistribution([1, 2])}
    assert fixed == {"d": "0.5"}
    assert space.overrides({"a": 0.1, "c": None}) == ["a=0.1", "c=null"]


def test_the_objective_is_the_best_or_last_validation_value():
    curve = {10: 0.5, 20: 0.7, 30: float("nan"), 40: 0.6}
    assert objective.value(curve, objective.BEST, True) == 0.7
    assert objective.value(curve, objective.LAST, True) == 0.6
    assert objective.value(curve, objective.BEST, False) == 0.5
    assert math.isnan(objective.value({}, objective.BEST, True))


def _search_cfg(metric: str = "val/query_acc_after_mean", every: int = 5, allow: bool = False):
    return OmegaConf.create({"hydra": {"sweeper": {"objective": metric,
                                                   "objective_value": "best"}},
                             "meta_train": {"validate_every": every},
                             "sweep": {"allow_test_objective": allow}})


def test_a_test_objective_or_one_without_validation_is_refused():
    objective.check(_search_cfg())
    for cfg, words in ((_search_cfg("test/query_acc_after_mean"),
                        "sweep.allow_test_objective=true"),
                       (_search_cfg(every=0), "meta_train.validate_every > 0"),
                       (_search_cfg("train/loss"), "val/ metric")):
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            objective.check(cfg)
    objective.check(_search_cfg("test/query_acc_after_mean", allow=True))


def test_the_study_lives_beside_the_mlflow_store_or_in_the_team_database(monkeypatch):
    assert study.storage_url(None, "sqlite:////x/mlruns/mlflow.db") == \
        "sqlite:////x/mlruns/optuna.db"
    assert study.storage_url("postgresql://u:p@h/db", "http://h:5000") == "postgresql://u:p@h/db"
    monkeypatch.delenv(study.STORAGE_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.storage"):
        study.storage_url(None, "http://h:5000")
    monkeypatch.setenv(study.STORAGE_ENV, "postgresql://u:p@team/optuna")
    assert study.storage_url(None, "http://h:5000") == "postgresql://u:p@team/optuna"
    assert study.without_password("postgresql+psycopg2://u:secret@h:5432/o") == \
        "postgresql+psycopg2://u:***@h:5432/o"


@pytest.mark.parametrize("family", [synthetic, sinusoid])
def test_synthetic_and_sinusoid_validation_tasks_leave_train_and_test_unchanged(family):
    base = dict(compose_raw(f"data={family.__name__.rsplit('.', 1)[-1]}").data)
    base |= {"num_train_tasks": 6, "num_test_tasks": 4}
    without = family.generate({**base, "num_val_tasks": 0}, stream_rng(0, "data"))
    made = family.generate({**base, "num_val_tasks": 5}, stream_rng(0, "data"))
    train, test, val = made.train, made.test, made.val
    assert without.val is None and val.num_tasks == 5
    for a, b in ((without.train, train), (without.test, test)):
        np.testing.assert_array_equal(a.support_x, b.support_x)
        np.testing.assert_array_equal(a.query_y, b.query_y)
    seen = {x.tobytes() for split in (train, test) for x in split.support_x}
    assert not seen & {x.tobytes() for x in val.support_x}  # disjoint from train and test


def test_a_test_metric_search_is_refused_in_one_line_before_anything_is_recorded(tmp_path):
    out = run_cli("hparams_search=maml_optuna", "hydra.sweeper.objective=test/query_acc_after_mean",
                  *store_overrides(tmp_path)[:3], f"hydra.sweep.dir={tmp_path}/multirun",
                  timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = [x for x in out.stderr.splitlines() if x.strip()]
    assert "test tasks" in line and "sweep.allow_test_objective=true" in line
    assert not (tmp_path / "mlruns").exists()


# --- real searches (slow) -------------------------------------------------------------------


@pytest.mark.slow
def test_a_bad_region_is_pruned_and_the_winner_is_reevaluated_on_fresh_seeds(tmp_path):
    """A learning rate of 1e-7 learns nothing: the median pruner stops those trials at a
    validation point. The best trial is then re-run on 2 fresh seeds as a seed group."""
    search(tmp_path, "hydra.sweeper.n_trials=6", "meta_train.iterations=30",
           "meta_train.validate_every=10",
           "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
           "~hydra.sweeper.sampler.n_startup_trials",
           "+hydra.sweeper.pruner._target_=optuna.pruners.MedianPruner",
           "+hydra.sweeper.pruner.n_startup_trials=2",
           "hydra.sweeper.params={algorithm.inner_lr: '0.3', "
           "optimizer.learning_rate: 'choice(0.01, 0.0000001)'}",
           "hydra.sweeper.reevaluate.top_k=1", "hydra.sweeper.reevaluate.seeds=2")
    client, runs = runs_of(tmp_path)
    s = the_study(tmp_path)
    states = {t.number: t.state.name for t in s.trials}
    assert len(states) == 6 and "FAIL" not in states.values()
    pruned = [t for t in s.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["optimizer.learning_rate"] < 1e-6 for t in pruned)
    trial_runs = {int(r.data.tags[keys.TRIAL_NUMBER]): r for r in runs
                  if keys.TRIAL_NUMBER in r.data.tags}
    assert sorted(trial_runs) == list(range(6))
    for t in pruned:
        run = trial_runs[t.number]
        step = int(run.data.tags[keys.PRUNED_STEP])
        assert run.info.status == "FINISHED" and run.data.tags[keys.TRIAL_STATE] == "PRUNED"
        # not a failure at a glance: FINISHED (not the red cross of FAILED and KILLED), named
        # as pruned, no error tag, a description saying why it stopped, not ranked
        assert run.info.run_name.startswith(keys.PRUNED_NAME_PREFIX)
        assert keys.ERROR not in run.data.tags and "not a failure" in run.data.tags[keys.NOTE]
        assert keys.TRIAL_OBJECTIVE not in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "val/query_acc_after_mean")
        assert max(m.step for m in history) == step < 30  # its curve, up to the pruning step
        assert "test/query_acc_after_mean" not in run.data.metrics  # never touched the test
    for number, run in trial_runs.items():
        assert run.data.tags[keys.TRIAL_STATE] == states[number]
    resumed = subprocess.run([sys.executable, "-m", "pipeline.resume",
                              trial_runs[pruned[0].number].info.run_id, "--tracking-uri",
                              f"sqlite:///{tmp_path}/mlruns/mlflow.db"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 2 and "pruned" in resumed.stderr, resumed.stderr[-2000:]
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[keys.STUDY_NAME] == s.study_name
    assert parent.data.metrics[keys.SEARCH_TRIALS[1]] == len(pruned)
    # the re-evaluation: the best trial on 2 fresh seeds, a group with across-seed CIs
    [group] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "group"]
    assert group.data.tags[keys.REEVALUATES] == str(s.best_trial.number)
    assert group.data.metrics["seeds/n_seeds"] == 2
    assert "seeds/test/query_acc_after_mean_ci95" in group.data.metrics
    members = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == group.info.run_id]
    assert sorted(r.data.params["seed"] for r in members) == ["1", "2"]
    assert parent.data.metrics[keys.SEARCH_TEST_MEAN] == pytest.approx(
        group.data.metrics["seeds/test/query_acc_after_mean_mean"])
    assert parent.data.metrics[keys.SEARCH_VAL_BEST] == pytest.approx(s.best_value)
    assert parent.data.tags[keys.SEARCH_BEST_GROUP] == group.info.run_id
    files = {a.path for a in client.list_artifacts(parent.info.run_id, keys.SEARCH_DIR)}
    assert {f"{keys.SEARCH_DIR}/{n}" for n in ("optimization_history.png",
            "intermediate_values.png", "trials.csv", "reevaluation.csv", "trials.json")} <= files


@pytest.mark.slow
def test_a_search_killed_midway_and_resumed_ends_with_exactly_n_trials(tmp_path):
    """SIGTERM to the Hydra process while trial 2 meta-trains; ``sweep.resume=last`` runs that
    trial again under its number and asks new ones until the study holds n_trials."""
    args = ["hydra.sweeper.n_trials=5", "meta_train.iterations=2000", "meta_train.steps_per_call=5",
            "meta_train.validate_every=100", "hydra.sweeper.reevaluate.top_k=0"]
    proc = subprocess.Popen(search_command(tmp_path, *args), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if not (tmp_path / "mlruns" / "optuna.db").exists():  # the search creates it first
            continue
        try:  # trial 2 has reported its first validation: it is meta-training
            trials = the_study(tmp_path).trials
        except Exception:
            continue
        if len(trials) >= 3 and trials[2].intermediate_values:
            break
    assert proc.poll() is None, ("the search ended before it could be stopped: "
                                 + proc.communicate()[0][-3000:])
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-2000:]
    s = the_study(tmp_path)
    assert len(s.trials) == 3 and s.trials[2].state.name == "RUNNING"

    search(tmp_path, *args, "sweep.resume=last")
    s = the_study(tmp_path)
    assert [t.number for t in s.trials] == [0, 1, 2, 3, 4]
    assert all(t.state.name == "COMPLETE" for t in s.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in s.trials}) == 5
    _client, runs = runs_of(tmp_path)
    standing = [r for r in runs if keys.TRIAL_NUMBER in r.data.tags
                and keys.REPLACED_BY not in r.data.tags]
    assert sorted(int(r.data.tags[keys.TRIAL_NUMBER]) for r in standing) == [0, 1, 2, 3, 4]
    assert all(r.info.status == "FINISHED" for r in standing)
    [parents] = [[r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


@pytest.mark.slow
def test_trials_start_without_a_batch_barrier(tmp_path):
    """Through the project's launcher (2 warm workers, ``submit``), a new trial starts as soon
    as one ends: some trial starts while a trial two numbers before it still runs, which
    batches of 2 never allow. Long trials (2,000 iterations) and short ones (10) alternate
    (RandomSampler, seed 0: long, short, long, long, short, short), so the gap is seconds."""
    search(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           "hydra.sweeper.n_trials=6", "meta_train.validate_every=10",
           "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
           "~hydra.sweeper.sampler.n_startup_trials",
           "hydra.sweeper.params=null", "algorithm.inner_lr=0.3",
           "meta_train.iterations=choice(10, 2000)",
           "meta_train.steps_per_call=10", "hydra.sweeper.reevaluate.top_k=1",
           "hydra.sweeper.reevaluate.seeds=2")
    _client, runs = runs_of(tmp_path)
    trials = {int(r.data.tags[keys.TRIAL_NUMBER]): r.info for r in runs
              if keys.TRIAL_NUMBER in r.data.tags}
    assert sorted(trials) == list(range(6))
    overlaps = [(i, j) for j in trials for i in trials
                if i <= j - 2 and trials[j].start_time < trials[i].end_time]
    assert overlaps, {n: (t.start_time, t.end_time) for n, t in trials.items()}
    [group] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "group"]
    assert group.info.status == "FINISHED" and group.data.metrics["seeds/n_seeds"] == 2
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    assert 0 < parent.data.metrics[keys.SEARCH_WORKER_UTILISATION] <= 1


def test_worker_utilisation_counts_the_workers_time_in_trials_over_the_search():
    """Time in trials over workers x wall, from the first submission to the last trial's end:
    the worker's reported span where there is one (the wait for a free worker is not busy
    time), else submission to result."""
    from types import SimpleNamespace

    from pipeline.search.occupancy import SPAN_ATTR, Occupancy

    o = Occupancy(2)
    first = o.submitted()
    o.started = 100.0  # trials 0 and 1 submitted at 100; worker 1 ready only at 104
    o.ended(SimpleNamespace(**{SPAN_ATTR: (100.5, 110.0)}), 100.0)
    o.ended(SimpleNamespace(**{SPAN_ATTR: (104.0, 112.0)}), 100.0)
    o.ended(SimpleNamespace(**{SPAN_ATTR: (110.0, 120.0)}), 110.0)
    assert o.wall == 20.0 and o.busy == 9.5 + 8.0 + 10.0
    assert o.utilisation() == pytest.approx(27.5 / 40)
    late = Occupancy(1)
    late.ended(object(), first - 1.0)  # no span from the launcher: submission to result
    assert late.spans[0][0] == first - 1.0 and late.spans[0][1] >= first
    assert Occupancy(2).utilisation() is None


@pytest.mark.parametrize("pruner", [
    {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2},
    {"_target_": "optuna.pruners.SuccessiveHalvingPruner", "min_resource": 10},
    {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 10, "max_resource": 40}])
def test_a_jobs_reporter_is_stopped_by_each_pruner(tmp_path, pruner):
    """The job side of pruning, on a real SQLite study: good trials complete, a bad one is
    stopped by median, successive halving and Hyperband alike, with its step recorded."""
    from pipeline.errors import TrialPruned
    from pipeline.search.trial import Reporter, TrialJob

    url = f"sqlite:///{tmp_path}/optuna.db"
    s = study.open_study(url, "s", "maximize", optuna.samplers.RandomSampler(seed=0),
                         study.pruner_of(pruner), create=True)
    metric = "val/query_acc_after_mean"

    def job(number: int) -> Reporter:
        return Reporter(TrialJob(number, "s", url, metric, objective.BEST, pruner))

    for _ in range(8):
        t = s.ask({"x": FloatDistribution(0, 1)})
        report = job(t.number)
        for step in (10, 20, 30, 40):
            report(step, {metric: 0.5 + step / 100})
        s.tell(t.number, 0.9)
    pruned = 0
    for _ in range(4):  # Hyperband puts a trial in one of its brackets: try a few
        t = s.ask({"x": FloatDistribution(0, 1)})
        report = job(t.number)
        try:
            for step in (10, 20, 30, 40):
                report(step, {metric: 0.1})
        except TrialPruned as e:
            step = int(e.run_tags[keys.PRUNED_STEP])
            assert e.run_tags[keys.TRIAL_STATE] == keys.STATE_PRUNED and step < 40
            assert s.trials[t.number].user_attrs[keys.PRUNED_STEP] == step
            s.tell(t.number, state=optuna.trial.TrialState.PRUNED)
            pruned += 1
        else:
            s.tell(t.number, 0.1)
    assert pruned >= 1


def test_a_pruned_trials_run_ends_finished_named_pruned_without_an_error(tmp_path):
    """The run of a trial its (real) pruner stops, through the real tracker and SQLite stores:
    FINISHED (MLflow draws FAILED and KILLED with one red cross), named ``pruned: ...``, tagged
    PRUNED with its step and a description, no ``error`` tag and no ``search/objective``. It
    reads as pruned in a comparison (never a best row), a resumed sweep skips it, and resume and
    rerun refuse it saying it was pruned."""
    import shutil

    from pipeline.analysis import results
    from pipeline.config import TrackingConfig
    from pipeline.errors import TrialPruned
    from pipeline.replay import rerun, resume
    from pipeline.replay.logged import Refused
    from pipeline.search.trial import Reporter, TrialJob
    from pipeline.sweep import SKIP
    from pipeline.sweep.plan import action
    from pipeline.tracking import store
    from pipeline.tracking.run import Tracker
    from tests.conftest import empty_store_schema

    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store_schema(), tmp_path / "mlruns" / "mlflow.db")
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db",
                         artifact_location=str(tmp_path / "mlruns" / "artifacts"))
    url, metric = f"sqlite:///{tmp_path}/optuna.db", "val/query_acc_after_mean"
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    s = study.open_study(url, "s", "maximize", None, study.pruner_of(pruner), create=True)
    done = s.ask({"x": FloatDistribution(0, 1)})  # a complete trial before
    done.report(0.9, 10)
    s.tell(done, 0.9)
    t = s.ask({"x": FloatDistribution(0, 1)})
    report = Reporter(TrialJob(t.number, "s", url, metric, objective.BEST, pruner))
    tracker = Tracker(cfg, tmp_path / "out")
    with pytest.raises(TrialPruned), tracker.run("maml lr=1e-07", {keys.TRIAL_STATE: "RUNNING"}):
        tracker.log_metrics({metric: [0.2]}, steps=[10])
        report(10, {metric: 0.2})
    run = store.get_run(cfg.uri, tracker.run_id)
    assert run.status == keys.FINISHED and run.name == "pruned: maml lr=1e-07"
    assert run.tags[keys.TRIAL_STATE] == keys.STATE_PRUNED and run.tags[keys.PRUNED_STEP] == "10"
    assert keys.ERROR not in run.tags and keys.TRIAL_OBJECTIVE not in run.metrics
    assert "after 10 meta-iterations" in run.tags[keys.NOTE] and \
        "not a failure" in run.tags[keys.NOTE]
    row = results.table([run]).iloc[0]
    assert row["status"] == keys.STATE_PRUNED and row["run_name"].startswith("pruned: ")
    assert action(cfg.uri, run) == SKIP
    for refuse in (rerun.rerun, resume.resume):
        with pytest.raises(Refused, match="pruner stopped after 10 meta-iterations"):
            refuse(run.run_id, cfg.uri)
