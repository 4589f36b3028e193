"""One pipeline run, recorded as one MLflow run: the stages in order,

    generate -> meta_train -> meta_test -> report

each taking only what it needs. The runner owns the run's lifecycle: TensorFlow set-up, the
MLflow run (params, tags, config files; FAILED or KILLED with the reason if a stage raises),
building the algorithm, and keeping the end-of-training checkpoint when a run is stopped later.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import baselines
from pipeline.algorithms import Algorithm, Context, build_algorithm
from pipeline.algorithms.losses import MSE, SOFTMAX, TaskLoss, output_units
from pipeline.algorithms.optimizers import build_optimizer
from pipeline.config import AlgorithmConfig, ClassificationDataConfig, Config, EpisodeDataConfig
from pipeline.config.validate import check_image_size
from pipeline.config.validate import warnings as config_warnings
from pipeline.data import REGRESSION, TaskSet, derive_seed
from pipeline.errors import ConfigError, DataError
from pipeline.models import build_model
from pipeline.run import memory, provenance, runtime, warm
from pipeline.run.checkpoint import Checkpoint
from pipeline.stages import generate, meta_test, meta_train, report
from pipeline.stages.report import Report
from pipeline.stages.validation import Validation
from pipeline.tracking import Tracker, keys, store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """What continuing an interrupted run needs."""

    run_id: str
    checkpoint: Checkpoint
    data_fingerprint: str


@dataclass
class RunResult(Report):
    run_id: str | None = None
    algorithm: Algorithm | None = None
    tasks: TaskSet | None = None


def default_run_name(cfg: Config) -> str:
    """What a run is, at a glance: ``maml synthetic 3-way 5-shot seed 0``."""
    data = cfg.data
    if isinstance(data, ClassificationDataConfig | EpisodeDataConfig):
        shape = f"{data.num_classes}-way {data.k_shot}-shot"
    else:
        shape = f"{getattr(data, 'k_shot', '?')}-shot"
    return f"{cfg.algorithm.name} {data.family} {shape} seed {cfg.seed}"


def task_loss(cfg: Config, tasks: TaskSet) -> TaskLoss:
    if tasks.task_type == REGRESSION:
        return TaskLoss(MSE)
    return TaskLoss(getattr(cfg.model, "head", SOFTMAX))


def build(cfg: Config, tasks: TaskSet, algo_cfg: AlgorithmConfig | None = None) -> Algorithm:
    """The configured algorithm (or ``algo_cfg``) on a freshly initialised model."""
    loss = task_loss(cfg, tasks)
    algo_cfg = algo_cfg or cfg.algorithm
    units = output_units(loss.kind, tasks.num_outputs) if algo_cfg.needs_head else None
    model = build_model(cfg.model, tasks.input_shape, units, derive_seed(cfg.seed, "init"))
    if cfg.model.init_from:
        _load_weights(model, cfg.model.init_from, cfg.tracking.uri)
    optimizer = build_optimizer(cfg.optimizer, total_steps=cfg.meta_train.iterations)
    ctx = Context(model=model, loss=loss, optimizer=optimizer,
                  seed=derive_seed(cfg.seed, "scratch"), jit_compile=cfg.meta_train.jit_compile)
    fresh = build_algorithm(algo_cfg, ctx)
    if not warm.enabled():
        return fresh
    return warm.reuse(_graph_key(cfg, algo_cfg, tasks, loss, units), fresh)


def _graph_key(cfg: Config, algo_cfg: AlgorithmConfig, tasks: TaskSet, loss: TaskLoss,
               units: int | None) -> str:
    """What an algorithm's compiled steps depend on (:mod:`pipeline.run.warm`): not its fed
    values, the seed or the initial weights, which :meth:`Algorithm.adopt` replaces."""
    fed = {f: None for f in algo_cfg.fed_values}
    constant_rate = getattr(cfg.optimizer, "schedule", "constant") == "constant"
    return warm.key(dataclasses.replace(algo_cfg, **fed), cfg.model,
                    dataclasses.replace(cfg.optimizer, learning_rate=0.0) if constant_rate
                    else cfg.optimizer, cfg.meta_train.iterations, cfg.meta_train.jit_compile,
                    loss.kind, list(tasks.input_shape), tasks.num_outputs, units)


def _load_weights(model, model_uri: str, tracking_uri: str) -> None:
    """``model.init_from``: the logged model's weights, which must fit the configured model."""
    try:
        weights = store.model_weights(model_uri, tracking_uri)
    except Exception as e:
        raise ConfigError(f"model.init_from={model_uri!r} could not be loaded from the tracking "
                          f"store {tracking_uri} ({type(e).__name__}: {e}). Give an MLflow model "
                          f"URI such as runs:/<run_id>/model, or a local model folder.") from e
    want = [tuple(w.shape) for w in model.get_weights()]
    got = [tuple(w.shape) for w in weights]
    if want != got:
        raise ConfigError(f"model.init_from={model_uri!r} has weights of shapes {got}; the "
                          f"configured model ({model.name}, for this data) needs {want}. "
                          f"Use the model and data settings of the run that logged it.")
    model.set_weights(weights)


