#!/usr/bin/env bash
# make constraints: regenerate constraints/airflow-<version>.txt for each tested Airflow. For each, a
# throw-away virtual environment gets the newest releases that Airflow and the provider (with every extra
# the project's commands install) admit, within constraints/known-breaks-airflow-<version>.txt, and its
# full freeze becomes the constraints file. Then run `make test`: commit the new files only if it passes.
# Usage: scripts/constraints.sh [AIRFLOW_VERSION...]   (default: the newest and the floor)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh

EXTRAS=dev,cluster,sandbox,azure,test-gcs
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("$NEWEST_AIRFLOW" "$FLOOR_AIRFLOW")
work=$(mktemp -d -t cutout-constraints-XXXXXX)
trap 'rm -rf "$work"' EXIT

for version in "${versions[@]}"; do
  echo "== Airflow $version: the newest releases it admits (extras $EXTRAS)"
  python3 -m venv "$work/$version"  # the Google provider without its dependencies, as scripts/test.sh installs it
  "$work/$version/bin/python" -m pip install --quiet --no-deps "apache-airflow-providers-google==22.8.0"
  CUTOUT_UNPINNED=1 install_env "$work/$version" "$version" "$EXTRAS"
  out=constraints/airflow-$version.txt
  {
    echo "# A full freeze of a green environment for Airflow $version on Python $("$work/$version/bin/python" -c \
      'import platform; print(platform.python_version())'), made by \`make constraints\` on $(date -u +%Y-%m-%d)."
    echo "# Every command that installs uses it (scripts/install.sh). Do not edit by hand: regenerate, then make test."
    "$work/$version/bin/python" -m pip freeze --exclude-editable --all | grep -v -E '^(pip|wheel)=='
  } > "$out"
  echo "   wrote $out ($(grep -c '==' "$out") pins)"
done
