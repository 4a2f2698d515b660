#!/usr/bin/env bash
# The MLflow UI on the embedded tracking store and registry of an artifact store.
#   deployments/mlflow_ui.sh [ARTIFACTS_DIR]    (default: artifacts)
# Port: $MLFLOW_PORT (default 5000), bound to 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARTIFACTS=$(realpath -m "${1:-artifacts}")
PORT=${MLFLOW_PORT:-5000}
# The project's .venv, or else wherever `mlflow` is installed (as in CI).
if [[ -n ${TWEETFLOW_BIN:-} ]]; then
    BIN=$TWEETFLOW_BIN
elif [[ -x $ROOT/.venv/bin/mlflow ]]; then
    BIN=$ROOT/.venv/bin
else
    BIN=$(dirname "$(command -v mlflow || echo /nonexistent/mlflow)")
fi

if [[ ! -f $ARTIFACTS/mlflow/mlflow.db ]]; then
    printf 'error: no MLflow store in %s/mlflow: run a retrain first (make run)\n' \
        "$ARTIFACTS" >&2
    exit 1
fi
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
exec "$BIN/mlflow" ui --host 127.0.0.1 --port "$PORT" \
    --backend-store-uri "sqlite:///$ARTIFACTS/mlflow/mlflow.db" \
    --default-artifact-root "$ARTIFACTS/mlflow/artifacts"
