#!/usr/bin/env bash
# make demo: initialise the embedded default and run one whole release of the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-breast_cancer}"
mkdir -p "$AIRFLOW_HOME"

echo "==> Initialising the Airflow metadata DB (SQLite under .local/airflow)"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }

echo "==> Releasing $MODEL: airflow dags test release__$MODEL (log: .local/demo-release.log)"
set +e
airflow dags test "release__$MODEL" -c '{"reason": "make demo"}' >.local/demo-release.log 2>&1
status=$?
set -e
python -m model_delivery.cli summary "$MODEL" || true
if [ $status -ne 0 ]; then
  echo "The release did not succeed (exit $status). Last lines of .local/demo-release.log:" >&2
  tail -30 .local/demo-release.log >&2
  exit $status
fi
