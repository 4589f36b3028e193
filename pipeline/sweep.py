"""Multirun tracking: one MLflow parent run per sweep, a group run per seed group, a run per job.

:class:`SweepCallback` (``hydra.callbacks.sweep`` in ``conf/config.yaml``) runs in the process
that launches the sweep. Before any job starts it creates the tracking store (parallel jobs that
open a fresh SQLite store at once corrupt its schema), the parent run and, when the grid varies a
``sweep.group_by`` key (the seed), one group run per group (:mod:`pipeline.groups`), and writes
their ids to ``<sweep dir>/mlflow_parent.json``. Each job, in whatever process or machine the
launcher puts it, finds its parent and group through that file or, without a shared file system,
through tags in the tracking store (:func:`job_context`). A group is written when its last job
ends; when the sweep ends, the parent gets the comparison of its groups (or jobs).

``sweep.resume=<PARENT_RUN_ID>|last`` attaches the same command to an earlier sweep: FINISHED
jobs are skipped, KILLED ones continue from their checkpoints (as ``pipeline.resume`` does),
FAILED ones (and KILLED ones without a checkpoint) run again as new runs tagged with the run
they replace, which is kept for the record.

SIGTERM to the launching process is passed on to its worker processes; it waits until their runs
are marked KILLED (with checkpoints), then ends the parent KILLED, so the sweep can be resumed.

Single runs never touch any of this: the callback only acts on multirun events.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import groups
from pipeline.config import TrackingConfig
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
#: What a job of a resumed sweep does: nothing ran yet / FINISHED / continue / run again.
NEW, SKIP, RESUME, RERUN = "new", "skipped", "resumed", "rerun"
#: Longest wait, after SIGTERM, for the workers' runs to be marked KILLED.
STOP_WAIT_S = 120.0


def swept_keys(overrides: list[str], sweeper_params: dict[str, Any] | None = None) -> list[str]:
    """Keys that vary across the sweep: comma/range/interval overrides plus an Optuna space."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return keys + [k for k in (sweeper_params or {}) if k not in keys]


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def run_name(base: str, job_overrides: list[str], swept: list[str]) -> str:
    """A readable child name: the base name and the swept values, ``maml inner_lr=0.1 seed=1``."""
    values = dict(_split(o) for o in job_overrides)
    parts = [f"{k.rsplit('.', 1)[-1].rsplit('/', 1)[-1]}={values[k]}" for k in swept
             if k in values]
    return " ".join([base, *parts])


def without_resume(overrides: list[str]) -> list[str]:
    """The command's overrides minus ``sweep.resume`` (a resumed sweep is the same command)."""
    return [o for o in overrides if _split(o)[0] != "sweep.resume"]


def grid(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides in job-number order, as Hydra's basic sweeper expands the grid;
    None for other sweepers (an Optuna search decides its trials as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if not str(config.hydra.sweeper._target_).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args),
                                            None)[0]
    except Exception as e:  # a sweep syntax only the launcher's config loader resolves
        log.warning("Could not expand the sweep's grid (%s): no seed groups.", e)
        return None


def _tracking_cfg(config: DictConfig) -> TrackingConfig:
    obj = OmegaConf.to_object(config.tracking)
    assert isinstance(obj, TrackingConfig)
    return obj


def _refuse(message: str) -> None:
    """A bad ``sweep.*`` value, found before any job starts: one line, exit status 2."""
    print(f"Error in config: {message}", file=sys.stderr)
    sys.exit(2)


# --- which run stands for a job, and what a resumed sweep does with it --------------------------


def group_map(uri: str, parent_run_id: str) -> dict[int, str]:
    """Job number -> group run id, from the store (for jobs without the sweep folder)."""
    out = {}
    for r in store.search_runs(uri, parent_run_id=parent_run_id,
                               filter_string=f"tags.{keys.SWEEP_ROLE} = '{keys.ROLE_GROUP}'"):
        out |= {int(n): r.run_id for n in json.loads(r.tags.get(keys.GROUP_JOBS, "[]"))}
    return out


def job_runs(uri: str, parent_run_id: str, group_ids: set[str]) -> dict[int, RunRecord]:
    """The run standing for each job of a sweep (the latest not replaced), through its groups."""
    runs = []
    for container in [parent_run_id, *sorted(group_ids)]:
        runs += [r for r in store.search_runs(uri, parent_run_id=container)
                 if r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_CHILD]
    return groups.effective(runs)


def action(uri: str, run: RunRecord | None) -> str:
    """What a resumed sweep does with a job whose standing run is ``run``."""
    if run is None:
        return NEW
    if run.status == keys.FINISHED:
        return SKIP
    if run.status in (keys.KILLED, keys.RUNNING) and store.has_artifact(uri, run.run_id,
                                                                        keys.CHECKPOINT_DIR):
        return RESUME
    return RERUN


