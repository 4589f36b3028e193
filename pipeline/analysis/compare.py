"""Compare runs: a table of config differences and key metrics with 95% CIs, and a plot.

``python -m pipeline.compare`` over an experiment, or over one sweep (``--parent RUN_ID``)::

    python -m pipeline.compare --parent 3f2a...                 # a sweep's children
    python -m pipeline.compare --filter "params.algorithm.name = 'maml'"
    python -m pipeline.compare --experiment meta-learning --csv runs.csv --plot runs.png
    python -m pipeline.compare --paired GROUP_A GROUP_B --log   # paired, verdict over seeds
    python -m pipeline.compare --paired RUN_A RUN_B --by-task   # ... and per source task
    python -m pipeline.compare --run RUN_ID --by-task           # a run's means per source task
    python -m pipeline.compare --register my-model --parent 3f2a...   # the best group's model

The same table is what a sweep's parent run holds (``comparison/``), built by
:func:`summarize_sweep` when the sweep ends.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.analysis.results import FIXED_COLUMNS, best_row, objective_metric, param_key, table
from pipeline.config import default_tracking_uri
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord


def display(df: pd.DataFrame) -> str:
    """The table for a terminal: ``mean ± ci95`` cells, short run ids, ``-`` where a run has
    no value."""
    out = df.copy()
    for col in [c for c in df.columns if c.endswith("_ci95")]:
        base = col.removesuffix("_ci95")
        target = f"{base}_mean" if f"{base}_mean" in out.columns else base
        if target in out.columns:
            out[target] = [_cell(m) if math.isnan(m) or math.isnan(c) else f"{m:.4f} ± {c:.4f}"
                           for m, c in zip(df[target], df[col], strict=True)]
            out = out.drop(columns=col)
    for col in out.columns:
        counts = col.endswith(("diverged_tasks", "n_seeds", "ci_units"))
        out[col] = [(_cell(v, 0 if counts else 4)) if v is None or isinstance(v, float) else v
                    for v in out[col]]
    out["run_id"] = out["run_id"].str[:8]
    out.columns = [c.removesuffix("_mean") for c in out.columns]
    with pd.option_context("display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 40):
        return out.to_string(index=False)


def _cell(value: float | None, decimals: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def _numeric(values: pd.Series) -> pd.Series | None:
    converted = pd.to_numeric(values, errors="coerce")
    return None if converted.isna().any() else converted


def plot(df: pd.DataFrame, swept: list[str]) -> Any:
    """The objective (mean ± 95% CI) against each swept value; colour = the other swept values."""
    from pipeline.analysis import plots  # headless matplotlib

    plt = plots.plt
    name, _higher = objective_metric(set(df.columns))
    params = [k for k in (param_key(s) for s in swept) if k in df.columns] or \
        [c for c in df.columns if c not in FIXED_COLUMNS and "/" not in c][:2]
    fig, axes = plt.subplots(1, max(len(params), 1), figsize=(5.5 * max(len(params), 1), 4),
                             squeeze=False)
    done = df[df["status"] == keys.FINISHED] if name else df.iloc[0:0]
    ci = f"{name.removesuffix('_mean')}_ci95" if name else None
    for ax, param in zip(axes[0], params or [None], strict=False):
        if param is None or done.empty:
            ax.text(0.5, 0.5, "no finished run with an objective", ha="center")
            continue
        others = [p for p in params if p != param]
        groups = done.groupby(others, dropna=False) if others else [((), done)]
        x_num = _numeric(done[param])
        for key, g in groups:
            x = _numeric(g[param]) if x_num is not None else g[param].astype(str)
            order = x.sort_values().index
            label = ", ".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in
                              zip(others, key if isinstance(key, tuple) else (key,), strict=True))
            yerr = g.loc[order, ci] if ci in g.columns else None
            ax.errorbar(x[order], g.loc[order, name], yerr=yerr, marker="o", capsize=3,
                        label=label or None)
        if x_num is not None and (x_num > 0).all() and x_num.max() / x_num.min() >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(f"{name} (95% CI)")
        if others and len(groups) <= 10:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class SweepSummary:
    table: pd.DataFrame
    best_run_id: str | None
    finished: bool


def sweep_rows(uri: str, parent_run_id: str) -> tuple[list[RunRecord], list[RunRecord]]:
    """A sweep's comparison rows (its group runs if it has groups, else its job runs) and the
    runs standing for its jobs, in job order."""
    from pipeline.analysis import groups

    direct = store.search_runs(uri, parent_run_id=parent_run_id)
    group_runs = [r for r in direct if r.tags.get(keys.SWEEP_ROLE) == keys.ROLE_GROUP]
    members = [r for r in direct if r.tags.get(keys.SWEEP_ROLE) != keys.ROLE_GROUP]
    for g in group_runs:
        members += store.search_runs(uri, parent_run_id=g.run_id)
    jobs = [r for _, r in sorted(groups.effective(members).items())]
    return (sorted(group_runs, key=lambda g: min(json.loads(g.tags.get(keys.GROUP_JOBS, "[0]"))))
            if group_runs else jobs), jobs


def summarize_sweep(uri: str, parent_run_id: str, sweep_dir: Path | None = None,
                    direction: str | None = None) -> SweepSummary:
    """Log the comparison of the sweep's groups (or jobs) on the parent run; tag the best."""
    from pipeline.analysis import plots

    parent = store.get_run(uri, parent_run_id)
    swept = json.loads(parent.tags.get(keys.SWEEP_PARAMS, "[]"))
    rows, jobs = sweep_rows(uri, parent_run_id)
    df = table(rows, swept)
    best = best_row(df, direction) if len(df) else None
    chosen = parent.tags.get(keys.SEARCH_BEST_GROUP)  # a search: its winner on validation
    if chosen is not None and chosen in set(df["run_id"]):
        best = int(df.index[df["run_id"] == chosen][0])
    best_id = str(df.loc[best, "run_id"]) if best is not None else None
    tags: dict[str, Any] = {keys.SWEEP_CHILDREN: len(jobs),
                            keys.SWEEP_CHILDREN_FINISHED: sum(  # a pruned trial: not a result
                                r.status == keys.FINISHED and not keys.is_pruned(r.tags)
                                for r in jobs)}
    if best_id is not None:
        name, _ = objective_metric(set(df.columns))
        tags |= {keys.BEST_RUN: best_id, keys.BEST_VALUE: df.loc[best, name],
                 keys.BEST_RUN_NAME: df.loc[best, "run_name"]}
        store.set_tags(uri, best_id, {keys.BEST_IN_SWEEP: "true"})
    results = sweep_dir / "optimization_results.yaml" if sweep_dir else None
    if results is not None and results.is_file():  # the Optuna sweeper's verdict
        from omegaconf import OmegaConf

        found = OmegaConf.to_container(OmegaConf.load(results))
        if "best_params" in found:
            tags |= {keys.BEST_PARAMS: json.dumps(found["best_params"]),
                     keys.OPTUNA_BEST_VALUE: found["best_value"]}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "comparison.csv"
        df.to_csv(csv, index=False)
        fig = plot(df, swept) if len(df) else None
        store.log_comparison(uri, parent_run_id, df, {keys.COMPARISON_DIR: csv}, fig)
        if fig is not None:
            plots.close(fig)
    store.set_tags(uri, parent_run_id, tags)
    finished = bool(jobs) and all(
        r.status == keys.FINISHED or keys.is_pruned(r.tags)
        for r in [*jobs, *(rows if rows is not jobs else [])])  # pruned: done, not failed
    return SweepSummary(df, best_id, finished)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", help="MLflow store (default: the config's tracking.uri)")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable; "
                   "default: every experiment)")
    p.add_argument("--parent", help="a sweep's parent run id: compare its groups (or jobs); a "
                   "group's run id: compare its jobs")
    p.add_argument("--filter", default="", help="MLflow search syntax, e.g. "
                   "\"params.algorithm.name = 'maml'\"")
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    p.add_argument("--plot", type=Path, help="also draw the objective against the swept "
                   "values into this PNG file")
    p.add_argument("--paired", nargs=2, metavar=("RUN_A", "RUN_B"), help="paired comparison "
                   "of two runs (or two seed groups) on the same test tasks; RUN_ID:BASELINE is a "
                   "baseline that run scored (RUN_ID:linear_probe)")
    p.add_argument("--log", action="store_true", help="with --paired: log the result as a new "
                   "MLflow run with a plot of the per-task differences")
    p.add_argument("--by-task", action="store_true", help="with --run RUN_ID (a run or a "
                   "group): one row per test source task with its episodes and means; with "
                   "--paired: also the paired differences per task")
    p.add_argument("--register", metavar="NAME", help="register a model in the Model Registry "
                   "under NAME: that of --run, or of the best group of --parent (its best seed)")
    p.add_argument("--run", help="with --register: the run (or group) whose model to register;"
                   " with --by-task: the run (or group) to break down")
    p.add_argument("--force", action="store_true", help="with --register: register a new "
                   "version even if that run's model is already registered under NAME")
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    try:  # ids may be given as unique prefixes (the tables print 8 characters)
        args.parent, args.run = (store.resolve_run_id(uri, r) if r else r
                                 for r in (args.parent, args.run))
        args.paired = [store.resolve_run_id(uri, r) for r in args.paired or []]
    except store.RunNotFound as e:
        print(f"Refused: {e}", file=sys.stderr)
        return 2
    if args.paired:
        return _paired(uri, *args.paired, log=args.log, tasks=args.by_task)
    if args.by_task:
        if not args.run:
            print("--by-task goes with --run RUN_ID or --paired RUN_A RUN_B.", file=sys.stderr)
            return 2
        return _by_task(uri, args.run)
    if args.log:
        print("--log goes with --paired RUN_A RUN_B.", file=sys.stderr)
        return 2
    if args.register:
        return _register(uri, args.register, args.run or args.parent, args.force)
    try:
        _reap(uri, args.experiment)
        runs = store.search_runs(uri, args.experiment, args.filter, args.parent)
    except Exception as e:  # bad filter syntax, unknown experiment or run, unreachable server
        print(f"Cannot search runs in {uri}: {keys.plain_text(str(e))}", file=sys.stderr)
        return 2
    if not runs:
        print(f"No runs match in {uri}.", file=sys.stderr)
        return 1
    swept: list[str] = []
    if args.parent:
        swept = json.loads(store.get_run(uri, args.parent).tags.get(keys.SWEEP_PARAMS, "[]"))
    df = table(runs, swept)
    print(display(df))
    written = []
    try:
        if args.csv:
            where = f"--csv {args.csv}"
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(args.csv, index=False)
            written.append(f"table: {args.csv}")
        if args.plot:
            from pipeline.analysis import plots

            where = f"--plot {args.plot}"
            fig = plot(df, swept)
            try:
                args.plot.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(args.plot, dpi=100)
            finally:
                plots.close(fig)
            written.append(f"plot: {args.plot}")
    except OSError as e:
        print(f"Refused: cannot write {where}: {e.strerror or e}. Give a path in a folder you "
              f"can write.", file=sys.stderr)
        return 2
    print(f"\n{len(df)} runs" + (f"; {', '.join(written)}" if written else ""))
    return 0


