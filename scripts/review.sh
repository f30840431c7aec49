#!/usr/bin/env bash
# A local review UI, from scratch: install into .venv, start the sandbox, make a throw-away Airflow home in
# .review/ (sqlite, LocalExecutor, the simple auth manager with a reviewer and a viewer), start the API server,
# scheduler and DAG processor (and the triggerer on Airflow before 3.3), trigger example_cutout_review once and
# wait until its review gate asks; then print the URLs and the passwords. Ctrl-C stops everything it started.
#
# Settings (environment; Airflow settings from your shell, AIRFLOW*, are not used):
#   CUTOUT_REVIEW_PORT    the Airflow UI's port (default 8080); a busy port fails, nothing running is reused
#   CUTOUT_REVIEW_PYTHON  an interpreter whose environment already has Airflow and the provider
#                         with its sandbox extra (default: install them into .venv)
#   CUTOUT_REVIEW_CATALOG your own catalog to review: a products.json as example_dags/catalog/products.json
#                         (key, image, prompt, aspect_ratio per item; images relative to the sandbox's
#                         samples, or absolute https:// URLs) (default: the example's 12 products)
# shellcheck disable=SC2317  # (shellcheck 0.9) functions run by trap and wait_for are reachable
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/install.sh
PORT=${CUTOUT_REVIEW_PORT:-8080}
URL=http://127.0.0.1:$PORT
DAG=example_cutout_review
REVIEW=$ROOT/.review
LOGS=$REVIEW/logs
PIDS=() NAMES=()  # the process groups started, and their names

