#!/usr/bin/env bash
# Install everything (scripts/setup.sh --dev: .venv, editable, with the test tools) and run the whole test
# suite from the virtual environment: what CI runs (.ci/run). Extra arguments go to pytest. Two workers, a test
# file at a time, the longest files first (tests/durations.txt, see tests/conftest.py); the 40 slowest tests printed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH" # pio, poetc and the Python the tests spawn: the environment's
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=40 -q "$@"
