"""Tracking-store utilities.

* ``python -m pipeline.tracking import FILE [--tracking-uri URI]`` delivers a run's
  ``mlflow_fallback.jsonl`` (records a store refused) to the store;
* ``python -m pipeline.tracking reap [--older-than S] [--tracking-uri URI]`` marks FAILED the
  RUNNING runs whose process is gone (on this host: its pid; elsewhere: no heartbeat for S
  seconds); ``reap RUN_ID ...`` ends those runs at once (ids or unique 8+ character prefixes).
  A reaped run that stands for a search's trial ends that trial too: FAIL in its study.

Exit status: 0 done, 1 failed (the store refused the import), 2 refused (bad arguments, no such
file, a store that cannot be opened).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import default_tracking_uri
from pipeline.errors import TrackingError
from pipeline.tracking import keys
from pipeline.tracking.run import import_fallback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking",
                                     description="Tracking-store utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="deliver a run's mlflow_fallback.jsonl to the store")
    imp.add_argument("file", type=Path)
    reap = sub.add_parser("reap", help="mark FAILED the RUNNING runs whose heartbeat stopped")
    reap.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="end these RUNNING runs "
                      "at once (their process is gone; a whole id or its first 8+ characters)")
    reap.add_argument("--older-than", type=float, default=keys.REAP_AFTER_S, metavar="S",
                      help=f"seconds without a heartbeat (default {keys.REAP_AFTER_S:g}; the "
                      f"heartbeat comes every {keys.HEARTBEAT_S:g} s)")
    reap.add_argument("--experiment", action="append", help="experiment name (repeatable; "
                      "default: every experiment)")
    for p in (imp, reap):
        p.add_argument("--tracking-uri", default=None,
                       help="the store (default: MLFLOW_TRACKING_URI or the local store)")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if args.command == "reap":
        return _reap(uri, args.older_than, args.experiment, args.run_ids)
    if not args.file.is_file():
        print(f"Refused: {args.file} is not a file (give a run's {keys.FALLBACK_FILE}).",
              file=sys.stderr)
        return 2
    try:
        count = import_fallback(args.file, uri)
    except TrackingError as e:
        print(f"Import stopped: {e}", file=sys.stderr)
        return 1
    print(f"Delivered {count} records from {args.file} to {uri}.")
    return 0


def _reap(uri: str, older_than: float, experiments: list[str] | None,
          run_ids: list[str] | None = None) -> int:
    if older_than < 0:
        print(f"Refused: --older-than={older_than:g} must be >= 0 seconds.", file=sys.stderr)
        return 2
    from pipeline.search import lost  # a reaped trial's run: its trial FAIL in the study too

    try:
        reaped = lost.reap(uri, older_than, experiments, run_ids)
    except TrackingError as e:  # no such run, an ambiguous prefix, a process still here
        print(f"Refused: {keys.plain_text(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # unknown experiment, unreachable server, not a store
        print(f"Cannot reap runs in {uri}: {type(e).__name__}: {keys.plain_text(str(e))}",
              file=sys.stderr)
        return 2
    for r in reaped:
        print(f"{r.run.run_id} ({r.run.name}): FAILED, {r.reason}")
    how = ("ended at once" if run_ids else
           f"their pid gone from this host, or no heartbeat for over {older_than:g} s")
    print(f"{len(reaped)} lost run(s) marked FAILED in {uri} ({how}).")
    return 0


def cli() -> None:
    """The console command: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