def run_tags(cfg: Config, overrides: list[str] | None) -> dict[str, Any]:
    """What a run is and what it needs to be rerun (code and package versions, overrides)."""
    return {keys.SEED: cfg.seed, keys.ALGORITHM: cfg.algorithm.name,
            keys.DATA_FAMILY: cfg.data.family, keys.MODEL: cfg.model.name,
            keys.HYDRA_OVERRIDES: json.dumps(overrides or []),
            **({keys.BATCH_NORM: cfg.model.batch_norm} if hasattr(cfg.model, "batch_norm")
               else {}),
            **provenance.git_state(), **provenance.versions()}


def execute(cfg: Config, raw: DictConfig | None = None, overrides: list[str] | None = None,
            hydra_dir: Path | None = None, track: bool = True, run_name: str | None = None,
            extra_tags: dict[str, str] | None = None,
            resume: Resume | None = None,
            on_validation: Callable[[int, dict[str, float]], None] | None = None,
            checked: bool = False) -> RunResult:
    """Run every stage; log ``raw`` (the composed config) as params, ``hydra_dir`` as files.

    ``run_name`` replaces ``tracking.run_name`` (default: :func:`default_run_name`);
    ``extra_tags`` (a sweep's parent run, a rerun's origin) are set when the run starts.
    ``resume`` continues an interrupted run in place from its checkpoint (its params and config
    files are already logged). ``on_validation`` gets each validation's ``val/`` values (a
    search's trial reports them to its pruner). ``checked``: :func:`pipeline.run.preflight.check`
    passed for ``cfg`` just before (its store and memory checks are not made again).
    """
    runtime.setup(cfg.runtime, cfg.seed)
    if not track:
        return _stages(cfg, None, resume, on_validation, checked)
    tracker = Tracker(cfg.tracking, Path(cfg.paths.output_dir), store_checked=checked)
    tags = {**run_tags(cfg, overrides), **(extra_tags or {})}
    if resume is not None:
        tags = {keys.RESUMED_AT: resume.checkpoint.progress.iteration}
    name = run_name or cfg.tracking.run_name or default_run_name(cfg)
    with tracker.run(name, tags, run_id=resume.run_id if resume else None):
        if resume is None:
            container = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
            params, location_tags = keys.split_params(keys.params(container))
            tracker.log_params(params)
            tracker.set_tags(location_tags)  # differ between every two jobs: not parameters
            if container:
                tracker.log_dict(container, keys.CONFIG_FILE)
            if hydra_dir is not None and Path(hydra_dir).is_dir():
                tracker.log_artifacts(Path(hydra_dir), keys.HYDRA_DIR)
        result = _stages(cfg, tracker, resume, on_validation, checked)
        result.run_id = tracker.run_id
        result.timings["tracking_s"] = tracker.seconds
        log.info("MLflow run %s (%.2f s waiting on tracking calls)", tracker.run_id,
                 tracker.seconds)
    url = store.ui_url(cfg.tracking.uri, tracker.experiment_id, result.run_id)
    if url:
        log.info("In the MLflow UI: %s", url)
    return result


