"""The results vocabulary that comparisons, seed groups, paired tests and the Model Registry
share: which metric is a run's objective, which columns a comparison shows, how its table is
built and which row is best. It sits below ``compare``, ``groups``, ``paired`` and
``registration``, which all import it and none of which imports another sideways."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from pipeline.tracking import keys
from pipeline.tracking.store import RunRecord

if TYPE_CHECKING:
    import pandas as pd

#: Key metrics, in column order (each paired with its ``_ci95`` when there is one). Group runs
#: have the same under ``seeds/`` (across-seed mean and CI of each job's value).
KEY_METRICS = (r"^search/objective$", r"^seeds/n_seeds$",
                r"^seeds/test/query_(acc|mse)_after_mean_mean$",
                r"^seeds/gain/query_[a-z]+_mean$",
                r"^seeds/scratch/query_(acc|mse)_after_mean_mean$",
                r"^seeds/test/query_(acc|mse)_before_mean_mean$",
                r"^test/query_(acc|mse)_after_mean$", r"^gain/query_[a-z]+$",
                r"^scratch/query_(acc|mse)_after_mean$", r"^test/query_(acc|mse)_before_mean$",
                r"^test/diverged_tasks$", r"^test/ci_units$", r"^time/meta_train_s$")
#: ``status`` is MLflow's, or ``PRUNED`` for a search trial its pruner stopped (FINISHED in
#: MLflow, but no complete result: never a best row).
FIXED_COLUMNS = ["run_name", "run_id", "status"]


def objective_metric(metrics: set[str]) -> tuple[str | None, bool]:
    """The objective's metric name and whether higher is better (accuracy up, MSE down); for
    group runs, its across-seed mean."""
    for name, higher in (("test/query_acc_after_mean", True), ("test/query_mse_after_mean",
                                                                False)):
        if keys.seeds(name, "mean") in metrics:
            return keys.seeds(name, "mean"), higher
    if "test/query_acc_after_mean" in metrics:
        return "test/query_acc_after_mean", True
    if "test/query_mse_after_mean" in metrics:
        return "test/query_mse_after_mean", False
    return None, True


def differing(runs: list[RunRecord], first: list[str]) -> list[str]:
    names = sorted({k for r in runs for k in r.params if not keys.is_location(k)})
    varying = [k for k in names if len({r.params.get(k) for r in runs}) > 1]
    return [k for k in first if k in varying or k in names] + [k for k in varying
                                                               if k not in first]


def metric_columns(runs: list[RunRecord]) -> list[str]:
    names = {k for r in runs for k in r.metrics}
    out = []
    for pattern in KEY_METRICS:
        for name in sorted(n for n in names if re.match(pattern, n) and not n.endswith("_ci95")):
            out.append(name)
            ci = name.removesuffix("_mean") + "_ci95"
            if ci in names:
                out.append(ci)
    return out


def param_key(k: str, runs: list[RunRecord] | None = None) -> str:
    """A swept group (``algorithm``) is compared through its name param (``algorithm.name``)."""
    if runs is not None and any(k in r.params for r in runs):
        return k
    return k if "." in k or k == "seed" else f"{k}.name"


def table(runs: list[RunRecord], swept: list[str] | None = None) -> pd.DataFrame:
    """One row per run: name, id, status, the params that differ, key metrics and CIs."""
    first = [param_key(k, runs) for k in (swept or [])]
    params = differing(runs, first)
    metrics = metric_columns(runs)
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run_name": r.name, "run_id": r.run_id,
                               "status": keys.STATE_PRUNED if keys.is_pruned(r.tags) else r.status}
        row |= {k: r.params.get(k) for k in params}
        row |= {k: r.metrics.get(k, math.nan) for k in metrics}
        rows.append(row)
    import pandas as pd  # here: its import costs every CLI start (and refusal) 0.3 s

    return pd.DataFrame(rows, columns=[*FIXED_COLUMNS, *params, *metrics])


def best_row(df: pd.DataFrame, direction: str | None = None) -> int | None:
    """Index of the best finished run by the objective (``direction`` overrides the metric's)."""
    name, higher = objective_metric(set(df.columns))
    if name is None:
        return None
    if direction is not None:
        higher = direction.rsplit(".", 1)[-1].lower() == "maximize"
    values = df[name].where(df["status"] == keys.FINISHED)
    if values.isna().all():
        return None
    return int(values.idxmax() if higher else values.idxmin())
