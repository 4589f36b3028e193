"""Environment for TensorFlow, set before anything imports it.

TensorFlow prints C++ start-up lines on every CPU run (``cudart_stub``: no CUDA drivers,
``cuInit`` failed, oneDNN notes). The ``cuInit`` error is logged through TensorFlow's logging, so
on a machine without an NVIDIA device the log level defaults to errors-off (3; 2 elsewhere);
the others are printed by the libraries as they load, before any log level applies, so the CLIs
import TensorFlow once through :func:`import_tensorflow`, with the C++ side's stderr muted for
that moment. Set ``TF_CPP_MIN_LOG_LEVEL`` yourself to see everything again.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_USER_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                      "2" if any(Path("/dev").glob("nvidia[0-9]*")) else "3")


def import_tensorflow() -> None:
    """Import TensorFlow (a no-op if it is already imported) without its start-up chatter."""
    if "tensorflow" in sys.modules or _USER_LEVEL:
        import tensorflow

        _quiet_retracing_notice()
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _quiet_retracing_notice()


class _NoRetracingNotice(logging.Filter):
    """TensorFlow counts tracings per Python function across all ``tf.function`` objects made
    from it, and warns after 5 in 10 calls. A warm sweep worker builds each job's algorithm, and
    its compiled steps, anew (:mod:`pipeline.run.warm` reuses them only for the same graph), so
    every few jobs it says "triggered tf.function retracing" with advice that does not apply:
    one tracing per job is the design, and each job logs whether it traced. Silenced here, once
    per process, and only that notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing_notice() -> None:
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _NoRetracingNotice) for f in logger.filters):
        logger.addFilter(_NoRetracingNotice())
