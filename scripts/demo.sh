#!/usr/bin/env bash
# make demo [MODEL=code_lm]: initialise the embedded default and run one whole release of the demo model
# (breast_cancer by default; code_lm is the language model, served by vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-breast_cancer}"
mkdir -p "$AIRFLOW_HOME"

runtime=$(python -c 'import sys
from model_delivery.settings import get_settings
from model_delivery.spec import load_spec
print(load_spec(get_settings().models_dir / sys.argv[1]).serving.runtime)' "$MODEL")
if [ "$runtime" = vllm ]; then
  echo "==> vLLM's own virtualenv (.local/vllm-venv; the first time this takes about 5 minutes and 3.4 GB)"
  bash scripts/vllm-venv.sh
fi

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
