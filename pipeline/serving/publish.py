"""The report stage's one call: write the run's few-shot predictor state and log it as the
MLflow model ``few_shot/`` beside the network (``model/``)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.algorithms import Algorithm
from pipeline.data import TaskSet
from pipeline.serving import export
from pipeline.tracking import Tracker, few_shot

log = logging.getLogger(__name__)


def log_few_shot(tracker: Tracker, algo: Algorithm, tasks: TaskSet) -> bool:
    """Log ``algo``'s few-shot predictor in ``tracker``'s run; False if there is none to log
    (an algorithm without meta-learned adaptation) or it could not be built (a warning says
    why: the run's results stand without it)."""
    folder = Path(tracker.local_dir) / "artifacts" / few_shot.NAME / "state"
    try:
        state = export.write(algo, tasks, folder)
    except Exception as e:
        log.warning("The few-shot model was not logged: building it failed (%s: %s).",
                    type(e).__name__, e)
        return False
    if state is None:
        return False
    return few_shot.log_model(tracker, state, export.PREDICTOR_FILE, export.takes_images(state))
