"""The search loop of the Optuna sweeper (``hydra/sweeper=optuna``), in the launching process.

Trials are asked from a persistent study (:mod:`pipeline.search.study`) and told their result
(ask/tell). With a launcher that can ``submit(overrides, job_idx) -> Future[JobReturn]`` (and
has ``n_jobs``, ``shutdown()``), ``n_jobs`` trials are in flight and a new one is asked the
moment one ends: no batch barrier. Other launchers (basic, joblib, Ray, SLURM) get batches of
``hydra.sweeper.n_jobs`` through ``launch``.

A job learns its trial through the overrides ``sweep.trial=N sweep.study=NAME``; it reports
its ``val/`` objective at every validation point and stops when pruned
(:mod:`pipeline.search.trial`). A job that fails makes its trial FAIL (counted against
``max_failure_rate``); a pruned one is PRUNED (never counted).

``sweep.resume=last|PARENT_ID`` continues a stopped search: the study is the parent's, its
finished trials are kept, the trials it left RUNNING run again under their own numbers and
params (their KILLED runs continue from their checkpoints through the sweep's resume
machinery), and new trials are asked until the study holds exactly ``n_trials``.

After the last trial the test tasks are touched once: the best ``reevaluate.top_k`` trials are
re-run on ``reevaluate.seeds`` fresh seeds each, as seed groups (:mod:`pipeline.analysis.groups`)
through the same launcher, and the parent run records the search (:mod:`pipeline.search.record`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from pipeline.analysis import groups
from pipeline.errors import ConfigError, Refusal
from pipeline.search import record, space, study
from pipeline.search.occupancy import Occupancy
from pipeline.search.settings import Settings
from pipeline.sweep import session as sweep_session
from pipeline.tracking import keys, store

log = logging.getLogger(__name__)

#: Keys of a job's overrides that tie it to its trial (left out of re-evaluation jobs).
TRIAL_KEYS = ("sweep.trial", "sweep.study", "meta_test.enabled")
#: The file an Optuna sweeper leaves in the sweep folder (best params and value).
RESULTS_FILE = "optimization_results.yaml"
#: The failure-rate limit is judged only once this many trials have ended (COMPLETE, PRUNED or
#: FAIL): one failure among the first trials says nothing about a rate.
MIN_ENDED_FOR_RATE = 5


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def new_study_name(base: str | None, at: float | None = None) -> str:
    """A new search's study: ``<study_name>-<date>-<time>`` (of now), never an earlier one."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(at))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base or 'search'}-{stamp}")


class SearchStopped(Exception):
    """The search stops early (its reason: too many failed trials)."""


