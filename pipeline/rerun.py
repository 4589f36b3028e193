"""Rerun a finished run exactly and prove it: ``python -m pipeline.rerun RUN_ID``.

Reads the run's command-line overrides (tag ``hydra_overrides``) and its logged resolved config
from the tracking store, recomposes the config from the overrides and refuses to go on if it no
longer matches the logged one (the config files changed since). Then checks the data file against
the run's ``data_fingerprint`` (refuses a file that was altered), warns when the code or package
versions differ, runs again as a new run tagged ``rerun_of=RUN_ID``, and compares every per-task
metric, training curve and aggregate value by value. Exit status: 0 identical, 1 different,
2 refused (run not finished, config drift, data altered), 3 the rerun itself failed.

``--tracking-uri http://host:port`` reruns a run of an MLflow server (the new run goes there too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import PROJECT_ROOT, provenance, tracking
from pipeline.config import Config, ConfigError, default_tracking_uri, register_configs, validate

RERUN_OF, IDENTICAL = "rerun_of", "rerun_identical"
#: Compared value by value at every step; other metrics (aggregates) by their value.
_HISTORY_PREFIXES = ("task/", "scratch_task/", "train/")
#: Timings differ from run to run by nature.
_IGNORED_PREFIXES = ("time/",)


class Refused(Exception):
    """The rerun cannot be an exact one (the message says why)."""


@dataclass(frozen=True)
class Comparison:
    compared: int
    differences: list[str]

    @property
    def identical(self) -> bool:
        return not self.differences


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline import CONFIG_DIR

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def _flat(container: dict) -> dict[str, object]:
    from pipeline.compare import _LOCATION
    from pipeline.runner import flatten

    return {k: v for k, v in flatten(container).items() if not _LOCATION.match(k)}


def config_drift(logged: dict, recomposed: dict) -> list[str]:
    """Keys whose value now differs from the logged run's (paths and store locations aside)."""
    a, b = _flat(logged), _flat(recomposed)
    return [f"{k}: logged {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def code_differences(tags: dict[str, str]) -> list[str]:
    """Code and package versions that differ between the run and this checkout (warnings)."""
    now = {**provenance.git_state(), **provenance.versions()}
    out = [f"{k}: run had {tags.get(k)!r}, now {v!r}" for k, v in now.items()
           if (k == "git_commit" or k.startswith("version/")) and tags.get(k) != v]
    for who, dirty in (("the run", tags.get("git_dirty")), ("this checkout", now["git_dirty"])):
        if dirty == "true":
            out.append(f"{who} had uncommitted changes: the code may differ even at one commit")
    return out


def verify_data(cfg, expected: str | None) -> str:
    """Check the cached data file against the run's fingerprint; say what was checked."""
    from pipeline import data

    if not expected:
        raise Refused("the run has no data_fingerprint tag: its data cannot be verified.")
    data_cfg = dataclasses.asdict(cfg.data)
    data_cfg.pop("cache")
    path = data.data_file(data_cfg, cfg.seed, Path(cfg.paths.data_dir))
    if not path.exists():
        return f"{path} is absent: it will be regenerated and its fingerprint compared"
    try:
        data.load(path, expected_fingerprint=expected)
    except (ValueError, OSError) as e:
        raise Refused(f"data check failed: {e}") from e
    return f"{path} matches the run's fingerprint {expected[:12]}…"


def compare_runs(uri: str, original: tracking.RunRecord, new: tracking.RunRecord) -> Comparison:
    """Every metric of ``original`` against ``new``: bit-identical values at the same steps."""
    keys = sorted(k for k in set(original.metrics) | set(new.metrics)
                  if not k.startswith(_IGNORED_PREFIXES))
    diffs = []
    for key in keys:
        if key not in original.metrics or key not in new.metrics:
            diffs.append(f"{key}: only in the {'rerun' if key in new.metrics else 'original'}")
            continue
        if key.startswith(_HISTORY_PREFIXES):
            a = tracking.metric_history(uri, original.run_id, key)
            b = tracking.metric_history(uri, new.run_id, key)
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
    fp_a, fp_b = original.tags.get("data_fingerprint"), new.tags.get("data_fingerprint")
    if fp_a != fp_b:
        diffs.append(f"data_fingerprint: {fp_a} vs {fp_b}")
    return Comparison(len(keys), diffs)


def rerun(run_id: str, uri: str, out=print) -> tuple[Comparison, str]:
    """Rerun ``run_id`` from the store at ``uri``; return the comparison and the new run id."""
    original = tracking.get_run(uri, run_id)
    if original.status != tracking.STATUS_FINISHED:
        raise Refused(f"run {run_id} is {original.status}, not FINISHED: nothing to reproduce.")
    out_dir = PROJECT_ROOT / "outputs" / "reruns" / f"{run_id[:12]}-{datetime.now():%H%M%S%f}"
    raw, cfg, overrides = recompose(uri, original, out_dir)
    out(f"config: {len(overrides)} overrides recompose to the logged config")
    out(f"data: {verify_data(cfg, original.tags.get('data_fingerprint'))}")
    for warning in code_differences(original.tags):
        out(f"warning: {warning}")

    from pipeline.runner import execute

    hydra_dir = out_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(raw, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    result = execute(cfg, raw, overrides, hydra_dir, run_name=f"rerun of {original.name}",
                     extra_tags={RERUN_OF: run_id})
    assert result.run_id is not None
    new = tracking.get_run(uri, result.run_id)
    comparison = compare_runs(uri, original, new)
    tracking.set_tags(uri, new.run_id, {IDENTICAL: str(comparison.identical).lower()})
    return comparison, new.run_id


def recompose(uri: str, original: tracking.RunRecord,
              out_dir: Path) -> tuple[DictConfig, Config, list[str]]:
    """The run's config, recomposed from its logged overrides and checked against the logged
    resolved config (refused if the config files changed since)."""
    run_id = original.run_id
    if "hydra_overrides" not in original.tags:
        raise Refused(f"run {run_id} has no hydra_overrides tag: it was not logged by this "
                      f"pipeline.")
    overrides = json.loads(original.tags["hydra_overrides"])
    raw = compose([*overrides, f"tracking.uri={uri}", f"paths.output_dir={out_dir}"])
    with tempfile.TemporaryDirectory() as tmp:
        logged_file = tracking.download_artifacts(uri, run_id, "config/resolved_config.json",
                                                  Path(tmp))
        if logged_file is None:
            raise Refused(f"run {run_id} has no config/resolved_config.json artifact.")
        logged = json.loads(logged_file.read_text())
    drift = config_drift(logged, OmegaConf.to_container(raw, resolve=True))
    if drift:
        raise Refused("the overrides no longer compose to the logged config (the config files "
                      "changed since):\n  " + "\n  ".join(drift))
    try:
        cfg = validate(raw)
    except ConfigError as e:
        raise Refused(f"the logged overrides are no longer a valid config: {e}") from e
    return raw, cfg, overrides


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
    except Refused as e:
        print(f"Refused: not an exact rerun of {args.run_id}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the store or the run itself failed
        print(f"Rerun of {args.run_id} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    if comparison.identical:
        print(f"IDENTICAL: rerun {new_id} reproduces run {args.run_id} bit for bit "
              f"({comparison.compared} metrics compared, per-task values at every step).")
        return 0
    print(f"DIFFERENT: rerun {new_id} does not reproduce run {args.run_id}; "
          f"{len(comparison.differences)} of {comparison.compared} metrics differ:")
    for d in comparison.differences:
        print(f"  {d}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
