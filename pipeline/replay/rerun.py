"""Rerun a finished run exactly and prove it: ``python -m pipeline.rerun RUN_ID``.

Reads the run's command-line overrides (tag ``hydra_overrides``) and its logged resolved config
from the tracking store, recomposes the config from the overrides and refuses to go on if it no
longer matches the logged one (the config files changed since). Then checks the data file against
the run's ``data_fingerprint`` (refuses a file that was altered), warns when the code or package
versions differ, runs again as a new run tagged ``rerun_of=RUN_ID``, and compares every per-task
metric, training curve and aggregate value by value. Exit status (docs/reliability.md): 0
identical, 3 different, 2 refused (no such run, run not finished, config drift, data altered),
1 the rerun itself failed, 130 / 143 stopped by Ctrl-C / SIGTERM (the new run KILLED).

``--tracking-uri http://host:port`` reruns a run of an MLflow server (the new run goes there too).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from datetime import datetime

from omegaconf import OmegaConf

from pipeline import PROJECT_ROOT, process
from pipeline.config import default_tracking_uri
from pipeline.replay.logged import Refused, code_differences, recompose, report_failure, verify_data
from pipeline.run import runtime_env
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord


@dataclass(frozen=True)
class Comparison:
    compared: int
    differences: list[str]

    @property
    def identical(self) -> bool:
        return not self.differences


def compare_runs(uri: str, original: RunRecord, new: RunRecord) -> Comparison:
    """Every metric of ``original`` against ``new``: bit-identical values at the same steps."""
    names = sorted(k for k in set(original.metrics) | set(new.metrics)
                   if not k.startswith(keys.UNREPRODUCIBLE_SCOPES))
    diffs = []
    for key in names:
        if key not in original.metrics or key not in new.metrics:
            diffs.append(f"{key}: only in the {'rerun' if key in new.metrics else 'original'}")
            continue
        if key.startswith(keys.PER_STEP_SCOPES):
            a = store.metric_history(uri, original.run_id, key)
            b = store.metric_history(uri, new.run_id, key)
        else:
            a, b = {0: original.metrics[key]}, {0: new.metrics[key]}
        if set(a) != set(b):
            diffs.append(f"{key}: steps differ ({len(a)} vs {len(b)} values)")
            continue
        bad = [s for s in a if a[s] != b[s] and not (math.isnan(a[s]) and math.isnan(b[s]))]
        if bad:
            worst = max(abs(a[s] - b[s]) for s in bad)
            diffs.append(f"{key}: {len(bad)} of {len(a)} values differ (max |diff| {worst:.3g}, "
                         f"first at step {min(bad)})")
    fp_a, fp_b = original.tags.get(keys.DATA_FINGERPRINT), new.tags.get(keys.DATA_FINGERPRINT)
    if fp_a != fp_b:
        diffs.append(f"{keys.DATA_FINGERPRINT}: {fp_a} vs {fp_b}")
    return Comparison(len(names), diffs)


def rerun(run_id: str, uri: str, out=print) -> tuple[Comparison, str]:
    """Rerun ``run_id`` from the store at ``uri``; return the comparison and the new run id."""
    original = store.get_run(uri, run_id)
    run_id = original.run_id  # the whole id, where a prefix was given
    if keys.is_pruned(original.tags):
        raise Refused(f"run {run_id} is a search trial its pruner stopped after "
                      f"{original.tags.get(keys.PRUNED_STEP, '?')} meta-iterations (trial_state="
                      f"PRUNED): it has no finished result to reproduce; rerun a complete "
                      f"trial's run.")
    if original.status != keys.FINISHED:
        raise Refused(f"run {run_id} is {original.status}, not FINISHED: nothing to reproduce.")
    out_dir = PROJECT_ROOT / "outputs" / "reruns" / f"{run_id[:12]}-{datetime.now():%H%M%S%f}"
    raw, cfg, overrides = recompose(uri, original, out_dir)
    out(f"config: {len(overrides)} overrides recompose to the logged config")
    out(f"data: {verify_data(cfg, original.tags.get(keys.DATA_FINGERPRINT))}")
    for warning in code_differences(original.tags):
        out(f"warning: {warning}")

    runtime_env.import_tensorflow()
    from pipeline.run.runner import execute

    hydra_dir = out_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(raw, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    result = execute(cfg, raw, overrides, hydra_dir, run_name=f"rerun of {original.name}",
                     extra_tags={keys.RERUN_OF: run_id})
    assert result.run_id is not None
    new = store.get_run(uri, result.run_id)
    comparison = compare_runs(uri, original, new)
    store.set_tags(uri, new.run_id, {keys.RERUN_IDENTICAL: str(comparison.identical).lower()})
    return comparison, new.run_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.rerun", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("run_id")
    p.add_argument("--tracking-uri", help="MLflow store holding the run (default: the config's "
                   "tracking.uri)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    uri = args.tracking_uri or default_tracking_uri()
    try:
        comparison, new_id = rerun(args.run_id, uri)
    except (Exception, KeyboardInterrupt) as e:
        return report_failure(e, refused=f"not an exact rerun of {args.run_id}",
                              failed=f"Rerun of {args.run_id} failed")
    if comparison.identical:
        print(f"IDENTICAL: rerun {new_id} reproduces run {args.run_id} bit for bit "
              f"({comparison.compared} metrics compared, per-task values at every step).")
        return 0
    print(f"DIFFERENT: rerun {new_id} does not reproduce run {args.run_id}; "
          f"{len(comparison.differences)} of {comparison.compared} metrics differ:")
    for d in comparison.differences:
        print(f"  {d}")
    return 3


def cli() -> None:
    """The console command: exit with :func:`main`'s status."""
    process.stop_on_sigterm()  # SIGTERM stops the run as Ctrl-C does: KILLED, with a checkpoint
    sys.exit(main())