class Search:
    """One search: its study, its trials in flight, its re-evaluation."""

    def __init__(self, settings: Settings, launcher: Any, config: DictConfig):
        self.s, self.launcher, self.config = settings, launcher, config
        self.session = sweep_session.current()
        self.sweep_dir = sweep_session.sweep_dir_of(config)
        self.uri = str(config.tracking.uri)
        self.returns: list[JobReturn] = []
        self.failures = 0
        #: Why no new trial is asked any more (the failure-rate limit), once it is so.
        self.stopping: str | None = None
        self.parent_id: str | None = self.session.parent_run_id if self.session else None
        self.submit = getattr(launcher, "submit", None)
        #: The workers' time in trials (trials in flight through ``submit`` only).
        self.occupancy: Occupancy | None = None

    # --- the study ----------------------------------------------------------------------------

    def _open(self, space_: dict) -> optuna.Study:
        url = study.storage_of(self.config)
        resumed = (store.get_run(self.uri, self.parent_id).tags.get(keys.STUDY_NAME)
                   if self.parent_id else None)
        pruner = study.pruner_of(self.s.pruner)
        if resumed:  # a resumed search: the parent's study (checked the same search up front)
            self.study_name = resumed
            self.study = study.open_study(url, resumed, self.s.direction, None, pruner)
        else:
            self.study = study.create_new(url, lambda: new_study_name(self.s.study_name),
                                          self.s, space_, pruner)
            self.study_name = self.study.study_name
        # A resumed search's sampler must not replay its seed's first draws (the params of the
        # trials it already has): its seed moves on by the number of trials in the study.
        spec = self.s.sampler
        done = len(self.study.get_trials(deepcopy=False))
        if done and spec is not None and spec.get("seed") is not None:
            spec = OmegaConf.merge(spec, {"seed": int(spec.seed) + done})
        self.study.sampler = study.build(spec) or self.study.sampler
        if self.parent_id:
            store.set_tags(self.uri, self.parent_id, {
                keys.STUDY_NAME: self.study_name, keys.STUDY_STORAGE: study.without_password(url),
                keys.SEARCH_OBJECTIVE: f"{self.s.objective_value} {self.s.objective}"})
            self.study.set_user_attr(study.ATTR_PARENT_RUN, self.parent_id)
        log.info("Study %s in %s: %d trials already", self.study_name,
                 study.without_password(url), done)
        return self.study

    # --- trials -------------------------------------------------------------------------------

    def _trial_overrides(self, fixed: list[str], params: dict[str, Any], number: int
                         ) -> list[str]:
        # the test tasks stay untouched during the search (unless it tunes on them, allowed)
        test = [] if self.s.objective.startswith(keys.TEST) else ["meta_test.enabled=false"]
        return [*fixed, *space.overrides(params), f"sweep.trial={number}",
                f"sweep.study={self.study_name}", *test]

    def _finish(self, number: int, ret: JobReturn, tag: bool = True) -> tuple[str, list[str]]:
        """Tell the study how trial ``number``'s job ended (at once, whatever ended it: a
        failure, a lost worker, a pruning) and record on its run what was told; the run's
        state tag waits for the caller when ``tag=False``. Returns the state and the runs."""
        self.returns.append(ret)
        frozen = self.study.get_trials(deepcopy=False)[number]
        assert frozen.number == number
        state, value = TrialState.FAIL, None
        if ret.status == JobStatus.COMPLETED:
            pruned = self.study._storage.get_trial(frozen._trial_id).user_attrs.get(
                keys.PRUNED_STEP)
            result = ret.return_value
            if pruned is not None:
                state = TrialState.PRUNED
            elif isinstance(result, int | float) and math.isfinite(result):
                state, value = TrialState.COMPLETE, float(result)
        if state == TrialState.FAIL:
            self.failures += 1
            reason = ret._return_value if ret.status == JobStatus.FAILED else "no objective"
            log.warning("Trial %d failed: %s", number, keys.plain_text(str(reason)))
        runs = self._runs_of(number)
        if state == TrialState.FAIL:  # a job stopped by a signal to its worker: no resume
            for run_id in runs:  # will continue it, its run is FAILED as its trial is FAIL
                if store.get_run(self.uri, run_id).status == keys.KILLED:
                    store.set_status(self.uri, run_id, keys.FAILED)
        if runs and frozen.state == TrialState.RUNNING:  # optuna-dashboard links to MLflow
            self.study._storage.set_trial_user_attr(frozen._trial_id, study.ATTR_RUN, runs[-1])
        self.study.tell(number, value, state=state, skip_if_finished=True)
        if value is not None:
            for run_id in runs:
                store.log_values(self.uri, run_id, metrics={keys.TRIAL_OBJECTIVE: value})
        self._judge_failure_rate()
        if tag:
            self._tag_runs(runs, state.name)
        return state.name, runs

    def _judge_failure_rate(self) -> None:
        """Stop asking trials once failures exceed ``max_failure_rate`` of the ended trials,
        judged from :data:`MIN_ENDED_FOR_RATE` ended trials on (trials in flight still end)."""
        ended = sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))
        if self.stopping is None and ended >= MIN_ENDED_FOR_RATE and \
                self.failures / ended > self.s.max_failure_rate:
            self.stopping = (
                f"{self.failures} of {ended} ended trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.s.max_failure_rate}: the search stopped "
                f"(pruned trials do not count; see the failed trials' runs for why)")
            log.error("%s", self.stopping)

    def _runs_of(self, number: int) -> list[str]:
        """The runs standing for trial ``number`` (not replaced by a resumed search's)."""
        if not self.parent_id:
            return []
        runs = store.search_runs(
            self.uri, parent_run_id=self.parent_id,
            filter_string=f"tags.{keys.TRIAL_NUMBER} = '{number}' and "
                          f"tags.{keys.STUDY_NAME} = '{self.study_name}'")
        return [r.run_id for r in runs if keys.REPLACED_BY not in r.tags]

    def _tag_runs(self, runs: list[str], state: str) -> None:
        """The trial's state on its runs; a pruned trial's run is not a failure: no ``error``
        tag (its job ended it FINISHED, named and described as pruned)."""
        for run_id in runs:
            store.set_tags(self.uri, run_id, {keys.TRIAL_STATE: state})
            if state == keys.STATE_PRUNED:
                store.delete_tag(self.uri, run_id, keys.ERROR)

    def _pending(self) -> list[optuna.trial.FrozenTrial]:
        """Trials a stopped search left RUNNING: they run again, same number and params."""
        return [t for t in self.study.trials if t.state == TrialState.RUNNING]

    def _run_trials(self, fixed: list[str], space_: dict) -> None:
        rerun = self._pending()
        to_ask = max(self.s.n_trials - len(self.study.trials), 0)
        if rerun:
            log.info("Resuming the search: %d trials run again (%s), %d new", len(rerun),
                     ", ".join(str(t.number) for t in rerun), to_ask)

        def next_trial() -> tuple[int, list[str]] | None:
            nonlocal to_ask
            if self.stopping is not None:
                return None
            if rerun:
                t = rerun.pop(0)
                return t.number, self._trial_overrides(fixed, t.params, t.number)
            if to_ask <= 0:
                return None
            to_ask -= 1
            t = self.study.ask(space_)
            return t.number, self._trial_overrides(fixed, t.params, t.number)

        if self.submit is not None:
            self._run_async(next_trial, int(getattr(self.launcher, "n_jobs", None)
                                            or self.s.n_jobs))
        else:
            self._run_batches(next_trial, self.s.n_jobs)

    def _run_async(self, next_trial, n_jobs: int) -> None:
        """``n_jobs`` trials in flight; a new one is asked as soon as one ends (told to the
        study first, so the sampler sees it; its run's state tag only once the free worker has
        its next trial)."""
        inflight: dict[Future, tuple[int, float]] = {}
        untagged: list[tuple[str, list[str]]] = []
        occupancy = self.occupancy = Occupancy(n_jobs)
        more = True
        while True:
            while more and len(inflight) < n_jobs:
                nxt = next_trial()
                if nxt is None:
                    more = False
                    break
                number, overrides = nxt
                at = occupancy.submitted()
                inflight[self.submit(overrides, number)] = number, at
            for state, runs in untagged:
                self._tag_runs(runs, state)
            untagged.clear()
            if not inflight:
                return
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for future in done:
                number, at = inflight.pop(future)
                occupancy.ended(future.result(), at)
                untagged.append(self._finish(number, future.result(), tag=False))

    def _run_batches(self, next_trial, n_jobs: int) -> None:
        """Batches of ``n_jobs`` trials through ``launcher.launch`` (consecutive job numbers
        per call: a resumed search's re-run trials may not be)."""
        while True:
            batch = [t for t in (next_trial() for _ in range(max(n_jobs, 1))) if t is not None]
            if not batch:
                return
            for run in _consecutive(batch):
                returns = self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0])
                for (number, _), ret in zip(run, returns, strict=True):
                    self._finish(number, ret)

    # --- after the search: the test tasks, once --------------------------------------------

    def _reevaluate(self, fixed: list[str]) -> list[tuple[optuna.trial.FrozenTrial, str]]:
        """The best ``top_k`` trials on ``seeds`` fresh seeds each, as seed groups."""
        done = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        if not done or self.s.top_k <= 0 or self.s.seeds <= 0 or self.session is None:
            return []
        done.sort(key=lambda t: t.value, reverse=self.s.direction == "maximize")
        top = done[: self.s.top_k]
        first = (self.s.first_seed if self.s.first_seed is not None
                 else int(OmegaConf.select(self.config, "seed", default=0)) + 1)
        seeds = list(range(first, first + self.s.seeds))
        base = [o for o in fixed if _key(o) not in (*TRIAL_KEYS, keys.SEED)]
        jobs: list[tuple[int, list[str]]] = []
        out = []
        for (t, group_id), nums in self._groups_for(top, len(seeds)):
            jobs += [(n, [*base, *space.overrides(t.params), f"seed={s}"])
                     for n, s in zip(nums, seeds, strict=True)]
            out.append((t, group_id))
        self.session.add_swept(keys.SEED)
        self.session.save()  # jobs find their group through the sweep folder (or its tags)
        log.info("Re-evaluating the best %d trials (%s) on seeds %s: %d jobs", len(top),
                 ", ".join(str(t.number) for t in top), seeds, len(jobs))
        if self.submit is not None:
            futures = [self.submit(o, n) for n, o in jobs]
            self.returns += [f.result() for f in futures]
        else:
            for run in _consecutive(jobs):
                self.returns += list(self.launcher.launch([o for _, o in run],
                                                          initial_job_idx=run[0][0]))
        for _, group_id in out:
            groups.write_if_complete(self.uri, group_id, self.sweep_dir, final=True)
        return out

    def _groups_for(self, top: list[optuna.trial.FrozenTrial], n_seeds: int
                    ) -> list[tuple[tuple[optuna.trial.FrozenTrial, str], list[int]]]:
        """Each re-run trial's seed group and job numbers: a resumed search's existing group,
        else a new one numbered after every trial."""
        assert self.session is not None and self.parent_id is not None
        existing = {r.tags.get(keys.REEVALUATES): r for r in store.search_runs(
            self.uri, parent_run_id=self.parent_id,
            filter_string=f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_GROUP}'")}
        number = max(len(self.study.trials), self.s.n_trials)
        out = []
        for rank, t in enumerate(top, 1):
            group = existing.get(str(t.number))
            if group is not None:
                nums = json.loads(group.tags[keys.GROUP_JOBS])
                self.session.add_group(group.run_id, nums)
                group_id = group.run_id
            else:
                nums = list(range(number, number + n_seeds))
                group_id = self.session.create_group(
                    f"trial {t.number} (rank {rank} on validation) on {n_seeds} fresh seeds",
                    nums, [keys.SEED], {keys.REEVALUATES: str(t.number),
                                        keys.STUDY_NAME: self.study_name})
            number = max(number, max(nums) + 1)
            out.append(((t, group_id), nums))
        return out

    # --- the whole search --------------------------------------------------------------------

    def run(self, arguments: Sequence[str]) -> list[JobReturn]:
        space_, fixed_map = space.parse(self.s.arguments(list(arguments)))
        fixed = [f"{k}={v}" for k, v in fixed_map.items() if _key(k) not in TRIAL_KEYS]
        if not space_:
            raise Refusal(ConfigError(
                "hydra.sweeper.params is empty: a search needs at least one swept key, e.g. "
                "algorithm.inner_lr='tag(log, interval(0.01, 1))'."))
        try:
            self._open(space_)
        except ConfigError as e:  # e.g. tracking=server without the team's study database
            raise Refusal(e) from None
        try:
            self._run_trials(fixed, space_)
            utilisation = self._utilisation()
            trials = self.study.get_trials(deepcopy=False)
            if self.stopping is None and trials and all(t.state == TrialState.FAIL
                                                        for t in trials):
                self.stopping = f"all {len(trials)} trials failed; see their runs for why"
            if self.stopping is not None:
                raise SearchStopped(self.stopping)
            reevaluated = self._reevaluate(fixed)
        except SearchStopped as e:
            if self.session is not None:
                self.session.fail(str(e))
            print(f"Search stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
        finally:
            shutdown = getattr(self.launcher, "shutdown", None)
            if shutdown is not None and self.submit is not None:
                shutdown()
        best = self._best()
        if best is not None:
            (self.sweep_dir / RESULTS_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(
                {"name": "optuna", "best_params": best.params, "best_value": best.value})))
            log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
        if self.parent_id:
            record.log_search(self.uri, self.parent_id, self.study, self.s.objective,
                              best, reevaluated, utilisation, self.s.direction)
        if self.session is not None:  # the search ran to its end: its parent is FINISHED
            self.session.completed_by_sweeper = True
        return self.returns

    def _utilisation(self) -> float | None:
        """The workers' time in trials over workers x the trials' wall time (logged)."""
        o = self.occupancy
        value = o.utilisation() if o is not None else None
        if o is not None and value is not None:
            log.info("Workers in trials %.1f%% of the time (%.0f s of %d workers x %.0f s wall, "
                     "%d trials)", 100 * value, o.busy, o.workers, o.wall, len(o.spans))
        return value

    def _best(self) -> optuna.trial.FrozenTrial | None:
        try:
            return self.study.best_trial
        except ValueError:  # no trial completed
            return None


def _consecutive(items: list[tuple[int, list[str]]]) -> list[list[tuple[int, list[str]]]]:
    """Split (job number, overrides) pairs into runs of consecutive job numbers."""
    out: list[list[tuple[int, list[str]]]] = []
    for item in items:
        if out and out[-1][-1][0] + 1 == item[0]:
            out[-1].append(item)
        else:
            out.append([item])
    return out
