#!/usr/bin/env bash
# The test command of the README: set up (if needed), lint (ruff: style and import order), then the whole
# suite, slow tests included. `bash scripts/test.sh --fast` runs only the tests not marked slow (while
# developing; CI runs everything). Two runs side by side: the tests marked `mesh` on 8 fake CPU devices (one
# process; its summary line printed when the other run ends, its whole log if it failed), and all the others on
# one device (faster; tests/conftest.py) with two xdist workers. The log ends with the second run's 25 slowest
# tests and total, the mesh run's summary, and the whole suite's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
only=""
if [ "${1:-}" = "--fast" ]; then
  shift
  only=" and not slow"
fi
ok() { [ "$1" = 0 ] || [ "$1" = 5 ]; }  # pytest's 5: no tests collected (e.g. the paths given hold no mesh test)
start=$(date +%s)
mesh_log=$(mktemp)
trap 'rm -f "$mesh_log"' EXIT
.venv/bin/python -m pytest -q -n 0 -m "mesh${only}" --durations=5 "$@" > "$mesh_log" 2>&1 &
mesh_pid=$!
rc=0
.venv/bin/python -m pytest -q -n 2 -m "not mesh${only}" --durations=25 "$@" || rc=$?
mesh_rc=0
wait "$mesh_pid" || mesh_rc=$?
if ok "$mesh_rc"; then
  echo "mesh tests (8 devices): $(tail -n 1 "$mesh_log")"
else
  echo "=== mesh tests (8 devices) failed ==="
  cat "$mesh_log"
fi
echo "whole suite: $(( $(date +%s) - start )) s wall"
ok "$rc" || exit "$rc"
ok "$mesh_rc" || exit "$mesh_rc"
