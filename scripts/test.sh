#!/usr/bin/env bash
# The full test suite, from scratch: for the newest supported Airflow and for the oldest, create a
# virtual environment, install the provider with its dev extras, then run ruff, mypy and pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

NEWEST_AIRFLOW=3.3.2   # newest 3.3.x
FLOOR_AIRFLOW=3.1.8    # the lowest Airflow pyproject.toml admits

venv() {  # venv DIR AIRFLOW_VERSION EXTRAS: create or update DIR with that Airflow and the provider
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check "apache-airflow==$2" -e ".[$3]"
  # pip also leaves the provider's metadata in the source tree. With the tree on sys.path (the tests' DAG runs),
  # Airflow would see the provider twice, and its task runner stops loading plugins at the second copy of one
  # (OpenLineage's listener comes after ours): keep only the installed copy.
  rm -rf airflow_provider_cutout.egg-info
}

# Debian packages: chromium for the browser tests, PostgreSQL and Redis for the cluster tests.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian's ${missing[*]} with apt-get"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== Airflow $NEWEST_AIRFLOW: install, lint, types, tests"
venv .venv "$NEWEST_AIRFLOW" dev,cluster
.venv/bin/ruff check airflow_provider_cutout tests example_dags scripts
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"

echo "== Airflow $FLOOR_AIRFLOW: install, tests (the browser, e2e and cluster tests run on the newest Airflow only)"
venv .venv-floor "$FLOOR_AIRFLOW" dev
# Two workers, a test file each: most of this suite's time is Airflow 3.1's start-up of each DAG run,
# which overlaps well (each worker has its own Airflow home, metadata DB and sandbox).
.venv-floor/bin/python -m pytest -m "not browser and not e2e" -n 2 --dist loadfile "$@"