class SweepCallback(Callback):
    """Creates the sweep's parent and group runs before the jobs and the comparison after."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.uri: str | None = None
        self.group_ids: set[str] = set()
        self.sweep_dir: Path | None = None
        self._stopped: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = _tracking_cfg(config)
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
        (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # left by a stopped run of this sweep
        (sweep_dir / PARENT_FILE).write_text(json.dumps(
            {"run_id": self.parent_run_id, "tracking_uri": cfg.uri, "swept": swept,
             "groups": {str(n): g for n, g in mapping.items()},
             "resume": bool(resume)}))
        _warn_oversubscription(config)
        global _launcher_pid
        _launcher_pid = os.getpid()
        atexit.register(self._abandon)
        self._handle_signals()
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
                keys.SWEEP_SWEEPER: config.hydra.sweeper._target_.rsplit(".", 1)[-1]}
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
            except Exception:
                found = None
            if found is None or found.tags.get(keys.SWEEP_ROLE) != keys.ROLE_PARENT:
                _refuse(f"sweep.resume={resume}: no sweep parent run with that id in {uri}; give "
                        f"a parent run id (pipeline.compare lists them) or last.")
        assert found is not None
        before = without_resume(json.loads(found.tags.get(keys.SWEEP_OVERRIDES, "[]")))
        if before != without_resume(overrides):
            _refuse(f"sweep.resume={found.run_id}: that sweep ran the overrides {before}, this "
                    f"command has {without_resume(overrides)}; resume with the same command.")
        self.parent_run_id = found.run_id
        mapping = group_map(uri, found.run_id)
        self.group_ids = set(mapping.values())
        standing = job_runs(uri, found.run_id, self.group_ids)
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
        store.set_tags(uri, found.run_id, {
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
        from pipeline import compare

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
        with contextlib.suppress(Exception):
            for group_id in sorted(self.group_ids):
                groups.write_if_complete(self.uri, group_id, self.sweep_dir)
                if store.get_run(self.uri, group_id).status == keys.RUNNING:
                    store.set_status(self.uri, group_id, status)
            store.set_tags(self.uri, self.parent_run_id, {keys.ERROR: reason})
            store.end_run(self.uri, self.parent_run_id, status)
        self.parent_run_id = None

    # --- SIGTERM / Ctrl-C in the launching process --------------------------------------------

    def _handle_signals(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        """Stop the sweep: no job starts any more (a stop file in the sweep folder), SIGTERM goes
        to the worker processes running a job (Ctrl-C to a terminal reaches them already), and
        once their runs are marked KILLED (with checkpoints) the sweep ends."""
        if self._stopped or self.sweep_dir is None:
            raise KeyboardInterrupt(f"signal {signum}")
        self._stopped = signum
        with contextlib.suppress(OSError):
            (self.sweep_dir / STOP_FILE).write_text(str(signum))
        signalled: set[int] = set()
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            busy = _busy_workers(self.sweep_dir)
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


STOP_FILE, JOBS_DIR = ".stop", ".running-jobs"
#: The process that launched the sweep (set by the callback; workers, spawned or remote, have
#: None).
_launcher_pid: int | None = None


def _busy_workers(sweep_dir: Path) -> set[int]:
    """Child processes of this one that are running a job (each job marks its process in the
    sweep folder): only those are sent SIGTERM; idle or fresh workers are left alone."""
    marked = {int(p.name) for p in (sweep_dir / JOBS_DIR).glob("[0-9]*")}
    return marked & set(_children())


def _children() -> list[int]:
    """Live child processes of this one (loky/joblib workers), from /proc."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


@contextlib.contextmanager
def job_guard() -> Iterator[None]:
    """Around a multirun job: refuse to start once the sweep is stopping, mark this process as
    running a job, and let SIGTERM stop the job (its run KILLED, with a checkpoint). Afterwards
    a worker process ignores SIGTERM (nothing to stop) and the launching process gets its own
    handler back."""
    from hydra.types import RunMode

    from pipeline import errors

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        yield
        return
    sweep_dir = Path(str(hc.sweep.dir)).absolute()
    if (sweep_dir / STOP_FILE).exists():
        raise KeyboardInterrupt("the sweep is stopping: job not started")
    marker = sweep_dir / JOBS_DIR / str(os.getpid())
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(hc.job.num))
    previous = signal.getsignal(signal.SIGTERM)
    errors.stop_on_sigterm()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)
        launcher = _launcher_pid == os.getpid()  # the basic launcher: jobs run in-process
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous if launcher else errors.note_signal)
        if not launcher:
            _exit_fast_at_shutdown()


_fast_exit_registered = False


def _exit_fast_at_shutdown() -> None:
    """A worker process (joblib/loky, Ray) leaves without the interpreter's teardown of
    TensorFlow and every loaded module (seconds per worker, on the sweep's critical path: the
    launcher waits for its workers to exit). Its runs are flushed and ended by then."""
    global _fast_exit_registered
    if _fast_exit_registered:
        return
    _fast_exit_registered = True

    def leave() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    atexit.register(leave)


def _base_name(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "algorithm.name", default="run"))


