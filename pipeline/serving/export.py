"""What a run's few-shot predictor needs of it, written to a folder
(:mod:`pipeline.serving.few_shot_predictor` reads it back without the project).

The network is written with stock Keras layers (:func:`pipeline.models.portable`); ``state.json``
says how the algorithm adapts at meta-test (its kind, ``test_inner_steps``, the inner rate, ANIL's
mask) and what a task looks like; Meta-SGD's learned rates go to ``rates.npz``. For a tabular run
the preprocessing fitted on its training tasks (numeric medians, means and stds, the categories)
is refitted here from the run's data config and seed, which the task file records: the task set
keeps only counts of what was done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.algorithms import Algorithm
from pipeline.algorithms.anil import ANIL
from pipeline.algorithms.maml import MAML
from pipeline.algorithms.metasgd import MetaSGD
from pipeline.algorithms.protonet import ProtoNet
from pipeline.algorithms.reptile import Reptile
from pipeline.config.data import ImagesDataConfig, OmniglotDataConfig
from pipeline.data import REGRESSION, TaskSet, stream_rng
from pipeline.models import portable
from pipeline.serving import few_shot_predictor as fsp

log = logging.getLogger(__name__)

#: The predictor's source file, copied beside the logged model (its ``code/``).
PREDICTOR_FILE = Path(fsp.__file__)


def adaptation(algo: Algorithm) -> str | None:
    """How ``algo`` adapts at meta-test, or None if it has no meta-learned state to serve
    (the scratch baseline, the notebook's stand-in)."""
    if isinstance(algo, ProtoNet):
        return fsp.PROTOTYPES
    if isinstance(algo, Reptile):
        return fsp.FINETUNE
    if isinstance(algo, MAML):
        return fsp.SGD
    return None


def spec(algo: Algorithm, tasks: TaskSet) -> fsp.Spec | None:
    """The predictor's description of the run (None: nothing to serve)."""
    kind = adaptation(algo)
    if kind is None or not algo.meta_learns:
        return None
    fields: dict = {}
    if isinstance(algo, MAML):
        fields = {"steps": int(algo.test_steps), "inner_lr": float(algo.inner_lr.numpy()),
                  "learned_rates": isinstance(algo, MetaSGD)}
        if isinstance(algo, ANIL):
            fields["mask"] = [bool(m) for m in algo.inner_mask()]
    elif isinstance(algo, Reptile):
        fields = {"steps": int(algo.test_steps), "inner_lr": float(algo.cfg.inner_lr),
                  "inner_optimizer": algo.cfg.inner_optimizer}
    return fsp.Spec(algorithm=algo.name, adaptation=kind, loss=algo.loss.kind,
                    task_type=tasks.task_type, num_outputs=int(tasks.num_outputs),
                    input_shape=tuple(int(s) for s in tasks.input_shape),
                    tabular=tabular_prep(tasks), image=image_files(tasks), **fields)


def _origin(tasks: TaskSet) -> dict:
    """The data config and seed the task file records (empty without a task file)."""
    if tasks.path is None or not Path(tasks.path).exists():
        return {}
    with np.load(tasks.path, allow_pickle=False) as f:
        return json.loads(str(f["meta"]))


def image_files(tasks: TaskSet) -> fsp.ImageFiles | None:
    """How an image run's family decodes its files (:mod:`pipeline.data.omniglot`: greyscale,
    inverted, resized; :mod:`pipeline.data.images`: RGB, resized unless ``image_size`` is
    null); None for other families."""
    cfg = _origin(tasks).get("config", {})
    if cfg.get("family") == OmniglotDataConfig.family:
        return fsp.ImageFiles(mode="L", invert=True, resize=True)
    if cfg.get("family") == ImagesDataConfig.family:
        return fsp.ImageFiles(mode="RGB", invert=False, resize=cfg.get("image_size") is not None)
    return None


def tabular_prep(tasks: TaskSet) -> fsp.Tabular | None:
    """A tabular run's preprocessing, refitted from the config and seed its task file records
    (the same tables, the same split, the same training rows); None for other families."""
    meta = _origin(tasks)
    cfg = meta.get("config", {})
    if cfg.get("family") != "tabular":
        return None
    from pipeline.data.tabular.checks import check_sources
    from pipeline.data.tabular.preprocess import fit

    splits = check_sources(cfg, stream_rng(int(meta["seed"]), "data"))
    prep = fit(cfg, splits["train"])
    return fsp.Tabular(target=cfg["target"], numeric=list(prep.numeric),
                       categories={k: list(v) for k, v in prep.categories.items()},
                       medians=[float(v) for v in prep.medians],
                       mean=[float(v) for v in prep.mean], std=[float(v) for v in prep.std],
                       normalize=cfg["normalize"], missing=cfg["missing"])


def takes_images(folder: Path) -> bool:
    """Whether the predictor state in ``folder`` decodes image files (its model needs Pillow)."""
    spec = fsp.Spec.from_json(json.loads((Path(folder) / fsp.STATE_FILE).read_text()))
    return spec.image is not None


def write(algo: Algorithm, tasks: TaskSet, folder: Path) -> Path | None:
    """Write the predictor's state for ``algo`` to ``folder``; None if it has nothing to serve."""
    described = spec(algo, tasks)
    if described is None:
        log.info("%s has no meta-learned adaptation to serve: no few-shot model logged.",
                 algo.name)
        return None
    if described.task_type == REGRESSION and described.adaptation == fsp.PROTOTYPES:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = portable(algo.model)
    model.save(folder / fsp.MODEL_FILE)
    if isinstance(algo, MetaSGD):
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        rates = algo.learned_lrs()
        assert [r.shape for r in rates] == shapes, "rates follow the model's weights"
        np.savez(folder / fsp.RATES_FILE, **{f"rate_{i}": r for i, r in enumerate(rates)})
    data = asdict(described)
    data["input_shape"] = list(described.input_shape)
    (folder / fsp.STATE_FILE).write_text(json.dumps(data, indent=1))
    return folder
