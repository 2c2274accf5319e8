#!/usr/bin/env bash
# Create .venv (if missing) and install tvvar with its dev extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The browser test of analyze's view.html (tests/test_view.py) drives Debian's chromium through chromium-driver.
# Installed only when missing, as root, with apt-get; never fatal: without them that test skips and says why.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "setup: could not install chromium + chromium-driver; tests/test_view.py's browser test will skip" >&2
  else
    echo "setup: chromium + chromium-driver not installed (not root or no apt-get); tests/test_view.py's browser test will skip" >&2
  fi
fi
