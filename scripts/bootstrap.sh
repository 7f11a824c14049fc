#!/usr/bin/env bash
# Creates .venv (Python 3.11) with sftbeam and its pinned dependencies.
# Idempotent: re-running with nothing changed installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sftbeam-installed
wanted=$(cat setup.py requirements-lock.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -c requirements-lock.txt -e '.[test]'
  echo "$wanted" > "$stamp"
fi
