#!/usr/bin/env bash
# GPU/TPU readiness check (issue 17, item 8): cuDNN attention vs einsum in bf16, MFU of a ~350M-parameter
# model at T = 2048, chunked SSD vs scan, and the sharded step on the real mesh; prints one summary table
# and writes runs/device_check/{device_check.json,summary.md}. Budget: under 8 minutes on one GPU (hard
# stop at 470 s). Pass --quick for tiny sizes (what the tests run on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec timeout 470 "$PY" -m experiments.device_check "$@"
