"""The Hydra callback of a multirun, in the process that launches it: a new sweep's parent and
group runs, or a resumed sweep's bookkeeping, before any job (held by its
:class:`~pipeline.sweep.session.SweepSession`, which also owns the stop), and the comparison at
the end."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.analysis import groups
from pipeline.config import TrackingConfig
from pipeline.config.validate import check_tracking_uri
from pipeline.errors import ConfigError, PipelineError, Refusal, TrackingError
from pipeline.sweep.plan import (
    NEW,
    RERUN,
    RESUME,
    SKIP,
    action,
    grid,
    group_map,
    job_runs,
    swept_keys,
    without_resume,
)
from pipeline.sweep.session import ParentFile, SweepSession, find_parent, sweep_dir_of
from pipeline.tracking import keys, liveness, redact, store
from pipeline.tracking.store import RunRecord

log = logging.getLogger(__name__)


#: Seconds a resume waits for the workers of a launcher gone from this host to stop their jobs
#: (the project's launcher's workers do within 5.5 s: a 0.5 s watch and a 5 s grace).
ORPHAN_WAIT_S = 10.0


def _tracking_cfg(config: DictConfig) -> TrackingConfig:
    obj = OmegaConf.to_object(config.tracking)
    assert isinstance(obj, TrackingConfig)
    return obj


def _refuse(message: str) -> NoReturn:
    """A bad ``sweep.*`` value, found before any job starts: one line, exit status 2."""
    raise Refusal(ConfigError(message))


class SweepCallback(Callback):
    """Opens the sweep's session (parent and group runs) before the jobs and ends it with the
    comparison after."""

    def __init__(self) -> None:
        self.session: SweepSession | None = None

    # The session's parent and folder, as this callback's attributes (for scripts that drive
    # a callback by hand; a sweep opens its session in on_multirun_start).
    @property
    def parent_run_id(self) -> str | None:
        return self.session.parent_run_id if self.session is not None else None

    @parent_run_id.setter
    def parent_run_id(self, run_id: str) -> None:
        self._by_hand().parent = ParentFile(run_id, "")

    @property
    def sweep_dir(self) -> Path | None:
        return self.session.sweep_dir if self.session is not None else None

    @sweep_dir.setter
    def sweep_dir(self, sweep_dir: Path) -> None:
        self._by_hand().sweep_dir = sweep_dir

    def _by_hand(self) -> SweepSession:
        if self.session is None:
            self.session = SweepSession("", Path("."))
        return self.session

    def _handle_signals(self) -> None:
        self._by_hand()._handle_signals()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline import process
        from pipeline.run import preflight

        process.mark_started()
        try:  # before the sweeper's checks, which would take another scheme for a server
            check_tracking_uri(str(OmegaConf.select(config, "tracking.uri")))
        except ConfigError as e:
            _refuse(redact.mask(str(e)))
        _sweeper_refusals(config)  # nothing recorded before it is refused
        cfg = _tracking_cfg(config)
        try:
            preflight.check_names(cfg)
        except PipelineError as e:
            _refuse(str(e))
        given = json.dumps(list(config.hydra.overrides.task))
        if len(given) > store.MAX_TAG_LEN:  # the parent's tag a resume compares: never cut
            _refuse(f"the sweep's overrides are {len(given)} characters long (as JSON); the "
                    f"parent run's {keys.SWEEP_OVERRIDES} tag holds at most {store.MAX_TAG_LEN}."
                    f" Move values into a config file (conf/experiment/) and select it.")
        sweep_dir = sweep_dir_of(config)
        overrides = list(config.hydra.overrides.task)
        sweeper_params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        swept = swept_keys(overrides, OmegaConf.to_container(sweeper_params)
                           if sweeper_params is not None else None)
        sweep_id = f"{sweep_dir.parent.name}/{sweep_dir.name}"
        resume = OmegaConf.select(config, "sweep.resume", default=None)
        group_by = list(OmegaConf.select(config, "sweep.group_by", default=None) or [])
        session = SweepSession(cfg.uri, sweep_dir)
        jobs = grid(config)
        try:
            if resume:
                _attach(session, cfg, str(resume), overrides, swept, jobs)
            else:
                _create(session, config, cfg, sweep_id, overrides, swept, jobs, group_by)
        except TrackingError as e:  # a store that cannot be reached or made: nothing recorded
            raise Refusal(TrackingError(redact.mask(str(e))), process.CANNOT_START) from None
        self.session = session
        session.start()
        _warn_oversubscription(config)
        log.info("Sweep %s: MLflow parent run %s%s", sweep_id, session.parent_run_id,
                 f", {len(session.group_ids)} seed groups" if session.group_ids else "")
        url = store.ui_url(cfg.uri, store.get_run(cfg.uri, session.parent_run_id).experiment_id,
                           session.parent_run_id)
        if url:
            log.info("In the MLflow UI: %s", url)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        session = self.session
        if session is None or session.parent_run_id is None:
            return
        from pipeline.analysis import compare

        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        run_id = session.parent_run_id
        try:
            for group_id in sorted(session.group_ids):
                groups.write_if_complete(session.uri, group_id, session.sweep_dir, final=True)
            summary = compare.summarize_sweep(session.uri, run_id, session.sweep_dir,
                                              str(direction) if direction is not None else None)
        except Exception as e:  # the jobs' runs stand; say why the parent lacks its comparison
            log.exception("Could not log the sweep's comparison on parent run %s", run_id)
            session.fail(f"comparison failed: {e}")
            session.end(False)
            return
        session.end(summary.finished)
        log.info("Sweep parent run %s: %d rows, best %s", run_id, len(summary.table),
                 summary.best_run_id)


def _sweeper_refusals(config: DictConfig) -> None:
    """A sweeper may refuse the sweep before anything is recorded: its class's
    ``refuse_early(config)`` raises a :class:`~pipeline.errors.ConfigError` (the sweep knows no
    sweeper's settings)."""
    from hydra.utils import get_class

    try:
        sweeper = get_class(str(config.hydra.sweeper._target_))
    except Exception:
        return  # Hydra itself says why it cannot instantiate it
    check = getattr(sweeper, "refuse_early", None)
    if check is None:
        return
    try:
        check(config)
    except ConfigError as e:
        _refuse(str(e))


def _create(session: SweepSession, config: DictConfig, cfg: TrackingConfig, sweep_id: str,
            overrides: list[str], swept: list[str], jobs: list[list[str]] | None,
            group_by: list[str]) -> None:
    tags = {keys.SWEEP_ROLE: keys.ROLE_PARENT, keys.SWEEP_ID: sweep_id,
            keys.SWEEP_DIR: str(session.sweep_dir), keys.SWEEP_OVERRIDES: json.dumps(overrides),
            keys.SWEEP_PARAMS: json.dumps(swept),
            keys.SWEEP_LAUNCHER: config.hydra.launcher._target_.rsplit(".", 1)[-1],
            keys.SWEEP_SWEEPER: config.hydra.sweeper._target_.rsplit(".", 1)[-1],
            **liveness.start_tags()}
    name = " ".join(["sweep", sweep_id, *([cfg.run_name] if cfg.run_name else [])])
    session.create_parent(cfg, name, tags, swept)
    planned = groups.plan(jobs, swept, group_by, cfg.run_name or _base_name(config)) \
        if jobs else []
    if not planned and jobs is None and any(k in swept for k in group_by):
        log.warning("This sweeper decides its jobs as it goes: no seed groups.")
    for g in planned:
        session.create_group(g.name, g.jobs, group_by)


def _attach(session: SweepSession, cfg: TrackingConfig, resume: str, overrides: list[str],
            swept: list[str], jobs: list[list[str]] | None) -> None:
    """``sweep.resume``: reopen the earlier parent, count what each job will do."""
    uri = cfg.uri
    found, mapping, standing = _resumable(cfg, resume, overrides)
    n_jobs = len(jobs) if jobs is not None else max(standing, default=-1) + 1
    counts = dict.fromkeys((SKIP, RESUME, RERUN, NEW), 0)
    for n in range(n_jobs):
        counts[action(uri, standing.get(n))] += 1
    message = (f"Resuming {found.name} ({found.run_id}): {counts[SKIP]} FINISHED jobs "
               f"skipped, {counts[RESUME]} resumed from checkpoints, {counts[RERUN]} rerun, "
               f"{counts[NEW]} not run before")
    print(message, flush=True)
    log.info(message)
    store.set_status(uri, found.run_id, keys.RUNNING)
    store.delete_tag(uri, found.run_id, keys.ERROR)
    resumed = int(found.tags.get(keys.RESUMED_SWEEP, "0")) + 1
    store.set_tags(uri, found.run_id, {**liveness.start_tags(),
        keys.SWEEP_DIR: str(session.sweep_dir), keys.RESUMED_SWEEP: resumed,
        **dict(zip(keys.RESUME_COUNTS, (counts[SKIP], counts[RESUME], counts[RERUN],
                                       counts[NEW]), strict=True))})
    session.attach_parent(found.run_id, swept, mapping)
    for group_id in session.group_ids:  # groups whose jobs run again are open again
        group = store.get_run(uri, group_id)
        jobs_of = json.loads(group.tags.get(keys.GROUP_JOBS, "[]"))
        if any(action(uri, standing.get(n)) != SKIP for n in jobs_of):
            store.set_status(uri, group_id, keys.RUNNING)


def _resumable(cfg: TrackingConfig, resume: str, overrides: list[str]
               ) -> tuple[RunRecord, dict[int, str], dict[int, RunRecord]]:
    """The parent to resume, its groups and the run standing for each job; refused if it is
    another command's, or it or one of its jobs still runs."""
    uri = cfg.uri
    try:
        found = find_parent(cfg, resume)
    except ConfigError as e:
        _refuse(str(e))
    before = without_resume(json.loads(found.tags.get(keys.SWEEP_OVERRIDES, "[]")))
    if before not in (without_resume(overrides),  # tags are masked since passwords are
                      without_resume([redact.mask(o) for o in overrides])):
        _refuse(f"sweep.resume={found.run_id}: that sweep ran the overrides {before}, this "
                f"command has {without_resume(overrides)}; resume with the same command.")
    if liveness.is_alive(found):
        _refuse(f"sweep.resume={found.run_id}: that sweep is still running: "
                f"{liveness.still_running(found)}.")
    # Runs whose process is gone (SIGKILL, OOM, a lost launcher) are FAILED before planning;
    # this search's trials stay RUNNING in its study: the resume runs them again at once.
    from pipeline.search import lost

    for gone in lost.reap(uri, experiment_names=[cfg.experiment_name],
                          keep_trials_of=found.run_id):
        log.warning("Run %s (%s) marked FAILED: %s", gone.run.run_id, gone.run.name,
                    gone.reason)
    mapping = group_map(uri, found.run_id)
    standing = _after_orphans(uri, found, job_runs(uri, found.run_id, set(mapping.values())))
    for n, run in sorted(standing.items()):  # never run a job twice at once
        if liveness.is_alive(run):
            _refuse(f"sweep.resume={found.run_id}: job {n}'s run {run.run_id} is still "
                    f"running ({liveness.still_running(run)}).")
    return found, mapping, standing


def _after_orphans(uri: str, parent: RunRecord, standing: dict[int, RunRecord]
                   ) -> dict[int, RunRecord]:
    """The jobs' runs once the workers of a launcher gone from this host have ended theirs: a
    worker that loses its launcher stops its job (run KILLED, with a checkpoint) within seconds
    (:data:`ORPHAN_WAIT_S`), so a resume right after ``kill -9`` of the launcher waits for that
    instead of refusing."""
    if liveness.gone(parent) is None:
        return standing
    deadline = time.monotonic() + ORPHAN_WAIT_S
    alive = [n for n, r in standing.items() if liveness.is_alive(r)]
    if alive:
        log.info("Waiting up to %.0f s for the workers of the lost launcher to end jobs %s",
                 ORPHAN_WAIT_S, alive)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        for n in alive:
            standing[n] = store.get_run(uri, standing[n].run_id)
        alive = [n for n in alive if liveness.is_alive(standing[n])]
    return standing


def _base_name(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "algorithm.name", default="run"))


def _warn_oversubscription(config: DictConfig) -> None:
    if OmegaConf.select(config, "hydra.launcher.backend", default=None) == "ray":
        return  # workers are Ray actors of 1 CPU each, anywhere on the cluster: Ray counts
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    threads = OmegaConf.select(config, "runtime.intra_op_threads", default=1)
    cores = os.cpu_count() or 1
    if isinstance(n_jobs, int) and n_jobs > 1 and (threads == 0 or n_jobs * threads > cores):
        log.warning("hydra.launcher.n_jobs=%d with runtime.intra_op_threads=%s oversubscribes "
                    "%d cores: jobs will fight for them. Lower n_jobs or set "
                    "runtime.intra_op_threads=1.", n_jobs, threads, cores)
