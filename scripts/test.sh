#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/install_pubsub_emulator.sh
exec .venv/bin/python -m pytest -q tests "$@"
