#!/usr/bin/env bash
# Set up if needed, then lint and run the fast test suite: `bash scripts/test.sh [pytest args...]`.
# Slow tests: `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check pipeline hydra_plugins tests bench scripts
exec .venv/bin/python -m pytest "$@"
