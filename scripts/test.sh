#!/usr/bin/env bash
# The test command of the README: set up (if needed), lint (ruff: style and import order), then the whole
# suite, slow tests included. `bash scripts/test.sh --fast` runs only the tests not marked slow (while
# developing; CI runs everything). The log ends with the 25 slowest tests and the total time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/python -m pytest -q -n 2 -m "not slow" --durations=25 "$@"
fi
exec .venv/bin/python -m pytest -q -n 2 --durations=25 "$@"
