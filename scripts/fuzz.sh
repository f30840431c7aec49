#!/usr/bin/env bash
# The model of the catalog's long profile (tests/test_model.py, CUTOUT_MODEL_PROFILE=long: 400 examples of up
# to 14 steps, 30 minutes or more) on the newest supported Airflow, pinned as make test installs it.
# An example it finds is printed as the steps to replay: keep it in tests/test_model.py as a regression test.
# Usage: scripts/fuzz.sh [pytest args...]   (e.g. --hypothesis-seed=7)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/install.sh  # NEWEST_AIRFLOW, install_env (pinned by constraints/)
install_env .venv "$NEWEST_AIRFLOW" dev,cluster
CUTOUT_MODEL_PROFILE=long .venv/bin/python -m pytest tests/test_model.py -p no:cacheprovider "$@"