def _reap(uri: str, experiments: list[str] | None) -> None:
    """A run whose process is gone is never shown RUNNING: mark it FAILED first (said here)."""
    from pipeline.search import lost  # a reaped trial's run: its trial FAIL in the study too

    for gone in lost.reap(uri, experiment_names=experiments):
        print(f"Run {gone.run.run_id} ({gone.run.name}) marked FAILED: {gone.reason}",
              file=sys.stderr)


def _by_task(uri: str, run_id: str) -> int:
    from pipeline.analysis import episodes, paired

    try:
        runs = paired.side(uri, run_id).by_seed
        tables = {seed: episodes.read(uri, r) for seed, r in sorted(runs.items())}
    except Exception as e:  # unknown run, unreachable store, a group without finished jobs
        print(f"Cannot read run {run_id} in {uri}: {keys.plain_text(str(e))}", file=sys.stderr)
        return 2
    missing = [runs[s].run_id for s, t in tables.items() if t is None]
    if missing:
        print(f"Refused: run {missing[0]} has no {keys.EPISODES_TABLE} artifact (recorded before "
              f"runs kept one, or it did not finish meta-testing).", file=sys.stderr)
        return 2
    for seed, df in tables.items():
        run = runs[seed]
        columns = [c for c in df.columns if c.startswith((keys.TASK, keys.SCRATCH_TASK))]
        per = episodes.by_task(df, columns)
        per.columns = [c.replace(keys.SCRATCH_TASK, "scratch_").removeprefix(keys.TASK)
                       for c in per.columns]
        print(f"{run.name} ({run.run_id}), seed {seed}, {keys.CI_UNIT}="
              f"{run.tags.get(keys.CI_UNIT, keys.UNIT_EPISODE)}: {len(df)} test episodes from "
              f"{len(per)} tasks")
        with pd.option_context("display.max_columns", None, "display.width", 250):
            print(per.to_string(index=False, float_format="%.4f"))
    return 0


