"""One pipeline run: generate -> meta-train -> meta-test, recorded as one MLflow run."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline import provenance, runtime, tracking
from pipeline.algorithms import Algorithm, Context, build_algorithm, needs_head
from pipeline.algorithms.scratch import Scratch
from pipeline.checkpoint import Checkpoint
from pipeline.config import Config
from pipeline.data import REGRESSION, TaskSet, derive_seed
from pipeline.errors import ConfigError, DataError
from pipeline.losses import MSE, SOFTMAX, TaskLoss, output_units
from pipeline.models import build_model, portable
from pipeline.optimizers import build_optimizer
from pipeline.stages import generate, meta_test, meta_train
from pipeline.stats import Summary, paired_gain, summarize
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

# Metric name scheme (documented in the README): <scope>/query_<metric>_<before|after>[_<stat>]
TASK, TEST, SCRATCH_TASK, SCRATCH, GAIN = "task/", "test/", "scratch_task/", "scratch/", "gain/"
NO_GAIN_TAG = "meta_learning_gain"


RESUMED_TAG = "resumed_at_iteration"


@dataclass(frozen=True)
class Resume:
    """What continuing an interrupted run needs."""

    run_id: str
    checkpoint: Checkpoint
    data_fingerprint: str


@dataclass
class RunResult:
    run_id: str | None
    per_task: dict[str, np.ndarray]
    baseline: dict[str, np.ndarray] | None
    summaries: dict[str, Summary]
    gain: Summary | None
    #: Main post-adaptation metric (accuracy, or MSE for regression): a sweep's objective.
    objective: float
    no_gain: bool
    timings: dict[str, float] = field(default_factory=dict)
    algorithm: Algorithm | None = None
    tasks: TaskSet | None = None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def task_loss(cfg: Config, tasks: TaskSet) -> TaskLoss:
    if tasks.task_type == "regression":
        return TaskLoss(MSE)
    return TaskLoss(getattr(cfg.model, "head", SOFTMAX))


def build(cfg: Config, tasks: TaskSet, algo_cfg=None) -> Algorithm:
    """The configured algorithm (or ``algo_cfg``) on a freshly initialised model."""
    loss = task_loss(cfg, tasks)
    algo_cfg = algo_cfg or cfg.algorithm
    units = output_units(loss.kind, tasks.num_outputs) if needs_head(algo_cfg) else None
    init_seed = derive_seed(cfg.seed, "init")

    model = build_model(cfg.model, tasks.input_shape, units, init_seed)
    if cfg.model.init_from:
        _load_weights(model, cfg.model.init_from, cfg.tracking.uri)
    optimizer = build_optimizer(cfg.optimizer, total_steps=cfg.meta_train.iterations)
    ctx = Context(model=model, loss=loss, optimizer=optimizer,
                  seed=derive_seed(cfg.seed, "scratch"))
    return build_algorithm(algo_cfg, ctx, cfg.meta_train)


def _load_weights(model, model_uri: str, tracking_uri: str) -> None:
    """``model.init_from``: the logged model's weights, which must fit the configured model."""
    try:
        weights = tracking.model_weights(model_uri, tracking_uri)
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


def _summaries(per_task: dict[str, np.ndarray], scope: str) -> dict[str, Summary]:
    return {f"{scope}query_{k}": summarize(v) for k, v in per_task.items()}


def _aggregate_metrics(summaries: dict[str, Summary]) -> dict[str, float]:
    out = {}
    for name, s in summaries.items():
        out |= {f"{name}_mean": s.mean, f"{name}_std": s.std, f"{name}_ci95": s.ci95}
    return out


def _per_task_metrics(per_task: dict[str, np.ndarray], scope: str) -> dict[str, np.ndarray]:
    return {f"{scope}query_{k}": v for k, v in per_task.items()}


