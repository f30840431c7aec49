#!/usr/bin/env bash
# make bench: install like make test (newest Airflow into .venv), then run every benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
install_env .venv "$NEWEST_AIRFLOW" dev
exec .venv/bin/python scripts/bench.py "$@"
