"""A search's record on its parent run: Optuna's plots (optimization history, parameter
importances, intermediate values: the pruning picture), a table of trials with state, params
and value, the best trial, and the result of the search, which is the re-evaluated winner's
test score across fresh seeds (mean and 95% CI) beside its validation score, so the optimism of
selection is visible."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pipeline.analysis import plots
from pipeline.analysis.results import objective_metric
from pipeline.search.study import ATTR_RUN
from pipeline.tracking import keys, store

log = logging.getLogger(__name__)

PLOTS = {"optimization_history": "plot_optimization_history",
         "param_importances": "plot_param_importances",
         "intermediate_values": "plot_intermediate_values"}


def trials_table(study: optuna.Study, direction: str = "maximize") -> pd.DataFrame:
    """One row per trial, ranked by the value told to the study (its run's
    ``search/objective``; rank 1 the best, trials without a value last): number, state, value,
    the step a pruned one stopped at, its MLflow run, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name,
                     keys.TRIAL_OBJECTIVE: t.value if t.value is not None and
                     t.state == TrialState.COMPLETE else math.nan,
                     "pruned_at_step": t.user_attrs.get(keys.PRUNED_STEP),
                     "last_step": t.last_step, "run_id": t.user_attrs.get(ATTR_RUN),
                     **{f"params.{k}": v for k, v in t.params.items()}})
    df = pd.DataFrame(rows)
    if len(df):
        df.insert(0, "rank", df[keys.TRIAL_OBJECTIVE].rank(
            ascending=direction != "maximize", method="min", na_option="keep"))
        df = df.sort_values(["rank", "trial"], na_position="last").reset_index(drop=True)
    return df


def figures(study: optuna.Study) -> dict[str, object]:
    """Optuna's matplotlib plots that apply (importances need 2 completed trials)."""
    from optuna.visualization import matplotlib as vis

    out = {}
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    for name, fn in PLOTS.items():
        if name == "param_importances" and complete < 2:  # Optuna would warn, draw them equal
            continue
        try:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = getattr(vis, fn)(study)
        except Exception as e:  # too few trials for this plot: the others still go
            log.info("No %s plot: %s", name, e)
            continue
        first = ax.flat[0] if hasattr(ax, "flat") else ax
        fig = first.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        out[f"{keys.SEARCH_DIR}/{name}.png"] = fig
    return out


def group_result(uri: str, group_id: str) -> tuple[float, float, str | None]:
    """A re-evaluation group's across-seed test mean, its 95% CI half-width, the metric."""
    metrics = store.get_run(uri, group_id).metrics
    name, _ = objective_metric(set(metrics))
    if name is None:
        return math.nan, math.nan, None
    return metrics[name], metrics.get(name.removesuffix("_mean") + "_ci95", math.nan), name


def log_search(uri: str, parent_id: str, study: optuna.Study, objective: str,
               best: FrozenTrial | None, reevaluated: list[tuple[FrozenTrial, str]],
               utilisation: float | None = None, direction: str = "maximize") -> None:
    """Everything a reader of the parent run needs to judge the search (``utilisation``: the
    workers' time in trials, :mod:`pipeline.search.occupancy`)."""
    trials = study.get_trials(deepcopy=False)
    counts = [sum(t.state == s for t in trials)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    metrics: dict[str, float] = dict(zip(keys.SEARCH_TRIALS, counts, strict=True))
    if utilisation is not None:
        metrics[keys.SEARCH_WORKER_UTILISATION] = utilisation
    tags: dict[str, str] = {}
    if best is not None:
        metrics[keys.SEARCH_VAL_BEST] = float(best.value)
        tags |= {keys.SEARCH_BEST_TRIAL: str(best.number),
                 keys.BEST_PARAMS: json.dumps(best.params)}
    rows = []
    for rank, (t, group_id) in enumerate(reevaluated, 1):
        mean, ci, name = group_result(uri, group_id)
        rows.append({"rank_on_validation": rank, "trial": t.number, "val_objective": t.value,
                     "test_mean": mean, "test_ci95": ci, "group_run_id": group_id,
                     **{f"params.{k}": v for k, v in t.params.items()}})
        if rank == 1:  # the search's result: the winner on validation, tested once
            tags[keys.SEARCH_BEST_GROUP] = group_id
            metrics |= {keys.SEARCH_TEST_MEAN: mean, keys.SEARCH_TEST_CI95: ci}
            _winner_on_study(study, t.number, group_id, mean, ci, name)
            if name and objective.removeprefix(keys.VAL) in name:  # the same metric
                metrics[keys.SEARCH_OPTIMISM] = float(t.value) - mean
    _log_tables(uri, parent_id, study, rows, direction)
    store.log_values(uri, parent_id, metrics={k: v for k, v in metrics.items()
                                              if math.isfinite(v)})
    store.set_tags(uri, parent_id, tags)
    if rows:
        r = rows[0]
        log.info("Search result: trial %d (validation %.4f) on the test tasks over fresh seeds: "
                 "%.4f ± %.4f", r["trial"], r["val_objective"], r["test_mean"], r["test_ci95"])


def _log_tables(uri: str, parent_id: str, study: optuna.Study, rows: list[dict],
                direction: str) -> None:
    """The trials table (ranked by ``search/objective``), the re-evaluation table and Optuna's
    plots, as the parent's artifacts."""
    figs = figures(study)
    with tempfile.TemporaryDirectory() as tmp:
        table = trials_table(study, direction)
        csvs = [Path(tmp) / "trials.csv"]
        table.to_csv(csvs[0], index=False)
        if rows:
            csvs.append(Path(tmp) / "reevaluation.csv")
            pd.DataFrame(rows).to_csv(csvs[1], index=False)
        store.log_comparison(uri, parent_id, table, {}, None,
                             table_file=keys.SEARCH_TRIALS_TABLE)
        for csv in csvs:
            store.log_files(uri, parent_id, {keys.SEARCH_DIR: csv})
        store.log_files(uri, parent_id, {}, figs)
    for fig in figs.values():
        plots.close(fig)


#: Study user attributes for the re-evaluated winner (optuna-dashboard shows them).
WINNER_ATTRS = ("reevaluated_trial", "reevaluated_test_mean", "reevaluated_test_ci95",
                "reevaluated_metric", "reevaluated_group_run_id")


def _winner_on_study(study: optuna.Study, trial: int, group_id: str, mean: float, ci: float,
                     metric: str | None) -> None:
    values = (trial, mean if math.isfinite(mean) else None, ci if math.isfinite(ci) else None,
              metric, group_id)
    for key, value in zip(WINNER_ATTRS, values, strict=True):
        study.set_user_attr(key, value)
