"""Running a logged run's config again, as reruns and resumes do: recompose it from the run's
logged overrides and refuse if that no longer gives the logged config, check its data against
the run's fingerprint, and say where the code or packages differ."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import errors, process
from pipeline.config import Config, compose, validate
from pipeline.run import provenance
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord


class Refused(Exception):
    """The run cannot be replayed exactly (the message says why)."""


def report_failure(error: Exception | KeyboardInterrupt, refused: str, failed: str) -> int:
    """Say in one line why a resume or a rerun did not end, and return its exit status
    (docs/reliability.md, "Exit statuses"; :func:`pipeline.process.outcome`): 2 refused (``refused``
    says what) or no such run, 130 / 143 stopped by Ctrl-C / SIGTERM (its run KILLED with a
    checkpoint), 1 the store or the run itself failed (``failed`` says what)."""
    if isinstance(error, Refused):
        error = errors.Refusal(error, f"Refused: {refused}")
    elif isinstance(error, store.RunNotFound):
        error = errors.Refusal(error, "Refused")
    elif not isinstance(error, KeyboardInterrupt):  # named, with any store password masked
        error = errors.PipelineError(f"{type(error).__name__}: {keys.plain_text(str(error))}")
    return process.report(error, failed)


def logged_config(uri: str, run_id: str) -> dict | None:
    """The run's logged resolved config (None: the run has no such artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        logged_file = store.download_artifacts(uri, run_id, keys.CONFIG_FILE, Path(tmp))
        return json.loads(logged_file.read_text()) if logged_file is not None else None


def drift(uri: str, run_id: str, now: dict) -> list[str]:
    """Keys of the config ``now`` whose value differs from run ``run_id``'s logged one (every
    key, for a run that logged none)."""
    return config_drift(logged_config(uri, run_id) or {}, now)


def config_drift(logged: dict, recomposed: dict) -> list[str]:
    """Keys whose value now differs from the logged run's (paths and store locations aside)."""
    a = {k: v for k, v in keys.params(logged).items() if not keys.is_location(k)}
    b = {k: v for k, v in keys.params(recomposed).items() if not keys.is_location(k)}
    return [f"{k}: logged {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def code_differences(tags: dict[str, str]) -> list[str]:
    """Code and package versions that differ between the run and this checkout (warnings)."""
    now = {**provenance.git_state(), **provenance.versions()}
    out = [f"{k}: run had {tags.get(k)!r}, now {v!r}" for k, v in now.items()
           if (k == keys.GIT_COMMIT or k.startswith(keys.VERSION_PREFIX)) and tags.get(k) != v]
    for who, dirty in (("the run", tags.get(keys.GIT_DIRTY)),
                       ("this checkout", now[keys.GIT_DIRTY])):
        if dirty == "true":
            out.append(f"{who} had uncommitted changes: the code may differ even at one commit")
    return out


def verify_data(cfg: Config, expected: str | None) -> str:
    """Check the run's data against its fingerprint before anything runs; say what was checked.

    The cached data file is read and verified; where there is none (deleted, or keyed anew
    because a family's source files changed) the tasks are generated now, from the sources as
    they are, and their fingerprint compared. Missing or altered data is :class:`Refused`."""
    from pipeline import data

    if not expected:
        raise Refused(f"the run has no {keys.DATA_FINGERPRINT} tag: its data cannot be "
                      f"verified.")
    data_cfg = dataclasses.asdict(cfg.data)
    data_cfg.pop("cache")
    try:
        path = data.data_file(data_cfg, cfg.seed, Path(cfg.paths.data_dir))
        if path.exists():
            data.load(path, expected_fingerprint=expected)
            return f"{path} matches the run's fingerprint {expected[:12]}…"
        tasks = data.generate_or_load(data_cfg, cfg.seed, Path(cfg.paths.data_dir))
    except (errors.PipelineError, ValueError, OSError) as e:
        raise Refused(f"data check failed before anything ran: "
                      f"{keys.plain_text(str(e))}") from e
    if tasks.fingerprint != expected:
        raise Refused(f"data check failed before anything ran: the data generated now from "
                      f"the config and its source files has fingerprint "
                      f"{tasks.fingerprint[:12]}…, the run's had {expected[:12]}… "
                      f"({keys.DATA_FINGERPRINT}): its source files changed since the run.")
    return f"{tasks.path} generated again: matches the run's fingerprint {expected[:12]}…"


def logged_overrides(uri: str, run: RunRecord) -> list[str]:
    """The run's command-line overrides, whole: from the ``hydra_overrides`` tag, or from the
    ``full_values/`` artifact the tracker keeps when the tag had to be cut."""
    text = run.tags[keys.HYDRA_OVERRIDES]
    if len(text) >= store.MAX_TAG_LEN:
        artifact = keys.full_value(keys.HYDRA_OVERRIDES)
        with tempfile.TemporaryDirectory() as tmp:
            full = store.download_artifacts(uri, run.run_id, artifact, Path(tmp))
            if full is None:
                raise Refused(f"run {run.run_id}'s {keys.HYDRA_OVERRIDES} tag was cut at "
                              f"{store.MAX_TAG_LEN} characters and the run has no {artifact} "
                              f"artifact: its overrides cannot be read whole.")
            text = full.read_text()
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        raise Refused(f"run {run.run_id}'s {keys.HYDRA_OVERRIDES} tag is not the JSON list this "
                      f"pipeline writes ({e}).") from e
    return [str(o) for o in overrides]


def recompose(uri: str, original: RunRecord,
              out_dir: Path) -> tuple[DictConfig, Config, list[str]]:
    """The run's config, recomposed from its logged overrides and checked against the logged
    resolved config (refused if the config files changed since)."""
    run_id = original.run_id
    if keys.HYDRA_OVERRIDES not in original.tags:
        raise Refused(f"run {run_id} has no {keys.HYDRA_OVERRIDES} tag: it was not logged by "
                      f"this pipeline.")
    overrides = logged_overrides(uri, original)
    raw = compose([*overrides, f"tracking.uri={uri}", f"paths.output_dir={out_dir}"])
    logged = logged_config(uri, run_id)
    if logged is None:
        raise Refused(f"run {run_id} has no {keys.CONFIG_FILE} artifact.")
    differs = config_drift(logged, OmegaConf.to_container(raw, resolve=True))
    if differs:
        raise Refused("the overrides no longer compose to the logged config (the config files "
                      "changed since):\n  " + "\n  ".join(differs))
    try:
        cfg = validate(raw)
    except errors.PipelineError as e:
        raise Refused(f"the logged overrides are no longer a valid config: {e}") from e
    return raw, cfg, overrides
