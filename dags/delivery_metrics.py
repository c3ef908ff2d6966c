"""The ``delivery_metrics`` DAG: coverage, failure rate, MTTF, MTTR and the DORA figures, daily and on demand.

Formulas: ``model_delivery.metrics``; definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset, CronTriggerTimetable

from model_delivery.dag_factory import START_DATE
from model_delivery.metrics import ASSET_URI, WINDOWS, compute_delivery_metrics, measure_coverage

DOC = f"""
## Delivery metrics

Computes, per model and overall, over the last {", ".join(map(str, WINDOWS))} days:
code coverage, failure rate, MTTF, MTTR, deployment frequency, lead time and change failure
rate, from the release records and from Airflow's DAG runs and task instances (REST API,
connection `model_delivery_airflow_api`).

Writes `<artifact root>/_delivery_metrics/latest.json` and appends to `history.csv`, and emits
the asset `{ASSET_URI}` so dashboards can depend on it. The "Model releases" page shows the latest
figures. Every formula and edge case: `docs/metrics.md`.

### Trigger
Daily at 05:30 UTC, or now: `airflow dags trigger delivery_metrics`.
"""

with DAG(
    dag_id="delivery_metrics",
    description="Delivery metrics: coverage, failure rate, MTTF, MTTR, DORA (7, 30, 90 days)",
    doc_md=DOC,
    schedule=CronTriggerTimetable("30 5 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["model-delivery", "metrics"],
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=2)},
) as dag:
    coverage = PythonOperator(
        task_id="measure_coverage",
        python_callable=measure_coverage,
        execution_timeout=timedelta(minutes=30),
        doc_md="Reads the project's line coverage from the last `make test` (`.local/coverage.json`) and runs "
        "each model's own tests (`<model>/tests/`) under coverage.py to measure its build code.",
    )
    PythonOperator(
        task_id="compute",
        python_callable=compute_delivery_metrics,
        op_kwargs={"coverage": coverage.output},
        outlets=[Asset(ASSET_URI)],
        doc_md="Computes every figure from the release records and Airflow's metadata, writes `latest.json` "
        "and `history.csv`, and emits the metrics asset.",
    )
