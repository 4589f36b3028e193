"""Errors a user can act on. The CLI prints their message alone (no traceback unless
``HYDRA_FULL_ERROR=1``); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys


class PipelineError(Exception):
    """Base of the errors whose message tells the user what to change."""


class ConfigError(PipelineError, ValueError):
    """A configuration value is out of range, not an allowed choice, or inconsistent."""


class DataError(PipelineError, ValueError):
    """A data file is missing, unreadable, or does not match its fingerprint."""


class DivergenceError(PipelineError, RuntimeError):
    """A meta-training loss became NaN or infinite."""


class TrackingError(PipelineError, RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


#: Whether the pipeline's own code started (Hydra's composition errors come before it and are
#: refusals, exit status 2, not failures).
started = False


class TrialPruned(Exception):
    """A search's pruner stopped this trial at a validation point: not a failure. The run is
    ended with ``run_status`` (KILLED: visibly not a finished result) and ``run_tags``."""

    run_status = "KILLED"

    def __init__(self, message: str, run_tags: dict[str, str]):
        super().__init__(message)
        self.run_tags = run_tags


#: The signal that stopped this process's run, if one did (a sweep's parent is then KILLED).
stopped_by: int | None = None


def _sigterm_as_interrupt(signum, frame) -> None:
    global stopped_by
    stopped_by = signum
    raise KeyboardInterrupt(f"signal {signum}")


def note_signal(signum, frame) -> None:
    """Between a sweep worker's jobs: a SIGTERM is noted, nothing is running to stop."""
    global stopped_by
    stopped_by = signum


#: What a command stopped by Ctrl-C or SIGTERM says (its run is KILLED, with a checkpoint).
INTERRUPTED = ("Interrupted: the run is marked KILLED in MLflow; its checkpoint (if "
               "meta-training had started) is logged and `python -m pipeline.resume RUN_ID` "
               "continues it.")


def interrupted_status() -> int:
    """The exit status of a command whose run a signal stopped: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + (stopped_by or signal.SIGINT)


def stop_on_sigterm() -> None:
    """Make SIGTERM (a scheduler's or a user's stop) end a run like Ctrl-C: marked KILLED in
    MLflow, with a checkpoint if meta-training had started. Main thread only; else a no-op."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def leave_now(status: int) -> None:
    """Exit with ``status`` without the interpreter's teardown of every loaded module (seconds
    with TensorFlow): for an exit handler that runs last, once runs are ended and flushed.
    Logs and the standard streams are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
