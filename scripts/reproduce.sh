#!/usr/bin/env bash
# The main job of the README: set up (if needed) and reproduce every theorem plot and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.reproduce --quick --jobs 2 --out runs/reproduce "$@"
