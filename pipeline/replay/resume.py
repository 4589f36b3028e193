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
from datetime import datetime
from pathlib import Path

from pipeline import PROJECT_ROOT, errors
from pipeline.config import default_tracking_uri
from pipeline.replay.logged import Refused, code_differences, recompose, report_failure
from pipeline.run import checkpoint, runtime_env
from pipeline.tracking import keys, store

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
    ckpt = checkpoint_of(uri, run_id)
    out(f"resuming run {run_id} at meta-iteration {ckpt.progress.iteration}")

    runtime_env.import_tensorflow()
    from pipeline.run.runner import Resume, execute

    execute(cfg, raw, overrides,
            resume=Resume(run_id, ckpt, original.tags.get(keys.DATA_FINGERPRINT, "")))
    return store.get_run(uri, run_id).status


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
    errors.stop_on_sigterm()  # SIGTERM stops the run as Ctrl-C does: KILLED, with a checkpoint
    sys.exit(main())
