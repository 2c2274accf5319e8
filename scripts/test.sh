#!/usr/bin/env bash
# The test command of the README: set up (if needed), lint (ruff: style and import order), then the whole
# suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
