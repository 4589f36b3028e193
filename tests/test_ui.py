"""The MLflow UI in a real browser (headless Chromium): the links the pipeline gives open an
experiment in the model-training runs table, not MLflow 3's empty GenAI view; the seed groups'
compare view reads as a results table; a model registered by ``pipeline.compare --register``
shows its key metrics; a search's pruned trials are told apart from failed ones in the runs
table. ``UPDATE_DOCS=1`` also copies the screenshots into ``docs/``: ``UPDATE_DOCS=1
.venv/bin/python -m pytest -n 0 -m slow tests/test_ui.py -k pruned`` remakes
``docs/mlflow_pruned_trials.png``.

MLflow 3.17's UI chooses its GenAI or model-training view UI-wide (a toggle it remembers, GenAI
in a fresh browser) and does not read the experiment's ``mlflow.experimentKind`` tag, which the
pipeline sets all the same; its links carry ``?workflowType=machine_learning``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.analysis import compare
from pipeline.serving.server import stop_group
from pipeline.tracking import keys, store
from tests.conftest import answers_health, free_port
from tests.test_sweeps import multirun

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000", "--hide-scrollbars"]


def browse(url: str, screenshot: Path | None = None, height: int = 1000) -> str:
    """The page's DOM after its scripts ran, in a fresh browser profile (and a screenshot of it,
    if asked)."""
    size = f"--window-size=1600,{height}"
    profile = tempfile.mkdtemp(prefix="chromium")
    try:
        if screenshot is not None:
            subprocess.run([CHROMIUM, *FLAGS, size, f"--user-data-dir={profile}",
                            f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
        profile2 = tempfile.mkdtemp(prefix="chromium", dir=profile)
        out = subprocess.run([CHROMIUM, *FLAGS, size, f"--user-data-dir={profile2}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=180)
        return out.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("chromium is missing (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("ui")
    multirun(tmp, "seed=0,1", "algorithm.inner_lr=0.1,0.3", "tracking.log_model=true")
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)  # not MLflow's relative default registry
    exp = client.get_experiment_by_name("meta-learning")
    parent = client.search_runs([exp.experiment_id], "tags.sweep_role = 'parent'")[0]
    assert compare.main(["--tracking-uri", uri, "--register", "meta-learner",
                         "--parent", parent.info.run_id]) == 0
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
         "--default-artifact-root", str(tmp / "mlruns" / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    assert answers_health(url, proc, 120), "mlflow ui did not start"
    yield url, client, exp, tmp
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _docs(shot: Path) -> None:
    if os.environ.get("UPDATE_DOCS") == "1":
        shutil.copy(shot, PROJECT_ROOT / "docs" / shot.name)


def test_pipeline_links_open_the_runs_table(ui):
    url, client, exp, tmp = ui
    assert exp.tags[keys.EXPERIMENT_KIND] == keys.KIND_TRAINING  # set, for UIs that read it
    parent = client.search_runs([exp.experiment_id], "tags.sweep_role = 'parent'")[0]
    link = store.ui_url(url, exp.experiment_id)
    assert link == f"{url}/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
    shot = tmp / "mlflow_experiment_runs.png"
    dom = browse(link, shot)
    assert parent.info.run_name in dom and "matching runs" in dom, dom[-3000:]
    assert shot.stat().st_size > 10_000
    _docs(shot)
    # the control: a fresh browser without the link's view opens MLflow 3's GenAI overview
    plain = browse(f"{url}/#/experiments/{exp.experiment_id}")
    assert parent.info.run_name not in plain and "Traces" in plain


def test_seed_groups_compare_as_a_results_table(ui):
    url, client, exp, tmp = ui
    groups = client.search_runs([exp.experiment_id], "tags.sweep_role = 'group'")
    query = urllib.parse.urlencode({"runs": json.dumps([g.info.run_id for g in groups]),
                                    "experiments": json.dumps([exp.experiment_id])})
    shot = tmp / "mlflow_seed_groups_compare.png"
    dom = browse(f"{url}/#/compare-runs?{query}&{keys.UI_TRAINING_VIEW}", shot, height=2600)
    assert all(g.info.run_name in dom for g in groups)
    assert "seeds/n_seeds" in dom and "seeds/gain/query_acc_mean" in dom
    assert "algorithm.inner_lr" in dom
    _docs(shot)


def test_registered_model_shows_its_metrics(ui):
    url, client, _exp, tmp = ui
    [version] = client.search_model_versions("name = 'meta-learner'")
    shot = tmp / "mlflow_registered_model.png"
    dom = browse(f"{url}/#/models/meta-learner/versions/{version.version}?"
                 f"{keys.UI_TRAINING_VIEW}", shot)
    assert "seeds/test/query_acc_after_mean_mean" in dom and version.run_id in dom
    assert keys.REGISTERED_FROM in dom
    _docs(shot)


# --- a search's pruned trials in the runs table ------------------------------------------------

#: A 6-trial search whose seeded random sampler draws, in this order, complete, pruned,
#: complete, pruned, complete and failed trials: a learning rate of 1e-7 learns nothing (the
#: threshold pruner stops it at its first validation), an inner rate of 1e30 diverges at once.
PRUNED_SEARCH = [
    "hydra.sweeper.n_trials=6", "meta_train.iterations=30", "meta_train.validate_every=10",
    "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
    "~hydra.sweeper.sampler.n_startup_trials", "hydra.sweeper.sampler.seed=40",
    "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
    "+hydra.sweeper.pruner.lower=0.55",
    "hydra.sweeper.params={algorithm.inner_lr: 'choice(0.3, 1e30)', "
    "optimizer.learning_rate: 'choice(0.01, 0.0000001)', algorithm.inner_steps: '1'}",
    "hydra.sweeper.max_failure_rate=1.0", "hydra.sweeper.reevaluate.top_k=0"]

#: A saved view of the trials (MLflow's "shared view": an experiment tag, opened by its key in
#: the link): the trials flat (a search filter and an order other than by date stop MLflow
#: nesting them under their parent), best ``search/objective`` first, the state columns shown.
TRIALS_VIEW_KEY = "search-trials"
_COLUMNS = ["attributes.`Run Name`", "runDateAndNestInfo", f"metrics.`{keys.TRIAL_OBJECTIVE}`",
            f"tags.`{keys.TRIAL_STATE}`", f"tags.`{keys.PRUNED_STEP}`", "attributes.`Description`"]
TRIALS_VIEW = {"searchFilter": f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_CHILD}'",
               "orderByKey": f"metrics.`{keys.TRIAL_OBJECTIVE}`", "orderByAsc": False,
               "selectedColumns": _COLUMNS[2:], "columnOrder": _COLUMNS,
               "columnWidths": dict(zip(_COLUMNS, (430, 145, 130, 105, 125, 460), strict=True))}


@pytest.fixture(scope="module")
def pruned_ui(tmp_path_factory):
    """A search with complete, pruned and failed trials, and ``mlflow ui`` on it. The UI listens
    on 127.0.0.2 (allowed as its host and origin): MLflow 3.17 opens its assistant panel over a
    third of the page on ``localhost``/``127.0.0.1`` in a fresh browser."""
    from tests.test_search import search

    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("chromium is missing (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("pruned_ui")
    search(tmp, *PRUNED_SEARCH)
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("meta-learning")
    client.set_experiment_tag(exp.experiment_id, f"mlflow.sharedViewState.{TRIALS_VIEW_KEY}",
                              json.dumps(TRIALS_VIEW))
    port = free_port()
    url = f"http://127.0.0.2:{port}"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
         "--default-artifact-root", str(tmp / "mlruns" / "artifacts"), "--host", "127.0.0.2",
         "--port", str(port), "--allowed-hosts", f"127.0.0.2:{port},127.0.0.2",
         "--cors-allowed-origins", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=tmp)
    try:
        assert answers_health(url, proc, 120), "mlflow ui did not start"
        yield url, client, exp, tmp
    finally:
        stop_group(proc)


def test_pruned_trials_are_told_apart_from_failed_ones_in_the_runs_table(pruned_ui):
    """The runs table at a glance: a pruned trial's run has FINISHED's green tick (a failed one
    FAILED's red cross; KILLED would draw the same), its name starts ``pruned:``, its
    description says where and why it stopped, and it has no ``search/objective``."""
    url, client, exp, tmp = pruned_ui
    trials = client.search_runs([exp.experiment_id], f"tags.{keys.SWEEP_ROLE} = 'child'")
    by_state = {s: [r for r in trials if r.data.tags[keys.TRIAL_STATE] == s]
                for s in (keys.STATE_COMPLETE, keys.STATE_PRUNED, keys.STATE_FAIL)}
    assert all(by_state.values()), {s: len(v) for s, v in by_state.items()}
    for r in by_state[keys.STATE_PRUNED]:
        assert r.info.status == keys.FINISHED and keys.ERROR not in r.data.tags
        assert r.info.run_name.startswith(keys.PRUNED_NAME_PREFIX)
        assert keys.TRIAL_OBJECTIVE not in r.data.metrics
    assert all(r.info.status == keys.FAILED and keys.ERROR in r.data.tags
               for r in by_state[keys.STATE_FAIL])
    shot = tmp / "mlflow_pruned_trials.png"
    dom = browse(f"{url}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey="
                 f"{TRIALS_VIEW_KEY}&{keys.UI_TRAINING_VIEW}", shot, height=560)
    assert "matching runs" in dom and all(r.info.run_name in dom for r in trials), dom[-3000:]
    assert "Pruned by the search after" in dom and keys.STATE_PRUNED in dom
    assert shot.stat().st_size > 10_000
    _docs(shot)
