#!/usr/bin/env bash
# make up: the Airflow UI with the project's DAGs (airflow standalone, SQLite, in the foreground).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$AIRFLOW_HOME"
# The delivery_metrics DAG reads run history through the REST API with this connection (docs/metrics.md).
# Its password is admin's, from the simple auth manager's passwords file; never printed.
if [ -z "${AIRFLOW_CONN_MODEL_DELIVERY_AIRFLOW_API:-}" ]; then
    AIRFLOW_CONN_MODEL_DELIVERY_AIRFLOW_API="$(python -m model_delivery.devstack api-connection)"
    export AIRFLOW_CONN_MODEL_DELIVERY_AIRFLOW_API
fi
cat <<MSG
==> Starting airflow standalone with the DAGs in $AIRFLOW__CORE__DAGS_FOLDER
    UI:        http://localhost:8080  (ready in about 15 s)
    Releases:  http://localhost:8080/model-releases/  (the "Model releases" page; also in the UI's navigation)
    user:      admin
    password:  in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
    Stop with Ctrl-C. Model servers started by releases keep running: scripts/stop-servers.sh stops them.
MSG
exec airflow standalone
