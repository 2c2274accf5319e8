#!/usr/bin/env bash
# The test command of the README: set up (if needed) and run the whole suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