fail() { echo "make review failed: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# -- nothing is reused: a busy port or a review still running fails before anything starts -----------------
[[ $PORT =~ ^[0-9]+$ ]] || fail "CUTOUT_REVIEW_PORT=$PORT is no port number"
python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$PORT" 2>/dev/null ||
  fail "port $PORT is busy; set CUTOUT_REVIEW_PORT to a free one (CUTOUT_REVIEW_PORT=8181 make review)"
if [ -f "$REVIEW/processes" ]; then
  while read -r name pid; do
    if kill -0 -- "-$pid" 2>/dev/null; then fail "a review still runs ($name, process group $pid): stop it first"; fi
  done < "$REVIEW/processes"
fi

if [ -n "${CUTOUT_REVIEW_PYTHON:-}" ]; then
  BIN=$(dirname "$CUTOUT_REVIEW_PYTHON")
else
  echo "== installing apache-airflow==$NEWEST_AIRFLOW and the provider into .venv (about a minute the first time)"
  install_env .venv "$NEWEST_AIRFLOW" sandbox
  BIN=$ROOT/.venv/bin
fi

stop_all() {  # every process group this script started: TERM, then KILL what is left after 10 s
  trap - EXIT INT TERM
  [ ${#PIDS[@]} = 0 ] && return
  echo "== stopping ${NAMES[*]}"
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  echo "== stopped; the home stays in $REVIEW until the next make review"
}
trap stop_all EXIT
trap 'exit 0' INT TERM  # Ctrl-C is how it is meant to stop

start() {  # start NAME COMMAND...: in a process group of its own, logged to .review/logs/NAME.log
  local name=$1
  shift
  setsid "$@" > "$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
  echo "$name $!" >> "$REVIEW/processes"
}

all_alive() {  # fail when a process this script started has stopped
  local i
  for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || fail "${NAMES[$i]} stopped; its log: $LOGS/${NAMES[$i]}.log"
  done
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry the quiet COMMAND every second while every process lives
  local limit=$((SECONDS + $1)) what="$2 did not happen within $1 s"
  shift 2
  until "$@"; do
    all_alive
    [ "$SECONDS" -lt "$limit" ] || fail "$what; logs in $LOGS"
    sleep 1
  done
}

# -- a throw-away Airflow home, recreated on each start ----------------------------------------------------
rm -rf "$REVIEW"
mkdir -p "$LOGS" "$REVIEW/airflow-home/dags"
echo '*' > "$REVIEW/.gitignore"  # nothing in it is for git
for var in $(compgen -e | grep '^AIRFLOW' || true); do unset "$var"; done
export AIRFLOW_HOME=$REVIEW/airflow-home
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$AIRFLOW_HOME/airflow.db
export AIRFLOW__CORE__EXECUTOR=LocalExecutor  # Airflow 3 runs it on sqlite (as `airflow standalone` does)
export AIRFLOW__CORE__PARALLELISM=4  # LocalExecutor keeps a process per slot; 32 by default
export AIRFLOW__CORE__DAGS_FOLDER=$AIRFLOW_HOME/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="reviewer:user,viewer:viewer"  # user: decides; viewer: looks
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$PORT AIRFLOW__API__BASE_URL=$URL  # loopback only
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$URL/execution/
AIRFLOW__API_AUTH__JWT_SECRET=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')
AIRFLOW__CUTOUT__REVIEW_SECRET=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')
export AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__CUTOUT__REVIEW_SECRET  # one of each for every process, new each start
export AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False  # only the runs triggered here or in the UI, no @daily run
# the task logs' servers on free ports, not on 8793 and 8794 (another Airflow may have them)
AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$(free_port) AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$(free_port)
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT
export CUTOUT_EXAMPLE_OUTPUT=$AIRFLOW_HOME/output
cp example_dags/example_cutout_review.py "$AIRFLOW_HOME/dags/"
cp -r example_dags/catalog "$AIRFLOW_HOME/dags/"  # the DAG reads catalog/products.json beside itself
if [ -n "${CUTOUT_REVIEW_CATALOG:-}" ]; then
  cp "$CUTOUT_REVIEW_CATALOG" "$AIRFLOW_HOME/dags/catalog/products.json" || fail "CUTOUT_REVIEW_CATALOG: cannot read it"
fi

echo "== starting the sandbox"
start sandbox "$BIN/cutout-sandbox" --port 0 --balance 1000
wait_for 30 "the sandbox's start" grep -q '^{"sandbox"' "$LOGS/sandbox.log"
SANDBOX_URL=$(grep -m1 '^{"sandbox"' "$LOGS/sandbox.log" |
  "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["sandbox"])')
export AIRFLOW_CONN_CUTOUT_DEFAULT="{\"conn_type\": \"cutout\", \"host\": \"$SANDBOX_URL\",
  \"password\": \"review-key-not-secret\"}"  # a made-up key: the sandbox takes any
echo "   sandbox at $SANDBOX_URL"

echo "== Airflow in $AIRFLOW_HOME"
"$BIN/airflow" db migrate > "$LOGS/db-migrate.log" 2>&1 || { tail -30 "$LOGS/db-migrate.log"; exit 1; }
start api-server "$BIN/airflow" api-server
start scheduler "$BIN/airflow" scheduler
start dag-processor "$BIN/airflow" dag-processor
# Airflow before 3.3 defers a human-in-the-loop task to the triggerer; 3.3 parks it without one.
if "$BIN/python" -c 'import sys; from importlib.metadata import version; from packaging.version import Version
sys.exit(Version(version("apache-airflow")) >= Version("3.3"))'; then
  start triggerer "$BIN/airflow" triggerer
fi
PASSWORDS=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated  # the API server writes it when it starts
password() { "$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$PASSWORDS" "$1"; }
wait_for 120 "the API server's start" curl -sfo /dev/null "$URL/api/v2/monitor/health"
passwords_written() { password reviewer && password viewer; } > /dev/null 2>&1
wait_for 30 "the passwords file" passwords_written
TOKEN=$(curl -sf -X POST "$URL/auth/token" -H 'Content-Type: application/json' \
  -d "{\"username\": \"reviewer\", \"password\": \"$(password reviewer)\"}" |
  "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

echo "== triggering $DAG"
wait_for 120 "$DAG's parsing" curl -sfo /dev/null -H "Authorization: Bearer $TOKEN" "$URL/api/v2/dags/$DAG"
"$BIN/airflow" dags unpause "$DAG" > "$LOGS/unpause.log" 2>&1 || { cat "$LOGS/unpause.log"; exit 1; }
RUN_ID=$("$BIN/airflow" dags trigger "$DAG" -o json 2> "$LOGS/trigger.log" | "$BIN/python" -c 'import json, sys
print(json.loads([line for line in sys.stdin if line.startswith("[{")][0])[0]["dag_run_id"])') ||
  { cat "$LOGS/trigger.log"; exit 1; }
gate_asks() {  # the gate waits for an answer (awaiting_input on Airflow 3.3, deferred before); a failed run fails
  curl -sf -H "Authorization: Bearer $TOKEN" "$URL/api/v2/dags/$DAG/dagRuns/$RUN_Q" | grep -q '"state": *"failed"' &&
    fail "run $RUN_ID failed; task logs in $AIRFLOW_HOME/logs"
  curl -sf -H "Authorization: Bearer $TOKEN" "$URL/api/v2/dags/$DAG/dagRuns/$RUN_Q/hitlDetails" |
    grep -qE '"state": *"(awaiting_input|deferred)"'
}
RUN_Q=$("$BIN/python" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$RUN_ID")
echo "   run $RUN_ID: the catalog refresh edits the products, then the review gate asks"
wait_for 300 "the review gate's question" gate_asks

cat <<EOF
== ready in $SECONDS s (since make review started). Airflow: $URL
   log in at $URL/auth/login as
     reviewer / $(password reviewer)   (role user: approves, rejects, answers the gate)
     viewer   / $(password viewer)   (role viewer: looks only)
   the review view:  $URL/cutout-review/view?dag_id=$DAG&run_id=$RUN_Q&task_id=refresh_catalog&map_index=-1
   the gate's page:  $URL/dags/$DAG/runs/$RUN_Q/tasks/review/required_actions
   The view opens full page from its link, and inside Airflow as the "Cutout review" tab of the task
   instance refresh_catalog; the gate's page links to it too. One run of the DAG at a time: answer the
   gate before you trigger the next. Published results go to $CUTOUT_EXAMPLE_OUTPUT/published.
   Logs: $LOGS. Ctrl-C stops everything.
EOF
wait -n "${PIDS[@]}" || true  # until one of them stops on its own (Ctrl-C runs the trap instead)
all_alive
fail "a process stopped; logs in $LOGS"
