"""The search's two stores tell one story: a new search gets a new study, a resumed one the
same search or a one-line refusal, a failed trial is told to the study at once without ending
the search, and every trial's run carries what the study was told. Refusals come before a
parent run or a study exist. Real Hydra multiruns in subprocesses, real SQLite stores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from pipeline import PROJECT_ROOT
from pipeline.search import study as search_study
from pipeline.search.driver import MIN_ENDED_FOR_RATE, new_study_name
from pipeline.tracking import keys
from tests.test_search import runs_of, search, search_command

#: Short trials: 10 meta-iterations, a validation every 5.
SHORT = ["meta_train.iterations=10", "meta_train.validate_every=5",
         "hydra.sweeper.reevaluate.top_k=0"]
STUDY_NAME = re.compile(r"^maml_step_sizes-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d(-\d+)?$")


def studies(tmp: Path) -> list[optuna.Study]:
    url = f"sqlite:///{tmp}/mlruns/optuna.db"
    return [optuna.load_study(study_name=s.study_name, storage=url)
            for s in optuna.get_all_study_summaries(url)]


def signal_a_training_worker(tmp: Path, proc: subprocess.Popen, sig: int) -> int | None:
    """Send ``sig`` to a busy worker of the search ``proc`` once some trial has reported a
    validation (meta-training is under way); the worker's pid, or None if the search ended or
    400 s passed first."""
    jobs = tmp / "multirun" / ".running-jobs"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        for marker in jobs.glob("[0-9]*") if jobs.is_dir() else []:
            try:
                trials = studies(tmp)[0].trials
            except Exception:
                break
            if any(t.intermediate_values for t in trials):
                os.kill(int(marker.name), sig)
                return int(marker.name)
    return None


def refused(tmp: Path, *args: str, timeout: int = 120) -> str:
    """Run a search that must be refused: exit 2, one line, nothing recorded."""
    out = subprocess.run(search_command(tmp, *args), cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error in config:"), out.stderr[-3000:]
    return lines[0]


def test_a_new_study_is_named_by_its_date_and_time():
    at = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    assert new_study_name("maml steps", at) == "maml-steps-2026-03-04-05-06-07"
    assert new_study_name(None, at) == "search-2026-03-04-05-06-07"


def test_a_direction_contradicting_the_objective_is_refused_before_anything(tmp_path):
    line = refused(tmp_path, "hydra.sweeper.direction=minimize")
    assert "hydra.sweeper.direction=maximize" in line and "higher" in line
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("args", "words"), [
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    (["hydra.sweeper.n_trials=-1"], "n_trials >= 1"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler",
      "~hydra.sweeper.sampler.n_startup_trials"], "hydra.sweeper.sampler._target_"),
    (["+hydra.sweeper.pruner._target_=optuna.pruners.MedianPrunr"],
     "hydra.sweeper.pruner._target_"),
    (["hydra.sweeper.storage=postgresql+psycopg2://optuna:SECRET@127.0.0.1:9/optuna"],
     "cannot be reached"),
    (["hydra.sweeper.storage=sqlite:////proc/no/optuna.db"], "cannot be created"),
])
def test_a_search_that_cannot_run_is_refused_before_a_parent_or_study_exist(tmp_path, args,
                                                                            words):
    line = refused(tmp_path, *args)
    assert words in line, line
    assert "SECRET" not in line
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_a_new_search_gets_a_new_study_and_a_resume_must_be_the_same_search(tmp_path):
    """Two searches in one sweep folder (the README's fixed shared folder): the second, with
    another space and no ``sweep.resume``, gets its own study and draws from its own space.
    Resuming it with the first search's space is refused in one line naming the key, and
    changes nothing in either store."""
    first = ["hydra.sweeper.n_trials=1", *SHORT]
    search(tmp_path, *first)
    other = [*first, "hydra.sweeper.params={algorithm.inner_lr: 'interval(0.5, 0.9)'}"]
    out = search(tmp_path, *other)
    assert "0 trials already" in out.stderr + out.stdout
    made = studies(tmp_path)
    assert len(made) == 2 and all(STUDY_NAME.match(s.study_name) for s in made)
    assert len({s.study_name for s in made}) == 2
    newest = max(made, key=lambda s: s.trials[0].datetime_start)
    assert 0.5 <= newest.trials[0].params["algorithm.inner_lr"] <= 0.9
    _client, runs = runs_of(tmp_path)
    parents = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    assert sorted(p.data.tags[keys.STUDY_NAME] for p in parents) == \
        sorted(s.study_name for s in made)
    assert all(p.info.status == "FINISHED" for p in parents)

    line = refused(tmp_path, *first, "sweep.resume=last")
    assert "search space (algorithm.inner_lr)" in line and newest.study_name in line
    line = refused(tmp_path, *other, "hydra.sweeper.direction=minimize",
                   "hydra.sweeper.objective=val/query_loss_after_mean", "sweep.resume=last")
    assert "direction (maximize in the study, minimize now)" in line
    assert "objective (val/query_acc_after_mean in the study" in line
    _client, after = runs_of(tmp_path)
    assert {(r.info.run_id, r.info.status) for r in after} == \
        {(r.info.run_id, r.info.status) for r in runs}
    assert [len(s.trials) for s in studies(tmp_path)] == [1, 1]


@pytest.mark.slow
def test_failed_trials_are_told_at_once_and_the_rate_waits_for_enough_trials(tmp_path):
    """RandomSampler (seed 0) draws the diverging learning rate for trials 0, 2, 3 and 4: the
    first failure does not end the search (the rate is judged from 5 ended trials on: 4 of 5,
    not over 0.85). Every trial's state in the study matches its run; complete trials carry
    the value told as ``search/objective`` and the study links each trial to its run. The
    parent is FINISHED: the search ran to its end."""
    assert MIN_ENDED_FOR_RATE == 5
    search(tmp_path, "hydra.sweeper.n_trials=6", "meta_train.iterations=10",
           "meta_train.validate_every=5", "hydra.sweeper.max_failure_rate=0.85",
           "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
           "~hydra.sweeper.sampler.n_startup_trials",
           "hydra.sweeper.params={algorithm.inner_lr: '0.3', "
           "optimizer.learning_rate: 'choice(0.001, 1e30)'}",
           "hydra.sweeper.reevaluate.top_k=1", "hydra.sweeper.reevaluate.seeds=2")
    [s] = studies(tmp_path)
    states = {t.number: t.state.name for t in s.trials}
    assert len(states) == 6 and "RUNNING" not in states.values()
    assert [states[n] for n in range(5)] == ["FAIL", "COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert s.metric_names == ["val/query_acc_after_mean"]
    _client, runs = runs_of(tmp_path)
    trial_runs = {int(r.data.tags[keys.TRIAL_NUMBER]): r for r in runs
                  if keys.TRIAL_NUMBER in r.data.tags}
    for t in s.trials:
        run = trial_runs[t.number]
        assert run.data.tags[keys.TRIAL_STATE] == t.state.name
        assert t.user_attrs[search_study.ATTR_RUN] == run.info.run_id
        if t.state.name == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert run.data.metrics[keys.TRIAL_OBJECTIVE] == pytest.approx(t.value, abs=1e-12)
        else:
            assert run.info.status == "FAILED" and keys.TRIAL_OBJECTIVE not in run.data.metrics
    [parent] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "parent"]
    assert parent.info.status == "FINISHED" and keys.ERROR not in parent.data.tags
    [group] = [r for r in runs if r.data.tags.get(keys.SWEEP_ROLE) == "group"]
    assert s.user_attrs["reevaluated_trial"] == s.best_trial.number
    assert s.user_attrs["reevaluated_group_run_id"] == group.info.run_id
    assert s.user_attrs["reevaluated_test_mean"] == pytest.approx(
        parent.data.metrics[keys.SEARCH_TEST_MEAN])
    assert s.user_attrs[search_study.ATTR_PARENT_RUN] == parent.info.run_id


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_trial(tmp_path):
    """SIGKILL of the worker running a trial of a 6-trial search (project launcher, 2 warm
    workers): that trial is FAIL in the study at once and its run FAILED, the search goes on
    to 6 trials, exits 0, and no trial is left RUNNING."""
    proc = subprocess.Popen(search_command(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=6", "meta_train.iterations=200", "meta_train.steps_per_call=5",
        "meta_train.validate_every=20", "hydra.sweeper.reevaluate.top_k=0"),
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = signal_a_training_worker(tmp_path, proc, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert killed is not None, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    [s] = studies(tmp_path)
    assert len(s.trials) == 6 and "RUNNING" not in {t.state.name for t in s.trials}
    failed = [t for t in s.trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    _client, runs = runs_of(tmp_path)
    [run] = [r for r in runs if r.data.tags.get(keys.TRIAL_NUMBER) == str(failed[0].number)]
    assert run.info.status == "FAILED" and run.data.tags[keys.TRIAL_STATE] == "FAIL"
    assert "signal 9" in run.data.tags[keys.ERROR]


def test_the_trials_table_ranks_by_the_value_told_to_the_study():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from pipeline.search import record

    s = optuna.create_study(direction="maximize")
    for value, state in ((0.6, TrialState.COMPLETE), (None, TrialState.FAIL),
                         (0.8, TrialState.COMPLETE), (None, TrialState.PRUNED)):
        t = s.ask({"x": FloatDistribution(0, 1)})
        t.set_user_attr(search_study.ATTR_RUN, f"run{t.number}")
        s.tell(t, value, state=state)
    table = record.trials_table(s, "maximize")
    assert list(table["trial"]) == [2, 0, 1, 3] and list(table["rank"][:2]) == [1, 2]
    assert list(table[keys.TRIAL_OBJECTIVE][:2]) == [0.8, 0.6]
    assert list(table["run_id"]) == ["run2", "run0", "run1", "run3"]
    assert list(record.trials_table(s, "minimize")["trial"][:2]) == [0, 2]


@pytest.mark.slow
def test_processes_opening_one_fresh_study_storage_at_once_all_get_it(tmp_path):
    """A search and its jobs (or a reader of the study) may open a fresh SQLite storage at
    the same moment; Optuna's table creation then fails for all but one of them (about half
    of 3 racing processes, measured). Every opener gets the storage."""
    import sys

    code = "import sys; from pipeline.search import study; study.rdb(sys.argv[1])"
    for i in range(4):
        url = f"sqlite:///{tmp_path}/{i}/optuna.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=PROJECT_ROOT,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
