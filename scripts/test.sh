#!/usr/bin/env bash
# Install everything and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
PY=${PYTHON:-python3}
"$PY" -m ruff check .
exec "$PY" -m pytest -n 2 -q "$@"
