#!/usr/bin/env bash
# The test command of the README: set up (if needed), lint (ruff: style and import order), then the whole
# suite, slow tests included. `bash scripts/test.sh --fast` runs only the tests not marked slow (while
# developing; CI runs everything). Two phases: the tests marked `mesh` on 8 fake CPU devices, then all the
# others on one device (faster; tests/conftest.py). The log ends with the second phase's 25 slowest tests and
# total, then the whole suite's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
only=""
if [ "${1:-}" = "--fast" ]; then
  shift
  only=" and not slow"
fi
phase() {  # pytest's status 5 ("no tests collected": e.g. paths given that hold no mesh test) is not a failure
  local rc=0
  .venv/bin/python -m pytest -q -n 2 "$@" || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 5 ] || exit "$rc"
}
start=$(date +%s)
phase -m "mesh${only}" --durations=5 "$@"
phase -m "not mesh${only}" --durations=25 "$@"
echo "whole suite (both phases): $(( $(date +%s) - start )) s wall"
