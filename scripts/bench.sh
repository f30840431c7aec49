#!/usr/bin/env bash
# make bench: install like make test (newest Airflow into .venv), then run every benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "apache-airflow==3.3.2" -e ".[dev]"
rm -rf airflow_provider_cutout.egg-info  # one copy of the provider's metadata (see scripts/test.sh)
exec .venv/bin/python scripts/bench.py "$@"
