"""Tracking-store utilities: ``python -m pipeline.tracking import FILE [--tracking-uri URI]``
delivers a run's ``mlflow_fallback.jsonl`` (records a dead server refused) to the store."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import default_tracking_uri
from pipeline.errors import TrackingError
from pipeline.tracking.run import import_fallback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking",
                                     description="Tracking-store utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="deliver a run's mlflow_fallback.jsonl to the store")
    imp.add_argument("file", type=Path)
    imp.add_argument("--tracking-uri", default=None,
                     help="store to write to (default: MLFLOW_TRACKING_URI or the local store)")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    try:
        count = import_fallback(args.file, uri)
    except TrackingError as e:
        print(f"Import stopped: {e}", file=sys.stderr)
        return 1
    print(f"Delivered {count} records from {args.file} to {uri}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
