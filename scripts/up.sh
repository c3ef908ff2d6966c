#!/usr/bin/env bash
# make up: the Airflow UI with the project's DAGs (airflow standalone, SQLite, in the foreground).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$AIRFLOW_HOME"
cat <<MSG
==> Starting airflow standalone with the DAGs in $AIRFLOW__CORE__DAGS_FOLDER
    UI:        http://localhost:8080  (ready in about 15 s)
    Releases:  http://localhost:8080/model-releases/  (the "Model releases" page; also in the UI's navigation)
    user:      admin
    password:  in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
    Stop with Ctrl-C. Model servers started by releases keep running: scripts/stop-servers.sh stops them.
MSG
exec airflow standalone