def _paired(uri: str, run_a: str, run_b: str, log: bool, tasks: bool = False) -> int:
    from pipeline.analysis import paired

    try:
        result = paired.compare(uri, run_a, run_b)
    except paired.NotPaired as e:
        print(f"Refused: not a paired comparison: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # unknown run, unreachable store
        print(f"Cannot compare {run_a} and {run_b} in {uri}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2
    a, b = paired.record(uri, run_a), paired.record(uri, run_b)
    print(paired.describe(result, a, b, tasks))
    if log:
        print(f"logged as MLflow run {paired.log(uri, result, a, b)}")
    return 0


def _register(uri: str, name: str, run_id: str | None, force: bool = False) -> int:
    from pipeline.analysis.registration import AlreadyRegistered, register

    if not run_id:
        print("--register NAME needs --run RUN_ID (a run or a group) or --parent "
              "PARENT_RUN_ID (its best group).", file=sys.stderr)
        return 2
    try:
        model, version, chosen = register(uri, run_id, name, force)
    except AlreadyRegistered as e:
        print(f"Not registered again: {e}")
        return 0
    except Exception as e:
        print(f"Cannot register a model from run {run_id}: {keys.plain_text(str(e))}",
              file=sys.stderr)
        return 2
    print(f"registered model {model!r} version {version} from run {chosen}")
    return 0


def cli() -> None:
    """The console command: exit with :func:`main`'s status."""
    sys.exit(main())
