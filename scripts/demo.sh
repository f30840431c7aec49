#!/usr/bin/env bash
# The demo, from scratch: install into .venv, start the sandbox, make a throw-away Airflow home
# (sqlite) with a cutout_default connection pointing at the sandbox, run the example catalog
# refresh twice (the second run edits nothing), print where the results are, stop everything.
# CUTOUT_DEMO_PYTHON=/path/to/python skips the install and uses that interpreter's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/install.sh

if [ -n "${CUTOUT_DEMO_PYTHON:-}" ]; then
  BIN=$(dirname "$CUTOUT_DEMO_PYTHON")
else
  echo "== installing apache-airflow==$NEWEST_AIRFLOW and the provider into .venv (about a minute the first time)"
  install_env .venv "$NEWEST_AIRFLOW" sandbox
  BIN=$ROOT/.venv/bin
fi

DEMO=$ROOT/.demo
rm -rf "$DEMO"
mkdir -p "$DEMO"
export AIRFLOW_HOME=$DEMO/airflow-home
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/example_dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__TEST_CONNECTION=Enabled  # only in this throw-away home
export CUTOUT_EXAMPLE_OUTPUT=$DEMO/output
unset AIRFLOW_CONN_CUTOUT_DEFAULT

echo "== starting the sandbox"
"$BIN/cutout-sandbox" --port 0 --balance 1000 > "$DEMO/sandbox.out" 2> "$DEMO/sandbox.err" &
SANDBOX_PID=$!
trap 'kill $SANDBOX_PID 2>/dev/null; wait $SANDBOX_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$DEMO/sandbox.out" ] && break; sleep 0.1; done
SANDBOX_URL=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.stdin.readline())["sandbox"])' < "$DEMO/sandbox.out")
echo "   sandbox at $SANDBOX_URL"

echo "== throw-away Airflow home in $AIRFLOW_HOME"
"$BIN/airflow" db migrate > "$DEMO/airflow-db.log" 2>&1
"$BIN/airflow" connections add cutout_default --conn-type cutout --conn-host "$SANDBOX_URL" \
  --conn-password demo-key-not-secret > /dev/null
"$BIN/airflow" connections test cutout_default 2>/dev/null | grep -E "Connection (success|failed)|Connected to|connection failed" | sed 's/^/   /'


for run in first second; do
  echo "== $run run of example_cutout_catalog_refresh"
  "$BIN/airflow" dags test example_cutout_catalog_refresh > "$DEMO/dag-$run.log" 2>&1 || {
    tail -40 "$DEMO/dag-$run.log"; exit 1; }
  grep -o "Cutout batch summary: .*}" "$DEMO/dag-$run.log" | head -1 | sed 's/^/   /'
done

"$BIN/python" - "$CUTOUT_EXAMPLE_OUTPUT/catalog" "$SANDBOX_URL" <<'PY'
import json, sys, urllib.request
from airflow_provider_cutout.manifest import read_manifest
folder, sandbox = sys.argv[1], sys.argv[2]
entries = read_manifest(folder)
stored = sorted(e["stored_path"] for e in entries.values() if e["status"] == "stored")
ledger = json.load(urllib.request.urlopen(f"{sandbox}/__sandbox__/ledger"))
print(f"== {len(stored)} edited images in {folder}")
for path in stored[:4]:
    print(f"   {path}")
print(f"   ... manifest log: {folder}/_cutout/manifest/")
print(f"== sandbox ledger: {ledger['charges']} edits charged, {ledger['credits_charged']} credits, "
      f"balance {ledger['balance']} (the second run charged nothing)")
print(f"== review gallery: file://{folder}/cutout-gallery.html (open it in a browser)")
if len(stored) != 12 or ledger["charges"] != 12:
    sys.exit("demo failed: expected 12 stored images and 12 charges")
PY
echo "== done; the sandbox is stopped. Logs: $DEMO"