def _validation(cfg: Config, tasks: TaskSet,
                on_score: Callable[[int, dict[str, float]], None] | None = None
                ) -> Validation | None:
    """Model selection on the data's validation tasks, if ``meta_train.validate_every`` asks."""
    every = cfg.meta_train.validate_every
    if not every:
        return None
    if tasks.val is None:
        raise ConfigError(f"meta_train.validate_every={every} needs validation tasks; the data "
                          f"file {tasks.path} has none.")
    return Validation(tasks.val, every, cfg.meta_test.task_batch_size, on_score)


def _check_tasks(cfg: Config, tasks: TaskSet, tracker: Tracker | None, checked: bool) -> None:
    """What only the generated tasks tell: the images' own size (``data.image_size=null``;
    a configured size was validated already) and the memory estimate with the data's bytes,
    logged to ``tracker``. Refused here only where the preflight could not check it (``checked``:
    it did, for the shape the config gives)."""
    configured = memory.input_shape(cfg)  # None: data.image_size=null, known only now
    if cfg.model.image_model and configured is None:  # a configured size is validated already
        side = min(tasks.input_shape[:2])
        check_image_size(cfg.model, side, f"The images' size ({tasks.input_shape[1]}x"
                                          f"{tasks.input_shape[0]}, data.image_size=null)")
    # The preflight refused a step that cannot fit already, for the shape the config gives.
    estimate = (memory.estimate if checked and configured == tuple(tasks.input_shape)
                else memory.check)(cfg, tasks.input_shape, tasks.nbytes)
    if estimate is not None:
        log.info("memory estimate: %.2f GiB (step %.2f GiB, data %.2f GiB)", estimate.gib,
                 estimate.step / memory.GIB, estimate.data / memory.GIB)
        if tracker is not None:
            tracker.log_metrics({keys.MEMORY_ESTIMATE: estimate.gib})


def _stages(cfg: Config, tracker: Tracker | None, resume: Resume | None = None,
            on_validation: Callable[[int, dict[str, float]], None] | None = None,
            checked: bool = False) -> RunResult:
    for warning in config_warnings(cfg):
        log.warning("%s", warning)
    tasks = generate.run(cfg.data, cfg.seed, cfg.paths.data_dir, tracker,
                         cfg.tracking.log_dataset_max_mb)
    if resume is not None and tasks.fingerprint != resume.data_fingerprint:
        raise DataError(f"Cannot resume run {resume.run_id}: its data had fingerprint "
                        f"{resume.data_fingerprint[:12]}…, the data now has "
                        f"{tasks.fingerprint[:12]}… ({tasks.path}). The data file or its config "
                        f"changed.")
    _check_tasks(cfg, tasks, tracker if resume is None else None,  # a resumed run has it
                 checked)
    algo = build(cfg, tasks)
    trained = meta_train.run(algo, tasks.train, cfg.meta_train, cfg.seed,
                             Path(cfg.paths.output_dir), tracker,
                             resume.checkpoint if resume else None,
                             _validation(cfg, tasks, on_validation))
    if not cfg.meta_test.enabled:  # a search's trial: selected on validation only
        log.info("meta_test.enabled=false: the test tasks are left untouched")
        return RunResult(per_task={}, baseline=None, summaries={}, gain=None,
                         objective=math.nan, no_gain=False, algorithm=algo, tasks=tasks)
    eval_steps = tuple(cfg.meta_test.eval_steps)
    try:
        tested = meta_test.run(algo, tasks.test, cfg.meta_test.task_batch_size, eval_steps)
        compared = (baselines.run(cfg, tasks, algo.loss, lambda a: build(cfg, tasks, a), tracker)
                    .tested if algo.meta_learns else {})
        summary = report.run(algo, tasks, tested, compared, trained, eval_steps, tracker,
                             cfg.tracking.log_model)
    except KeyboardInterrupt:
        if trained.checkpoint is not None:  # training is done: resume goes to meta-test
            where = meta_train.log_checkpoint(tracker, trained.checkpoint, trained.total)
            log.warning("Interrupted after meta-training: its checkpoint is in %s", where)
        raise
    return RunResult(**vars(summary), algorithm=algo, tasks=tasks)


__all__ = ["RunResult", "build", "default_run_name", "execute"]
