"""Reaping a search's lost trials: a run ended by ``reap`` (its process gone: a SIGKILLed
launcher, a lost node) that stands for a trial ends that trial too, as FAIL in its study, so the
study and MLflow tell one story (no trial RUNNING without a process behind it).

The run names its trial (``trial_number``, ``study_name``); its parent names the study's storage
(``optuna_storage``). A storage whose password the record masks is opened through
``OPTUNA_STORAGE`` when that is the same storage; otherwise the reap says which trial it could
not tell.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.tracking import keys, liveness, store
from pipeline.tracking.liveness import Reaped
from pipeline.tracking.redact import MASK
from pipeline.tracking.store import RunRecord


def reap(uri: str, older_than: float = keys.REAP_AFTER_S,
         experiment_names: list[str] | None = None, run_ids: list[str] | None = None,
         keep_trials_of: str | None = None) -> list[Reaped]:
    """:func:`pipeline.tracking.liveness.reap`, then each reaped trial's run: its trial FAIL in
    the study and ``trial_state=FAIL`` on the run (what was told is added to the reason). The
    trials of the search ``keep_trials_of`` (a parent run id: the search being resumed, which
    runs its RUNNING trials again at once) stay RUNNING."""
    out = []
    for r in liveness.reap(uri, older_than, experiment_names, run_ids):
        if keys.TRIAL_NUMBER in r.run.tags and \
                r.run.tags.get(keys.PARENT_RUN) != keep_trials_of:
            r = Reaped(r.run, f"{r.reason}; {fail_trial(uri, r.run)}")
        out.append(r)
    return out


def _storage(uri: str, run: RunRecord) -> str | None:
    """The URL of the study storage of the trial ``run`` stands for; None if the record masks
    its password and ``OPTUNA_STORAGE`` is not that storage."""
    from pipeline.search import study

    parent_id = run.tags.get(keys.PARENT_RUN)
    tagged = store.get_run(uri, parent_id).tags.get(keys.STUDY_STORAGE) if parent_id else None
    if tagged is None:
        return study.storage_url(None, uri)
    if MASK not in tagged:
        return tagged
    env = os.environ.get(study.STORAGE_ENV)
    return env if env and study.without_password(env) == tagged else None


def fail_trial(uri: str, run: RunRecord) -> str:
    """Tell the study that the trial ``run`` stands for has failed (if it is still RUNNING
    there), tag the run ``trial_state=FAIL``; say what was done."""
    from optuna.trial import TrialState

    from pipeline.search import study  # Optuna only where a trial's run was reaped

    number, name = int(run.tags[keys.TRIAL_NUMBER]), run.tags.get(keys.STUDY_NAME, "")
    what = f"trial {number} of study {name}"
    try:
        url = _storage(uri, run)
        if url is None:
            return (f"{what} not told (its storage's password is masked in the record): set "
                    f"{study.STORAGE_ENV} to that storage and mark it failed there")
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            return f"{what} not told (its storage {url} is gone)"
        s = study.open_study(url, name, "maximize")
        storage = s._storage  # Optuna's API tells a trial by number only through its storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(s._study_id, number)
        state = storage.get_trial(trial_id).state
        if state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial_id, study.ATTR_RUN, run.run_id)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            state = TrialState.FAIL
    except Exception as e:  # an unreachable storage: the run is reaped all the same
        return f"{what} not told ({type(e).__name__}: {study.without_password(str(e))})"
    store.set_tags(uri, run.run_id, {keys.TRIAL_STATE: state.name})
    return f"{what}: {state.name} in the study"
