"""The run's few-shot predictor as an MLflow pyfunc model (``few_shot/``): logging it, finding
it, registering it and loading it.

The model is "models from code": :mod:`pipeline.tracking.few_shot_entry` is its code, the
predictor's source file its ``code/``, the state folder its one artifact, and its requirements
are TensorFlow, Keras, NumPy and pandas (and Pillow for an image run) pinned to this
environment's versions. Nothing of the
project is needed to load or serve it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, TrackingError
from pipeline.tracking import keys, store

log = logging.getLogger(__name__)

#: The logged model's name (``runs:/<run id>/few_shot``).
NAME = "few_shot"
ENTRY_FILE = Path(__file__).with_name("few_shot_entry.py")
#: The alias :func:`register` points at the version it registers.
ALIAS = "champion"


def requirements(images: bool = False) -> list[str]:
    """The predictor's packages pinned to this environment's versions (Pillow: an image run's,
    which decodes image files)."""
    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    pinned = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}",
              f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    if images:
        import PIL

        pinned.append(f"pillow=={PIL.__version__}")
    return pinned


def log_model(tracker: Any, state_dir: Path, predictor_file: Path, images: bool = False) -> bool:
    """Log the predictor of ``tracker``'s open run (``images``: it decodes image files, so
    Pillow is pinned too); False (and a warning) if the store refused it, with the state folder
    queued as a plain artifact instead so nothing is lost."""
    import mlflow
    from mlflow.models import Model

    try:
        with tracker._timed(), _importable(predictor_file):
            logged = mlflow.initialize_logged_model(NAME, source_run_id=tracker.run_id,
                                                    experiment_id=tracker.experiment_id)
            Model.log(None, mlflow.pyfunc, name=NAME, run_id=tracker.run_id,
                      model_id=logged.model_id, python_model=str(ENTRY_FILE),
                      artifacts={"state": str(state_dir)}, code_paths=[str(predictor_file)],
                      pip_requirements=requirements(images))
        return True
    except Exception as e:
        log.warning("Could not log the few-shot model (%s); its state is queued as the artifact "
                    "folder %s/state instead.", keys.plain_text(str(e))[:300], NAME)
        tracker.log_artifacts(state_dir, f"{NAME}/state")
        return False


@contextlib.contextmanager
def _importable(predictor_file: Path) -> Iterator[None]:
    """The predictor importable by its file name while MLflow checks the model's code (as
    it will be from the model's ``code/`` folder), and forgotten afterwards."""
    folder, module = str(Path(predictor_file).parent), Path(predictor_file).stem
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        sys.modules.pop(module, None)


def model_uri(ref: str) -> str:
    """A run id (32 hex digits) as its few-shot model's URI; any other URI or path as given."""
    if len(ref) == 32 and all(c in "0123456789abcdef" for c in ref.lower()):
        return f"runs:/{ref}/{NAME}"
    return ref


def load(ref: str, tracking_uri: str | None = None) -> Any:
    """The pyfunc model of a run id, ``runs:/``/``models:/`` URI or local folder."""
    import mlflow

    if tracking_uri:
        store.client(tracking_uri)  # bounded HTTP retries
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri(ref))


def logged(uri: str, run_id: str) -> bool:
    """Whether run ``run_id`` logged a few-shot model."""
    c = store.client(uri)
    try:
        run = c.get_run(run_id)
        ids = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
        return any(c.get_logged_model(i).name == NAME for i in ids)
    except Exception:
        return False


def register(uri: str, run_id: str, name: str, description: str,
             tags: Mapping[str, Any]) -> str:
    """Register run ``run_id``'s few-shot model as a new version of ``name``, point the
    :data:`ALIAS` alias at it; return the version."""
    if not logged(uri, run_id):
        raise TrackingError(f"run {run_id} has no logged few-shot model ({NAME}/): nothing to "
                            f"register.")
    return store.register_model(uri, run_id, name, description, tags, artifact=NAME, alias=ALIAS)


def predict(model: Any, model_input: Any) -> Any:
    """``model.predict``, with the predictor's refusal of bad input raised as a
    :class:`~pipeline.errors.DataError` (its message unchanged)."""
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(model_input)
    except MlflowException as e:
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise DataError(e.message) from None
        raise


def spec(model: Any) -> Any:
    """The loaded few-shot model's description of its run (the predictor's ``Spec``)."""
    return model.unwrap_python_model().predictor.spec
