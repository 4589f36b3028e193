"""Multirun tracking (``python -m pipeline -m ...``): one MLflow parent run per sweep, a group
run per seed group, a run per job.

:class:`SweepCallback` (``hydra.callbacks.sweep`` in ``conf/config.yaml``) runs in the process that
launches the sweep. Before any job starts it creates the tracking store (parallel jobs that open a
fresh SQLite store at once corrupt its schema), the parent run and, when the grid varies a
``sweep.group_by`` key (the seed), one group run per group (:mod:`pipeline.analysis.groups`), and
writes their ids to ``<sweep dir>/mlflow_parent.json``. Each job, in whatever process or machine the
launcher puts it, finds its parent and group through that file or, without a shared file system,
through tags in the tracking store (:func:`job_context`). A group is written when its last job ends;
when the sweep ends, the parent gets the comparison of its groups (or jobs).

``sweep.resume=<PARENT_RUN_ID>|last`` attaches the same command to an earlier sweep: FINISHED
jobs are skipped, KILLED ones continue from their checkpoints (as ``pipeline.resume`` does),
FAILED ones (and KILLED ones without a checkpoint) run again as new runs tagged with the run
they replace, which is kept for the record.

SIGTERM to the launching process is passed on to its worker processes; it waits until their runs
are marked KILLED (with checkpoints), then ends the parent KILLED, so the sweep can be resumed.

Single runs never touch any of this: the callback only acts on multirun events.

Modules: :mod:`~pipeline.sweep.plan` (swept keys, job names, the grid, what a resumed sweep does
with each job), :mod:`~pipeline.sweep.session` (the one owner of the parent run, the group runs,
the parent file, the heartbeat and the stop), :mod:`~pipeline.sweep.callback` (the launching
process: opens and ends the session), :mod:`~pipeline.sweep.job` (inside a job),
:mod:`~pipeline.sweep.workers` (worker processes, stop and exit).
"""

from pipeline.sweep.callback import SweepCallback
from pipeline.sweep.job import (
    JobContext,
    job_context,
    job_ended,
    objective,
    stored_objective,
)
from pipeline.sweep.plan import NEW, RERUN, RESUME, SKIP, run_name, swept_keys
from pipeline.sweep.session import SweepSession, is_stopping, on_worker_lost
from pipeline.sweep.workers import job_guard

__all__ = ["NEW", "RERUN", "RESUME", "SKIP", "JobContext", "SweepCallback", "SweepSession",
           "is_stopping", "job_context", "job_ended", "job_guard", "objective",
           "on_worker_lost", "run_name", "stored_objective", "swept_keys"]
