"""The Hydra callback of a multirun, in the process that launches it: the parent and group runs
before any job, a resumed sweep's bookkeeping, the comparison at the end, and SIGTERM / Ctrl-C
passed on to the workers so the sweep can be resumed."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.analysis import groups
from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.search import objective as search_objective
from pipeline.sweep import workers
from pipeline.sweep.plan import (
    NEW,
    PARENT_FILE,
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
from pipeline.tracking import keys, liveness, redact, store

log = logging.getLogger(__name__)

#: Longest wait, after SIGTERM, for the workers' runs to be marked KILLED.
STOP_WAIT_S = 120.0


def _tracking_cfg(config: DictConfig) -> TrackingConfig:
    obj = OmegaConf.to_object(config.tracking)
    assert isinstance(obj, TrackingConfig)
    return obj


def _refuse(message: str) -> None:
    """A bad ``sweep.*`` value, found before any job starts: one line, exit status 2."""
    print(f"Error in config: {message}", file=sys.stderr)
    sys.exit(2)


class SweepCallback(Callback):
    """Creates the sweep's parent and group runs before the jobs and the comparison after."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.uri: str | None = None
        self.group_ids: set[str] = set()
        self.sweep_dir: Path | None = None
        self._stopped: int | None = None
        self._stopped_parent: str | None = None  # kept for the message of a second signal

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline import errors
        from pipeline.run import preflight

        errors.started = True
        if search_objective.is_search(config):  # nothing recorded before it is refused
            try:
                search_objective.check(config)
            except ConfigError as e:
                _refuse(str(e))
        cfg = _tracking_cfg(config)
        try:
            preflight.check_names(cfg)
        except errors.PipelineError as e:
            _refuse(str(e))
        given = json.dumps(list(config.hydra.overrides.task))
        if len(given) > store.MAX_TAG_LEN:  # the parent's tag a resume compares: never cut
            _refuse(f"the sweep's overrides are {len(given)} characters long (as JSON); the "
                    f"parent run's {keys.SWEEP_OVERRIDES} tag holds at most {store.MAX_TAG_LEN}."
                    f" Move values into a config file (conf/experiment/) and select it.")
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        overrides = list(config.hydra.overrides.task)
        sweeper_params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        swept = swept_keys(overrides, OmegaConf.to_container(sweeper_params)
                           if sweeper_params is not None else None)
        sweep_id = f"{sweep_dir.parent.name}/{sweep_dir.name}"
        resume = OmegaConf.select(config, "sweep.resume", default=None)
        group_by = list(OmegaConf.select(config, "sweep.group_by", default=None) or [])
        self.uri, self.sweep_dir = cfg.uri, sweep_dir
        jobs = grid(config)
        if resume:
            mapping = self._attach(cfg, str(resume), overrides, jobs, sweep_dir)
        else:
            mapping = self._create(config, cfg, sweep_id, sweep_dir, overrides, swept, jobs,
                                   group_by)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / workers.STOP_FILE).unlink(missing_ok=True)  # left by a stopped run of it
        (sweep_dir / PARENT_FILE).write_text(json.dumps(
            {"run_id": self.parent_run_id, "tracking_uri": cfg.uri, "swept": swept,
             "groups": {str(n): g for n, g in mapping.items()},
             "resume": bool(resume)}))
        _warn_oversubscription(config)
        workers.mark_launcher()
        atexit.register(self._abandon)
        self._handle_signals()
        self._start_heartbeat(cfg.uri)
        log.info("Sweep %s: MLflow parent run %s%s", sweep_id, self.parent_run_id,
                 f", {len(self.group_ids)} seed groups" if self.group_ids else "")
        url = store.ui_url(cfg.uri, store.get_run(cfg.uri, self.parent_run_id).experiment_id,
                           self.parent_run_id)
        if url:
            log.info("In the MLflow UI: %s", url)

    def _create(self, config: DictConfig, cfg: TrackingConfig, sweep_id: str, sweep_dir: Path,
                overrides: list[str], swept: list[str], jobs: list[list[str]] | None,
                group_by: list[str]) -> dict[int, str]:
        tags = {keys.SWEEP_ROLE: keys.ROLE_PARENT, keys.SWEEP_ID: sweep_id,
                keys.SWEEP_DIR: str(sweep_dir), keys.SWEEP_OVERRIDES: json.dumps(overrides),
                keys.SWEEP_PARAMS: json.dumps(swept),
                keys.SWEEP_LAUNCHER: config.hydra.launcher._target_.rsplit(".", 1)[-1],
                keys.SWEEP_SWEEPER: config.hydra.sweeper._target_.rsplit(".", 1)[-1],
                **liveness.start_tags()}
        name = " ".join(["sweep", sweep_id, *([cfg.run_name] if cfg.run_name else [])])
        self.parent_run_id = store.start_parent_run(cfg, name, tags)
        planned = groups.plan(jobs, swept, group_by, cfg.run_name or _base_name(config)) \
            if jobs else []
        if not planned and jobs is None and any(k in swept for k in group_by):
            log.warning("This sweeper decides its jobs as it goes: no seed groups.")
        parent = store.get_run(cfg.uri, self.parent_run_id)
        mapping: dict[int, str] = {}
        for g in planned:
            group_id = store.create_run(cfg.uri, parent.experiment_id, g.name, {
                keys.SWEEP_ROLE: keys.ROLE_GROUP, keys.PARENT_RUN: self.parent_run_id,
                keys.SWEEP_ID: sweep_id, keys.GROUP_BY: json.dumps(group_by),
                keys.GROUP_JOBS: json.dumps(g.jobs)})
            self.group_ids.add(group_id)
            mapping |= {n: group_id for n in g.jobs}
        return mapping

    def _attach(self, cfg: TrackingConfig, resume: str, overrides: list[str],
                jobs: list[list[str]] | None, sweep_dir: Path) -> dict[int, str]:
        """``sweep.resume``: reopen the earlier parent, count what each job will do."""
        uri = cfg.uri
        store.prepare_store(cfg)
        if resume == "last":
            found = store.latest_run(uri, cfg.experiment_name,
                                     f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_PARENT}'")
            if found is None:
                _refuse(f"sweep.resume=last: experiment {cfg.experiment_name!r} in {uri} has no "
                        f"sweep to resume.")
        else:
            try:
                found = store.get_run(uri, resume)
            except store.AmbiguousRunId as e:
                _refuse(f"sweep.resume={resume}: {e}")
            except Exception:
                found = None
            if found is None or found.tags.get(keys.SWEEP_ROLE) != keys.ROLE_PARENT:
                _refuse(f"sweep.resume={resume}: no sweep parent run with that id in {uri}; give "
                        f"a parent run id (pipeline.compare lists them) or last.")
        assert found is not None
        before = without_resume(json.loads(found.tags.get(keys.SWEEP_OVERRIDES, "[]")))
        if before not in (without_resume(overrides),  # tags are masked since passwords are
                          without_resume([redact.mask(o) for o in overrides])):
            _refuse(f"sweep.resume={found.run_id}: that sweep ran the overrides {before}, this "
                    f"command has {without_resume(overrides)}; resume with the same command.")
        if liveness.is_alive(found):
            _refuse(f"sweep.resume={found.run_id}: that sweep is still running: "
                    f"{liveness.still_running(found)}.")
        # Runs whose process is gone (SIGKILL, OOM, a lost launcher) are FAILED before planning.
        for lost in liveness.reap(uri, experiment_names=[cfg.experiment_name]):
            log.warning("Run %s (%s) marked FAILED: %s", lost.run.run_id, lost.run.name,
                        lost.reason)
        self.parent_run_id = found.run_id
        mapping = group_map(uri, found.run_id)
        self.group_ids = set(mapping.values())
        standing = job_runs(uri, found.run_id, self.group_ids)
        for n, run in sorted(standing.items()):  # never run a job twice at once
            if liveness.is_alive(run):
                self.parent_run_id = None
                _refuse(f"sweep.resume={found.run_id}: job {n}'s run {run.run_id} is still "
                        f"running ({liveness.still_running(run)}).")
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
            keys.SWEEP_DIR: str(sweep_dir), keys.RESUMED_SWEEP: resumed,
            **dict(zip(keys.RESUME_COUNTS, (counts[SKIP], counts[RESUME], counts[RERUN],
                                           counts[NEW]), strict=True))})
        for group_id in self.group_ids:  # groups whose jobs run again are open again
            group = store.get_run(uri, group_id)
            jobs_of = json.loads(group.tags.get(keys.GROUP_JOBS, "[]"))
            if any(action(uri, standing.get(n)) != SKIP for n in jobs_of):
                store.set_status(uri, group_id, keys.RUNNING)
        return mapping

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self.uri is None:
            return
        from pipeline.analysis import compare

        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        run_id, self.parent_run_id = self.parent_run_id, None
        try:
            for group_id in sorted(self.group_ids):
                groups.write_if_complete(self.uri, group_id, sweep_dir, final=True)
            summary = compare.summarize_sweep(self.uri, run_id, sweep_dir,
                                              str(direction) if direction is not None else None)
        except Exception as e:  # the jobs' runs stand; say why the parent lacks its comparison
            log.exception("Could not log the sweep's comparison on parent run %s", run_id)
            store.set_tags(self.uri, run_id, {keys.ERROR: f"comparison failed: {e}"})
            store.end_run(self.uri, run_id, keys.FAILED)
            return
        store.end_run(self.uri, run_id, keys.FINISHED if summary.finished else keys.FAILED)
        log.info("Sweep parent run %s: %d rows, best %s", run_id, len(summary.table),
                 summary.best_run_id)

    def _abandon(self) -> None:
        """The sweep raised or was stopped before ``on_multirun_end``: end the parent (and the
        groups still open) KILLED if stopped by a signal, else FAILED; never left RUNNING."""
        if self.parent_run_id is None or self.uri is None:
            return
        from pipeline import errors

        stopped = self._stopped or errors.stopped_by
        status = keys.KILLED if stopped else keys.FAILED
        reason = (f"stopped by signal {stopped}; continue it with the same command and "
                  f"sweep.resume={self.parent_run_id}" if stopped
                  else "the sweep stopped before its end")
        parent, self.parent_run_id = self.parent_run_id, None  # the heartbeat stops first
        for attempt in range(3):  # the parent first: never left RUNNING if the store answers
            try:
                store.set_tags(self.uri, parent, {keys.ERROR: reason})
                store.end_run(self.uri, parent, status)
                break
            except Exception as e:
                log.warning("Sweep parent run %s not ended %s (attempt %d): %s", parent, status,
                            attempt + 1, keys.plain_text(str(e)))
                time.sleep(0.5)
        # The groups' open runs get the same status; their statistics are written by their
        # jobs, and again when the sweep is resumed (no group lock taken in a signal handler).
        for group_id in sorted(self.group_ids):
            try:
                if store.get_run(self.uri, group_id).status == keys.RUNNING:
                    store.set_status(self.uri, group_id, status)
            except Exception as e:
                log.warning("Group run %s not ended: %s", group_id, keys.plain_text(str(e)))

    def _start_heartbeat(self, uri: str) -> None:
        """The parent run's heartbeat, from this (the launching) process while the sweep runs:
        a lost launcher leaves a parent that ``reap`` ends."""

        def beat() -> None:
            while True:
                time.sleep(keys.HEARTBEAT_S)
                run_id = self.parent_run_id
                if run_id is None:
                    return
                with contextlib.suppress(Exception):
                    store.set_tags(uri, run_id, {keys.HEARTBEAT: liveness.now()})

        threading.Thread(target=beat, daemon=True, name="sweep-heartbeat").start()

    # --- SIGTERM / Ctrl-C in the launching process --------------------------------------------

    def _handle_signals(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        """Stop the sweep: no job starts any more (a stop file in the sweep folder), SIGTERM goes
        to the worker processes running a job (Ctrl-C to a terminal reaches them already), and
        once their runs are marked KILLED (with checkpoints) the sweep ends."""
        if self.sweep_dir is None:
            raise KeyboardInterrupt(f"signal {signum}")
        if self._stopped:  # a second Ctrl-C: stop waiting for the workers
            self._abandon()
            print(f"Sweep stopped again by signal {signum}: not waiting for its workers. Runs "
                  f"they leave RUNNING are marked FAILED by `python -m pipeline.tracking reap` "
                  f"or by resuming with the same command and sweep.resume={self._stopped_parent}",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            # Not SystemExit: this signal can land inside the interpreter's shutdown (loky's
            # atexit joins its threads), where a raised exception prints a traceback. The
            # workers' watchdog stops them once this process is gone.
            os._exit(128 + signum)
        self._stopped = signum
        self._stopped_parent = self.parent_run_id
        with contextlib.suppress(OSError):
            (self.sweep_dir / workers.STOP_FILE).write_text(str(signum))
        signalled: set[int] = set()
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            busy = workers.busy_workers(self.sweep_dir)
            for pid in busy - signalled:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            signalled |= busy
            if not busy:
                break
            time.sleep(0.2)
        parent = self.parent_run_id
        self._abandon()
        print(f"Sweep stopped by signal {signum}: its runs are marked KILLED. Continue it with "
              f"the same command and sweep.resume={parent}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)


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
