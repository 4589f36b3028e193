"""Errors a user can act on. The CLI prints their message alone (no traceback unless
``HYDRA_FULL_ERROR=1``); anything else is a bug and keeps its traceback. Which line and exit
status each gives is :func:`pipeline.process.outcome`'s."""

from __future__ import annotations


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


class TrialPruned(Exception):
    """A search's pruner stopped this trial at a validation point: not a failure. The run is
    ended with ``run_status`` (FINISHED: a normal end of a search's trial, drawn with MLflow's
    green tick; FAILED and KILLED share a red cross), with ``run_tags`` and no ``error`` tag,
    its name prefixed with ``run_name_prefix`` (what tells it from a complete trial)."""

    run_status = "FINISHED"

    def __init__(self, message: str, run_tags: dict[str, str], run_name_prefix: str = ""):
        super().__init__(message)
        self.run_tags = run_tags
        self.run_name_prefix = run_name_prefix


#: What a command stopped by Ctrl-C or SIGTERM says (its run is KILLED, with a checkpoint).
INTERRUPTED = ("Interrupted: the run is marked KILLED in MLflow; its checkpoint (if "
               "meta-training had started) is logged and `python -m pipeline.resume RUN_ID` "
               "continues it.")


#: What a refused config's line starts with.
IN_CONFIG = "Error in config"


class Refusal(SystemExit):
    """``error`` refused the command before it started: on its way to the command's edge
    (:func:`pipeline.process.report`), which says ``heading: error`` in one line and exits with
    status 2. A ``SystemExit`` so that it passes, unprinted, through the code that catches
    ``Exception`` on the way (Hydra's callbacks warn and go on; its job runner and reporter
    print tracebacks)."""

    def __init__(self, error: BaseException, heading: str = IN_CONFIG):
        super().__init__(2)
        self.error, self.heading = error, heading

    def __str__(self) -> str:
        return f"{self.heading}: {self.error}"
