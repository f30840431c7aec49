#!/usr/bin/env bash
# A real Airflow deployment on loopback, from scratch: PostgreSQL and Redis from Debian's packages
# (installed with apt-get if missing, each started on a free port under a temporary folder), the
# metadata DB migrated on Postgres, the API server, scheduler, DAG processor, triggerer, two Celery
# workers with distinct hostnames, and the Cutout sandbox. Prints where the UI is; stops everything on
# exit (Ctrl-C, or SIGTERM to this script).
#
# Settings (environment):
#   CUTOUT_CLUSTER_DIR      state folder (default: a new temporary folder)
#   CUTOUT_CLUSTER_DAGS     the DAGs folder (default: example_dags)
#   CUTOUT_CLUSTER_WORKERS  Celery workers (default 2), named worker1@cutout, worker2@cutout...
#   CUTOUT_CLUSTER_API_PORT the API server's (the UI's) port (default: a free port); a busy one fails
#   CUTOUT_CLUSTER_PYTHON   an interpreter whose environment already has Airflow and the provider
#                           with its cluster extra (default: install them into .venv)
#   CUTOUT_PG_URL           reuse a running PostgreSQL (postgresql://user@host:port/db) instead
#   CUTOUT_REDIS_URL        reuse a running Redis (redis://host:port/0) instead
#   CUTOUT_SANDBOX_ARGS     extra cutout-sandbox flags, e.g. "--latency 0.2 --balance 100000"
# The file $CUTOUT_CLUSTER_DIR/cluster.env lists the URLs and the workers' process groups; the line
# "cluster ready" on stdout says everything answers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/install.sh
WORKERS=${CUTOUT_CLUSTER_WORKERS:-2}
DIR=${CUTOUT_CLUSTER_DIR:-$(mktemp -d -t cutout-cluster-XXXXXX)}
mkdir -p "$DIR"
chmod 755 "$DIR"
PIDS=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [ -n "${CUTOUT_CLUSTER_API_PORT:-}" ] && ! python3 -c 'import socket, sys; s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$CUTOUT_CLUSTER_API_PORT" 2>/dev/null; then
  echo "CUTOUT_CLUSTER_API_PORT=$CUTOUT_CLUSTER_API_PORT: that port is busy (or no port); pick a free one" >&2
  exit 1
fi

