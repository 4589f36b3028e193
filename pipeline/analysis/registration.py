"""``pipeline.compare --register``: put a run's model (a group's best seed, a sweep's best
group's) in the MLflow Model Registry, its key metrics in the version's description.

The model registered is the run's few-shot predictor (``few_shot/``: adapts to a new task's
support set, :mod:`pipeline.serving`), with the alias ``@champion`` moved to it; a run logged
before there was one registers its network (``model/``)."""

from __future__ import annotations

import math

from pipeline.analysis import groups
from pipeline.analysis.results import metric_columns, objective_metric
from pipeline.errors import PipelineError
from pipeline.tracking import few_shot, keys, store
from pipeline.tracking.store import RunRecord


class AlreadyRegistered(PipelineError):
    """The chosen run's model is already a version of that registered model."""


def model_choice(uri: str, run_id: str) -> tuple[RunRecord, RunRecord]:
    """The run whose model to register: the run itself; for a group, its best seed; for a sweep
    parent, the best group's (or job's) best seed. Returns (chosen, the run it stands for)."""
    run = store.get_run(uri, run_id)
    role = run.tags.get(keys.SWEEP_ROLE)
    if role == keys.ROLE_PARENT:
        best = run.tags.get(keys.BEST_RUN)
        if not best:
            raise ValueError(f"sweep {run_id} has no best run (tag {keys.BEST_RUN}): it did not "
                             f"finish with a comparison.")
        return model_choice(uri, best)
    if role == keys.ROLE_GROUP:
        members = [r for r in groups.effective(store.search_runs(uri, parent_run_id=run_id))
                   .values() if r.status == keys.FINISHED]
        name, higher = objective_metric({k for r in members for k in r.metrics})
        if not members or name is None:
            raise ValueError(f"group {run_id} has no FINISHED job with an objective.")
        best = (max if higher else min)(members, key=lambda r: r.metrics.get(name, math.nan))
        return best, run
    return run, run


def register(uri: str, run_id: str, name: str, force: bool = False) -> tuple[str, str, str]:
    """Register the chosen model under ``name`` with the key metrics in its description;
    return (model name, version, the run whose model it is). A model already registered
    under ``name`` from the same run is not registered again (:class:`AlreadyRegistered`)
    unless ``force``: a second version of one model would read as a new model."""
    chosen, source = model_choice(uri, run_id)
    existing = store.registered_version(uri, name, chosen.run_id)
    if existing is not None and not force:
        raise AlreadyRegistered(
            f"registered model {name!r} version {existing} already holds the model of run "
            f"{chosen.run_id} ({chosen.name}); add --force to register it as a new version.")
    shown = [k for k in metric_columns([source]) if not k.startswith(keys.TIME)]
    lines = [f"Registered by pipeline.compare from run {source.name} ({source.run_id})."]
    if source is not chosen:
        lines.append(f"Model of its best seed: {chosen.name} ({chosen.run_id}).")
    for k in shown:
        if k.endswith("_ci95"):
            continue
        ci = source.metrics.get(k.removesuffix("_mean") + "_ci95")
        value = source.metrics.get(k, math.nan)
        lines.append(f"- {k}: {value:.4f}" + (f" ± {ci:.4f} (95% CI)" if ci is not None else ""))
    for k in (keys.DATA_FINGERPRINT, keys.GIT_COMMIT):
        if k in chosen.tags:
            lines.append(f"- {k}: {chosen.tags[k]}")
    tags = {keys.REGISTERED_FROM: source.run_id}
    if few_shot.logged(uri, chosen.run_id):
        version = few_shot.register(uri, chosen.run_id, name, "\n".join(lines), tags)
    else:
        version = store.register_model(uri, chosen.run_id, name, "\n".join(lines), tags)
    return name, version, chosen.run_id
