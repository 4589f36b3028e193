"""This process's state and its exit: whether the pipeline's own code started, the signal that
stopped it, the status it leaves with, its signal handlers, and the one table that turns an
error into a line and an exit status (docs/reliability.md, "Exit statuses").

Every command line ends here: ``python -m pipeline`` (:func:`pipeline.__main__.cli`), and the
``pipeline.resume`` / ``pipeline.rerun`` mains (:func:`pipeline.replay.logged.report_failure`).
Code on the way raises; only :func:`report` prints the line and picks the status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import NoReturn

from pipeline.errors import INTERRUPTED, PipelineError, Refusal, TrackingError

#: Whether the pipeline's own code started (Hydra's composition errors come before it and are
#: refusals, exit status 2, not failures).
started = False
#: The signal that stopped this process's run, if one did (a sweep's parent is then KILLED).
stopped_by: int | None = None
#: The status this process leaves with (:func:`leave`): 1 unless its main returned or exited.
exit_code = 1

#: Exit statuses (docs/reliability.md, "Exit statuses").
DONE, FAILED, REFUSED = 0, 1, 2
#: What the line says before the error's message, by where the error stopped the command
#: (and :data:`~pipeline.errors.IN_CONFIG`).
CANNOT_START = "Cannot start"
RUN_FAILED = "Run failed (marked FAILED in MLflow)"
NOT_RECORDED = "Run not recorded in full"


def mark_started() -> None:
    """The pipeline's own code runs: a later exit status 1 is a failure, not Hydra's refusal."""
    global started
    started = True


# --- signals ----------------------------------------------------------------------------------


def _sigterm_as_interrupt(signum, frame) -> None:
    global stopped_by
    stopped_by = signum
    raise KeyboardInterrupt(f"signal {signum}")


def note_signal(signum, frame) -> None:
    """Between a sweep worker's jobs: a SIGTERM is noted, nothing is running to stop."""
    global stopped_by
    stopped_by = signum


def forget_signal() -> None:
    """Before a job in a long-lived worker: the signal an earlier job noted is not this one's."""
    global stopped_by
    stopped_by = None


def stop_on_sigterm() -> None:
    """Make SIGTERM (a scheduler's or a user's stop) end a run like Ctrl-C: marked KILLED in
    MLflow, with a checkpoint if meta-training had started. Main thread only; else a no-op."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def interrupted_status() -> int:
    """The exit status of a command whose run a signal stopped: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + (stopped_by or signal.SIGINT)


# --- the exit ---------------------------------------------------------------------------------


def outcome(error: BaseException, failed: str = RUN_FAILED) -> tuple[str, int]:
    """The one line and the exit status for ``error``, which ended a command: a
    :class:`~pipeline.errors.Refusal` is refused (2) with its heading, a Ctrl-C or SIGTERM is
    interrupted (130 / 143, the run KILLED with a checkpoint), a store that lost records or a
    :class:`~pipeline.errors.PipelineError` failed the run (1, ``failed`` says what), anything
    else failed with its type named."""
    if isinstance(error, Refusal):
        return f"{error.heading}: {error.error}", REFUSED
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, interrupted_status()
    if isinstance(error, TrackingError):
        from pipeline.tracking.run import StoreLost, Undelivered
        from pipeline.tracking.store import StoreNotCreated

        if isinstance(error, StoreNotCreated):  # nothing was recorded, nothing is left behind
            return f"{CANNOT_START}: {error}", REFUSED
        if isinstance(error, Undelivered | StoreLost):  # the message says what the store holds
            return f"{NOT_RECORDED}: {error}", FAILED
    if isinstance(error, PipelineError):
        return f"{failed}: {error}", FAILED
    return f"{failed}: {type(error).__name__}: {error}", FAILED


def report(error: BaseException, failed: str = RUN_FAILED) -> int:
    """Say :func:`outcome`'s line on stderr and return its status."""
    line, status = outcome(error, failed)
    print(line, file=sys.stderr)
    return status


def exit_with(error: BaseException, failed: str = RUN_FAILED) -> NoReturn:
    """:func:`report`, then exit with its status."""
    global exit_code
    exit_code = report(error, failed)
    sys.exit(exit_code)


def leave_now(status: int) -> NoReturn:
    """Exit with ``status`` without the interpreter's teardown of every loaded module (seconds
    with TensorFlow): for an exit handler that runs last, once runs are ended and flushed.
    Logs and the standard streams are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def leave() -> None:
    """The last exit handler of a command: leave with :data:`exit_code` without the
    interpreter's teardown (about 1 s here, on every command's wall time and on a sweep's
    end). What matters is done by then: runs ended and flushed, the other exit handlers run.
    It also keeps a second Ctrl-C from landing in that teardown, where the default handlers are
    back and the signal would kill the process (exit -2 instead of 130)."""
    leave_now(exit_code)


def status_of(code: object) -> int:
    """The exit status Python gives ``SystemExit(code)``."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1
