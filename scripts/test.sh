#!/usr/bin/env bash
# The full test suite, from scratch: for the newest supported Airflow and for the oldest, create a
# virtual environment, install the provider with its dev extras (pinned by constraints/airflow-<version>.txt;
# with CUTOUT_UNPINNED=1, the newest releases instead), then run ruff, mypy and pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/install.sh  # NEWEST_AIRFLOW, FLOOR_AIRFLOW, install_env (pinned by constraints/)
# The canary (make test-latest: CUTOUT_UNPINNED=1) keeps its environments apart from the pinned ones.
SUFFIX=$([ "${CUTOUT_UNPINNED:-0}" = 1 ] && echo -latest || true)

# Debian packages: chromium for the browser tests, PostgreSQL and Redis for the cluster tests, npm for Azurite.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian's ${missing[*]} with apt-get"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Azurite, the Azure Blob Storage emulator the object-store tests start (tests/stores.py), from the npm registry.
AZURITE=3.37.0
if [ "$(cat .tools/azurite.version 2>/dev/null)" != "$AZURITE" ]; then
  command -v npm >/dev/null || { echo "npm is needed for Azurite: apt-get install nodejs npm" >&2; exit 1; }
  echo "== installing Azurite $AZURITE from npm into .tools/"
  npm install --prefix .tools --no-audit --no-fund --silent "azurite@$AZURITE" >/dev/null
  echo "$AZURITE" > .tools/azurite.version
fi

echo "== Airflow $NEWEST_AIRFLOW: install, lint, types, tests"
NEWEST=.venv$SUFFIX
GOOGLE_PROVIDER=22.8.0
[ -x "$NEWEST/bin/python" ] || python3 -m venv "$NEWEST"
# The Google provider without its dependencies (ray, litellm and the rest of Vertex AI do not resolve beside the
# pinned Airflow); the test-gcs extra has what its object storage (gs://) imports.
"$NEWEST/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  "apache-airflow-providers-google==$GOOGLE_PROVIDER"
install_env "$NEWEST" "$NEWEST_AIRFLOW" dev,cluster,azure,test-gcs
"$NEWEST/bin/ruff" check airflow_provider_cutout tests example_dags scripts
"$NEWEST/bin/mypy"
"$NEWEST/bin/lint-imports"
# Two workers, a test file each (as on the oldest Airflow below): first the tests that start no Airflow of their
# own beyond DAG runs, then the end-to-end files (DAG runs in processes of their own, killed or overlapping, on the
# object stores); the browser and cluster files, which start Airflow's servers and a deployment, and the files
# marked alone run by themselves.
pytest_some() {  # pytest_some PYTHON ARGS...: pytest, where "no test selected" (exit 5, e.g. under -k) is no failure
  local rc=0
  "$@" || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 5 ]
}
pytest_some "$NEWEST/bin/python" -m pytest -m "not browser and not e2e" -n 2 --dist loadfile "$@"
pytest_some "$NEWEST/bin/python" -m pytest -m "e2e and not browser and not cluster and not alone" -n 2 --dist loadfile "$@"
pytest_some "$NEWEST/bin/python" -m pytest -m "browser or cluster or alone" "$@"

echo "== Airflow $FLOOR_AIRFLOW: install, tests (the browser, e2e and cluster tests run on the newest Airflow only)"
FLOOR=.venv-floor$SUFFIX
install_env "$FLOOR" "$FLOOR_AIRFLOW" dev
# Two workers, a test file each: most of this suite's time is Airflow 3.1's start-up of each DAG run,
# which overlaps well (each worker has its own Airflow home, metadata DB and sandbox).
pytest_some "$FLOOR/bin/python" -m pytest -m "not browser and not e2e" -n 2 --dist loadfile "$@"
