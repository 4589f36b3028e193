#!/usr/bin/env bash
# Set up if needed, then run the pipeline: `bash scripts/run.sh [hydra overrides...]`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/python" -m pipeline "$@"
