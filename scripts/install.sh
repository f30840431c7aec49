# Sourced, from the repository's root, by every script that installs (test, demo, bench, cluster, dist,
# constraints): the Airflow versions
# the project tests, and one way to install them with the provider into a virtual environment.
#
# Installs are pinned: constraints/airflow-<version>.txt is a full freeze of an environment whose suite
# passed (Airflow's own practice: `pip install apache-airflow==X --constraint ...`). Regenerate with
# `make constraints`. CUTOUT_UNPINNED=1 (what `make test-latest` sets) installs the newest releases
# instead, within constraints/known-breaks-airflow-<version>.txt only: the canary for drift.

NEWEST_AIRFLOW=3.3.2   # newest 3.3.x
FLOOR_AIRFLOW=3.1.8    # the lowest Airflow pyproject.toml admits

pins() {  # pins AIRFLOW_VERSION: pip's --constraint arguments for an install of that Airflow
  local pinned=$PWD/constraints/airflow-$1.txt breaks=$PWD/constraints/known-breaks-airflow-$1.txt
  if [ "${CUTOUT_UNPINNED:-0}" = 1 ]; then
    if [ -f "$breaks" ]; then echo "--constraint $breaks"; fi
  elif [ -f "$pinned" ]; then
    echo "--constraint $pinned"
  else
    echo "no constraints/airflow-$1.txt: run 'make constraints' (or set CUTOUT_UNPINNED=1)" >&2
    return 1
  fi
}

install_env() {  # install_env DIR AIRFLOW_VERSION EXTRAS: create or update DIR with that Airflow and the provider
  local args
  args=$(pins "$2")
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  # shellcheck disable=SC2086  # $args is a list of arguments
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check $args "apache-airflow==$2" -e ".[$3]"
  # pip also leaves the provider's metadata in the source tree. With the tree on sys.path (the tests' DAG runs),
  # Airflow would see the provider twice, and its task runner stops loading plugins at the second copy of one
  # (OpenLineage's listener comes after ours): keep only the installed copy.
  rm -rf airflow_provider_cutout.egg-info
}
