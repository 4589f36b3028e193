"""Continue an interrupted run: ``python -m pipeline.resume RUN_ID [--tracking-uri URI]``.

A run stopped by Ctrl-C or SIGTERM is marked KILLED and logs a ``checkpoint/`` artifact (model,
optimizer, RNG state, iteration, the curves' open window): the state at its last finished chunk
of meta-training, or at the end of meta-training if it was stopped during meta-test. This
command recomposes the run's config from its logged overrides (refusing if the config files
changed since), checks the data against the run's fingerprint, restores the checkpoint and
finishes the run in place: the same MLflow run ends FINISHED, with curves and per-task metrics
bit-identical to an uninterrupted run.
Exit status: 0 finished, 2 refused (no such run, not resumable), 1 the resumed run failed,
130 / 143 stopped again by Ctrl-C / SIGTERM (KILLED with a later checkpoint: resume it again).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pipeline import PROJECT_ROOT, process
from pipeline.config import Config, default_tracking_uri
from pipeline.replay.logged import Refused, code_differences, recompose, report_failure
from pipeline.run import checkpoint, runtime_env
from pipeline.tracking import keys, store
from pipeline.tracking.store import RunRecord

if TYPE_CHECKING:
    from pipeline.run.runner import RunResult

RESUMABLE = (keys.KILLED, keys.FAILED)


def checkpoint_of(uri: str, run_id: str) -> checkpoint.Checkpoint:
    """The run's logged ``checkpoint/`` artifact, loaded; refused if it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = store.download_artifacts(uri, run_id, keys.CHECKPOINT_DIR, Path(tmp))
        if directory is None:
            raise Refused(f"run {run_id} has no {keys.CHECKPOINT_DIR}/ artifact: it was not "
                          f"interrupted after meta-training started, so there is nothing to "
                          f"continue.")
        return checkpoint.load(directory)


def resume(run_id: str, uri: str, out=print) -> str:
    """Finish run ``run_id`` from its checkpoint; return its final status."""
    original = store.get_run(uri, run_id)
    run_id = original.run_id  # the whole id, where a prefix was given
    if keys.is_pruned(original.tags):
        raise Refused(f"run {run_id} is a search trial its pruner stopped after "
                      f"{original.tags.get(keys.PRUNED_STEP, '?')} meta-iterations (trial_state="
                      f"PRUNED): pruned on purpose, not interrupted; there is nothing to resume.")
    if original.status not in RESUMABLE:
        lost = (f" If its process is gone (heartbeat {original.tags.get(keys.HEARTBEAT)}), "
                f"`python -m pipeline.tracking reap` marks it FAILED first."
                if original.status == keys.RUNNING else "")
        raise Refused(f"run {run_id} is {original.status}: only KILLED or FAILED runs with a "
                      f"checkpoint can be resumed.{lost}")
    out_dir = PROJECT_ROOT / "outputs" / "resumed" / f"{run_id[:12]}-{datetime.now():%H%M%S%f}"
    raw, cfg, overrides = recompose(uri, original, out_dir)
    for warning in code_differences(original.tags):
        out(f"warning: {warning}")
    continue_run(cfg, raw, uri, original, overrides, say=out)
    return store.get_run(uri, run_id).status


def continue_run(cfg: Config, raw: DictConfig, uri: str, run: RunRecord,
                 overrides: list[str] | None = None,
                 on_validation: Callable[[int, dict[str, float]], None] | None = None,
                 say: Callable[[str], object] = print, checked: bool = False) -> RunResult:
    """Continue the KILLED (or FAILED) run ``run`` in place from its logged checkpoint, with
    ``cfg`` (checked by the caller against the run's logged config): the same MLflow run ends
    FINISHED, bit-identical to an uninterrupted run. This command's and a resumed sweep's jobs'
    (:mod:`pipeline.run.lifecycle`) one way to do it. ``checked``: as
    :func:`pipeline.run.runner.execute`'s (a sweep's job had its preflight)."""
    ckpt = checkpoint_of(uri, run.run_id)
    say(f"resuming run {run.run_id} at meta-iteration {ckpt.progress.iteration}")

    runtime_env.import_tensorflow()
    from pipeline.run.runner import Resume, execute

    return execute(cfg, raw, overrides, on_validation=on_validation, checked=checked,
                   resume=Resume(run.run_id, ckpt, run.tags.get(keys.DATA_FINGERPRINT, "")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.resume",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_id")
    p.add_argument("--tracking-uri", help="MLflow store holding the run (default: the local "
                   "store under the project root)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - "
                        "%(message)s")
    uri = args.tracking_uri or default_tracking_uri()
    try:
        status = resume(args.run_id, uri)
    except (Exception, KeyboardInterrupt) as e:
        return report_failure(e, refused=f"cannot resume run {args.run_id}",
                              failed=f"Resuming run {args.run_id} failed")
    print(f"Run {args.run_id} resumed and {status}.")
    return 0


def cli() -> None:
    """The console command: exit with :func:`main`'s status."""
    process.stop_on_sigterm()  # SIGTERM stops the run as Ctrl-C does: KILLED, with a checkpoint
    sys.exit(main())
