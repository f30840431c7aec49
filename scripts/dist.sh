#!/usr/bin/env bash
# make dist: build the sdist, then the wheel from it (python -m build), into dist/, and check both
# with twine. Installs build and twine into .venv like make test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC2046  # pins prints arguments
.venv/bin/python -m pip install --quiet --disable-pip-version-check $(pins "$NEWEST_AIRFLOW") "build>=1.2" "twine>=5"
rm -rf dist
.venv/bin/python -m build --outdir dist .
rm -rf airflow_provider_cutout.egg-info  # one copy of the provider's metadata (see scripts/test.sh)
.venv/bin/python -m twine check --strict dist/*
ls -l dist