stop_all() {
  trap - EXIT INT TERM
  echo "== stopping the cluster"
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  if [ -n "${REDIS_OWN:-}" ]; then redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; fi
  if [ -n "${PG_OWN:-}" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    [ "$PG_DIR" = "$DIR/pg" ] || rm -rf "$PG_DIR"
  fi
}
trap stop_all EXIT
trap 'exit 0' INT TERM

apt_install() {  # apt_install PACKAGE...: install Debian packages that are missing
  local SUDO
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  echo "== installing $* with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

as_postgres() {  # PostgreSQL refuses to run as root: run its tools as the postgres user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {  # start NAME COMMAND...: run in its own process group, log to $DIR/NAME.log
  local name=$1
  shift
  setsid "$@" > "$DIR/$name.log" 2>&1 &
  PIDS+=($!)
  echo "$name" "$!" >> "$DIR/processes"
}

# -- Python environment ------------------------------------------------------------------------
if [ -n "${CUTOUT_CLUSTER_PYTHON:-}" ]; then
  BIN=$(dirname "$CUTOUT_CLUSTER_PYTHON")
else
  echo "== installing apache-airflow==$NEWEST_AIRFLOW and the provider with its cluster extra into .venv"
  install_env .venv "$NEWEST_AIRFLOW" sandbox,cluster
  BIN=$ROOT/.venv/bin
fi

# -- PostgreSQL --------------------------------------------------------------------------------
if [ -n "${CUTOUT_PG_URL:-}" ]; then
  PG_URL=$CUTOUT_PG_URL
  echo "== reusing PostgreSQL at ${PG_URL%%\?*}"
else
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  PG_BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  PG_PORT=$(free_port)
  PG_DIR=$DIR/pg
  if [ "$(id -u)" = 0 ]; then  # the postgres user may not reach $DIR: give it a folder of its own
    PG_DIR=$(mktemp -d -t cutout-cluster-pg-XXXXXX)
    chown postgres "$PG_DIR"
    echo "$PG_DIR" > "$DIR/pg-dir"
  fi
  as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U airflow --auth=trust > "$DIR/pg-initdb.log"
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
  PG_OWN=1
  as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U airflow airflow
  PG_URL=postgresql://airflow@127.0.0.1:$PG_PORT/airflow
  echo "== PostgreSQL on 127.0.0.1:$PG_PORT (data in $PG_DIR)"
fi

# -- Redis -------------------------------------------------------------------------------------
if [ -n "${CUTOUT_REDIS_URL:-}" ]; then
  REDIS_URL=$CUTOUT_REDIS_URL
  echo "== reusing Redis at $REDIS_URL"
else
  command -v redis-server >/dev/null || apt_install redis-server
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$DIR" --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid"
  REDIS_OWN=1
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
  echo "== Redis on 127.0.0.1:$REDIS_PORT"
fi

# -- Airflow settings shared by every component --------------------------------------------------
API_PORT=${CUTOUT_CLUSTER_API_PORT:-$(free_port)}
export AIRFLOW_HOME=$DIR/airflow
export AIRFLOW__CORE__EXECUTOR=airflow.providers.celery.executors.celery_executor.CeleryExecutor
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=${PG_URL/postgresql:/postgresql+psycopg2:}
export AIRFLOW__CELERY__BROKER_URL=$REDIS_URL
export AIRFLOW__CELERY__RESULT_BACKEND=db+${PG_URL/postgresql:/postgresql+psycopg2:}
export AIRFLOW__CELERY__WORKER_CONCURRENCY=${AIRFLOW__CELERY__WORKER_CONCURRENCY:-4}
export AIRFLOW__CORE__DAGS_FOLDER=${CUTOUT_CLUSTER_DAGS:-$ROOT/example_dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True  # a throw-away deployment on loopback only
export AIRFLOW__CORE__TEST_CONNECTION=Enabled
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$API_PORT/execution/
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$API_PORT
export AIRFLOW__API_AUTH__JWT_SECRET=${AIRFLOW__API_AUTH__JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export AIRFLOW__CUTOUT__REVIEW_SECRET=${AIRFLOW__CUTOUT__REVIEW_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}  # signs the review view's decisions and folder owners
export AIRFLOW__CORE__HOSTNAME_CALLABLE=cutout_cluster_hostname.get_hostname
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-10}
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT:-120}
export CUTOUT_EXAMPLE_OUTPUT=${CUTOUT_EXAMPLE_OUTPUT:-$DIR/output}
export PYTHONPATH=$DIR${PYTHONPATH:+:$PYTHONPATH}
# Every worker runs on this machine: each reports its own name as its host, as separate machines would.
cat > "$DIR/cutout_cluster_hostname.py" <<'EOF'
import os
import socket


def get_hostname() -> str:
    return os.environ.get("CUTOUT_WORKER_NAME") or socket.getfqdn()
EOF

# -- the sandbox -------------------------------------------------------------------------------
# shellcheck disable=SC2086
start sandbox "$BIN/cutout-sandbox" --port 0 ${CUTOUT_SANDBOX_ARGS:-}
for _ in $(seq 100); do grep -q '^{"sandbox"' "$DIR/sandbox.log" 2>/dev/null && break; sleep 0.1; done
SANDBOX_URL=$(grep -m1 '^{"sandbox"' "$DIR/sandbox.log" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["sandbox"])')
export AIRFLOW_CONN_CUTOUT_DEFAULT="{\"conn_type\": \"cutout\", \"host\": \"$SANDBOX_URL\", \"password\": \"cluster-key-not-secret\"}"
echo "== sandbox at $SANDBOX_URL"

# -- Airflow -----------------------------------------------------------------------------------
echo "== migrating the metadata DB on PostgreSQL"
"$BIN/airflow" db migrate > "$DIR/db-migrate.log" 2>&1 || { tail -30 "$DIR/db-migrate.log"; exit 1; }
"$BIN/airflow" pools set cutout_api "${CUTOUT_POOL_SLOTS:-8}" "Cutout API calls across all DAGs" > /dev/null

start api-server "$BIN/airflow" api-server --host 127.0.0.1 --port "$API_PORT"
start scheduler "$BIN/airflow" scheduler
start dag-processor "$BIN/airflow" dag-processor
start triggerer "$BIN/airflow" triggerer --skip-serve-logs
for n in $(seq "$WORKERS"); do
  CUTOUT_WORKER_NAME=worker$n start "worker$n" "$BIN/airflow" celery worker \
    --celery-hostname "worker$n@cutout" --skip-serve-logs
done

{
  echo "API_URL=http://127.0.0.1:$API_PORT"
  echo "SANDBOX_URL=$SANDBOX_URL"
  echo "PG_URL=$PG_URL"
  echo "REDIS_URL=$REDIS_URL"
  echo "AIRFLOW_HOME=$AIRFLOW_HOME"
  echo "OUTPUT_DIR=$CUTOUT_EXAMPLE_OUTPUT"
  while read -r name pid; do echo "PGID_${name//-/_}=$pid"; done < "$DIR/processes"
} > "$DIR/cluster.env"

healthy() {  # the scheduler, DAG processor and triggerer report healthy through the API server
  "$BIN/python" - "http://127.0.0.1:$API_PORT/api/v2/monitor/health" <<'EOF' 2>/dev/null
import json, sys, urllib.request
health = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))
sys.exit(0 if all(health.get(p, {}).get("status") == "healthy" for p in ("scheduler", "dag_processor", "triggerer")) else 1)
EOF
}
for _ in $(seq 240); do healthy && break; sleep 0.5; done
healthy || { echo "Airflow did not become healthy; see $DIR/*.log"; exit 1; }
workers_up=0
for _ in $(seq 240); do
  workers_up=$("$BIN/celery" --broker "$REDIS_URL" inspect ping --timeout 2 2>/dev/null | grep -c "@cutout: OK" || true)
  [ "$workers_up" -ge "$WORKERS" ] && break
  sleep 1
done
[ "$workers_up" -ge "$WORKERS" ] || { echo "the Celery workers did not answer; see $DIR/worker*.log"; exit 1; }

echo "cluster ready: the UI is at http://127.0.0.1:$API_PORT (all users are admins; loopback only)"
echo "   state and logs in $DIR; stop with Ctrl-C"
wait