def _step_curve(summaries: dict[str, Summary], metrics: tuple[str, ...],
                eval_steps: tuple[int, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """``test/query_<m>_after_steps_{mean,ci95}`` with the inner-step count as step (0 = before)."""
    if not eval_steps:
        return {}
    steps = sorted({0, *eval_steps})
    out = {}
    for m in metrics:
        keys = [f"{TEST}query_{m}_" + ("before" if n == 0 else meta_test.steps_key(n))
                for n in steps]
        for stat in ("mean", "ci95"):
            out[f"{TEST}query_{m}_after_steps_{stat}"] = (
                steps, [getattr(summaries[k], stat) for k in keys])
    return out


def execute(cfg: Config, raw: DictConfig | None = None, overrides: list[str] | None = None,
            hydra_dir: Path | None = None, track: bool = True, run_name: str | None = None,
            extra_tags: dict[str, str] | None = None,
            resume: Resume | None = None) -> RunResult:
    """Run every stage; log ``raw`` (the composed config) as params, ``hydra_dir`` as files.

    ``run_name`` replaces ``tracking.run_name``; ``extra_tags`` (a sweep's parent run, a rerun's
    origin) are set when the run starts. ``resume`` continues an interrupted run in place from
    its checkpoint (its params and config files are already logged).
    """
    runtime.setup(cfg.runtime, cfg.seed)
    tracker = Tracker(cfg.tracking, Path(cfg.paths.output_dir)) if track else None
    tags = {"seed": cfg.seed, "algorithm": cfg.algorithm.name, "data_family": cfg.data.family,
            "model": cfg.model.name, "hydra_overrides": json.dumps(overrides or []),
            **({"batch_norm": cfg.model.batch_norm} if hasattr(cfg.model, "batch_norm") else {}),
            **provenance.git_state(), **provenance.versions(), **(extra_tags or {})}
    if tracker is None:
        return _stages(cfg, None, resume)
    if resume is not None:
        tags = {RESUMED_TAG: resume.checkpoint.progress.iteration}
    with tracker.run(run_name or cfg.tracking.run_name, tags,
                     run_id=resume.run_id if resume else None):
        if resume is None:
            container = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
            tracker.log_params(flatten(container))
            if container:
                tracker.log_dict(container, "config/resolved_config.json")
            if hydra_dir is not None and Path(hydra_dir).is_dir():
                tracker.log_artifacts(Path(hydra_dir), "hydra")
        result = _stages(cfg, tracker, resume)
        result.run_id = tracker.run_id
        result.timings["tracking_s"] = tracker.seconds
        log.info("MLflow run %s (%.2f s in tracking calls)", tracker.run_id, tracker.seconds)
    return result


def _stages(cfg: Config, tracker: Tracker | None, resume: Resume | None = None) -> RunResult:
    from pipeline import plots

    tasks = generate.run(cfg, tracker)
    algo = build(cfg, tasks)
    if resume is not None and tasks.fingerprint != resume.data_fingerprint:
        raise DataError(f"Cannot resume run {resume.run_id}: its data had fingerprint "
                        f"{resume.data_fingerprint[:12]}…, the data now has "
                        f"{tasks.fingerprint[:12]}… ({tasks.path}). The data file or its config "
                        f"changed.")
    trained = meta_train.run(algo, tasks.train, cfg, tracker,
                             resume.checkpoint if resume else None)
    if tracker is not None and trained["curves"]:
        fig = plots.curves(trained["curves"])
        tracker.log_figure(fig, "plots/meta_train_curves.png")
        plots.close(fig)

    eval_steps = tuple(cfg.meta_test.eval_steps)
    test_start = time.perf_counter()
    per_task = meta_test.run(algo, tasks.test, cfg.meta_test.task_batch_size, eval_steps)
    test_seconds = time.perf_counter() - test_start
    summaries = _summaries(per_task, TEST)
    metrics = _per_task_metrics(per_task, TASK)

    baseline, gain = None, None
    main = algo.loss.main_metric
    if cfg.meta_test.compare_to_scratch and not isinstance(algo, Scratch):
        scratch = build(cfg, tasks, cfg.meta_test.scratch)
        baseline = meta_test.run(scratch, tasks.test, cfg.meta_test.task_batch_size)
        summaries |= _summaries(baseline, SCRATCH)
        metrics |= _per_task_metrics(baseline, SCRATCH_TASK)
        gain = paired_gain(per_task[f"{main}_after"], baseline[f"{main}_after"])
        if not algo.loss.higher_is_better:
            gain = Summary(-gain.mean, gain.std, gain.ci95, gain.n)
        summaries[f"{GAIN}query_{main}"] = gain

    no_gain = gain is not None and gain.low <= 0
    aggregates = _aggregate_metrics(summaries)
    if gain is not None:  # the headline columns: gain/query_acc and its interval
        aggregates[f"{GAIN}query_{main}"] = gain.mean
    step_curve = _step_curve(summaries, algo.loss.metric_names, eval_steps)
    aggregates["time/meta_train_s"] = trained["seconds"]
    aggregates["time/meta_test_s"] = test_seconds
    if trained["iterations"]:
        aggregates["time/meta_train_ms_per_it"] = 1000 * trained["seconds"] / trained["iterations"]

    after = summaries[f"{TEST}query_{main}_after"]
    log.info("%s query %s after adaptation: %s (95%% CI, %d tasks)", algo.name, main, after,
             after.n)
    if baseline is not None:
        log.info("scratch query %s: %s; gain %s", main,
                 summaries[f"{SCRATCH}query_{main}_after"], gain)
    if no_gain:
        log.warning("Meta-learning shows no gain: %s's gain over scratch on the same test tasks "
                    "is %s (95%% CI includes or is below 0).", algo.name, gain)

    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_metrics(aggregates)
        if step_curve:  # one series per statistic, all at the same inner-step counts
            steps = next(iter(step_curve.values()))[0]
            tracker.log_metrics({k: v for k, (_, v) in step_curve.items()}, steps=steps)
        tracker.set_tags({NO_GAIN_TAG: "none" if no_gain else ("positive" if gain else "n/a")})
        fig = plots.per_task(per_task, baseline, main, algo.name)
        tracker.log_figure(fig, f"plots/per_task_{main}.png")
        plots.close(fig)
        if tasks.task_type == REGRESSION:
            fig = plots.regression_fits(meta_test.regression_fits(algo, tasks.test), algo.name)
            tracker.log_figure(fig, "plots/regression_fits.png")
            plots.close(fig)
        if cfg.tracking.log_model:
            tracker.log_keras_model(portable(algo.model), tasks.test.query_x[0])

    return RunResult(None, per_task, baseline, summaries, gain, after.mean, no_gain,
                     {"meta_train_s": trained["seconds"], "meta_test_s": test_seconds,
                      "meta_train_iterations": trained["iterations"]}, algo, tasks)


__all__ = ["RunResult", "build", "execute", "flatten"]