def _warn_oversubscription(config: DictConfig) -> None:
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    threads = OmegaConf.select(config, "runtime.intra_op_threads", default=1)
    cores = os.cpu_count() or 1
    if isinstance(n_jobs, int) and n_jobs > 1 and (threads == 0 or n_jobs * threads > cores):
        log.warning("hydra.launcher.n_jobs=%d with runtime.intra_op_threads=%s oversubscribes "
                    "%d cores: jobs will fight for them. Lower n_jobs or set "
                    "runtime.intra_op_threads=1.", n_jobs, threads, cores)


# --- inside a job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobContext:
    """What a sweep job adds to its run (parent or group link, a name from its overrides), and
    what a resumed sweep does with it (``action``, the job's earlier run ``previous``)."""

    run_name: str
    tags: dict[str, str]
    uri: str
    num: int
    group_run_id: str | None = None
    action: str = NEW
    previous: RunRecord | None = None
    sweep_dir: Path | None = None


def _parent_from_store(cfg: TrackingConfig, sweep_dir: Path) -> dict[str, Any] | None:
    runs = store.search_runs(cfg.uri, [cfg.experiment_name],
                             f"tags.{keys.SWEEP_DIR} = '{sweep_dir}'", include_parents=True)
    parents = [r for r in runs if r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_PARENT]
    if not parents:
        return None
    run_id = parents[-1].run_id
    return {"run_id": run_id, "swept": json.loads(parents[-1].tags[keys.SWEEP_PARAMS]),
            "groups": {str(n): g for n, g in group_map(cfg.uri, run_id).items()},
            "resume": keys.RESUMED_SWEEP in parents[-1].tags}


def job_context(cfg: TrackingConfig, base_name: str) -> JobContext | None:
    """Inside a multirun job: the parent or group run, the child name and, in a resumed sweep,
    what to do; None for a single run."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hc.sweep.dir)).absolute()
    parent_file = sweep_dir / PARENT_FILE
    parent = json.loads(parent_file.read_text()) if parent_file.is_file() else None
    if parent is None:  # another machine without the sweep dir: ask the shared store
        parent = _parent_from_store(cfg, sweep_dir)
    overrides = without_resume(list(hc.overrides.task))
    swept = parent["swept"] if parent else swept_keys(overrides)
    num = int(hc.job.num)
    tags = {keys.SWEEP_ID: f"{sweep_dir.parent.name}/{sweep_dir.name}",
            keys.SWEEP_JOB: str(num), keys.SWEEP_ROLE: keys.ROLE_CHILD}
    group_id = None
    what, previous = NEW, None
    if parent:
        group_id = parent.get("groups", {}).get(str(num))
        tags[keys.PARENT_RUN] = group_id or parent["run_id"]
        if group_id:
            tags[keys.GROUP_RUN] = group_id
        if parent.get("resume"):
            previous = job_runs(cfg.uri, parent["run_id"],
                                {group_id} if group_id else set()).get(num)
            what = action(cfg.uri, previous)
            if what == RERUN and previous is not None:
                tags[keys.REPLACES] = previous.run_id
    else:
        log.warning("No parent run found for sweep %s: this job is logged on its own.", sweep_dir)
    return JobContext(run_name(base_name, overrides, swept or overrides), tags, cfg.uri, num,
                      group_id, what, previous, sweep_dir)


def stored_objective(job: JobContext) -> tuple[float, bool]:
    """A skipped (FINISHED) job's objective, as the run logged it, and whether higher is
    better."""
    from pipeline.compare import objective_metric

    assert job.previous is not None
    name, higher = objective_metric(set(job.previous.metrics))
    return (job.previous.metrics[name] if name else float("nan")), higher


def job_ended(job: JobContext) -> None:
    """After a job's run ended (FINISHED or FAILED): link a replaced run to its replacement, and
    write the job's group if this was its last job. Never fails the job."""
    try:
        if job.action == RERUN and job.previous is not None:
            new = store.search_runs(job.uri, parent_run_id=job.tags[keys.PARENT_RUN],
                                    filter_string=f"tags.{keys.REPLACES} = "
                                                  f"'{job.previous.run_id}'")
            if new:
                store.set_tags(job.uri, job.previous.run_id, {keys.REPLACED_BY: new[-1].run_id})
        if job.group_run_id:
            groups.write_if_complete(job.uri, job.group_run_id, job.sweep_dir)
    except Exception as e:
        log.warning("Could not update the sweep's group run after job %d: %s", job.num, e)


def objective(value: float, higher_is_better: bool) -> float:
    """The job's return value, checked against an Optuna sweeper's ``direction``.

    A search that maximises an error (or minimises an accuracy) would silently find the worst
    configuration; refuse it with the key to change.
    """
    if not HydraConfig.initialized():
        return value
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=None)
    if direction is None:
        return value
    want = "maximize" if higher_is_better else "minimize"
    if str(direction).rsplit(".", 1)[-1].lower() != want:
        from pipeline.errors import ConfigError

        raise ConfigError(
            f"hydra.sweeper.direction={direction} does not fit the objective, which is better "
            f"when {'higher' if higher_is_better else 'lower'}: set "
            f"hydra.sweeper.direction={want}.")
    return value
