"""Example producers of the assets that trigger releases: one ``data_refresh__<model>`` DAG per spec
with ``trigger_on``.

In a real project this DAG is your data pipeline; its only contract with model-delivery is
the outlet: when it emits an event of the spec's ``trigger_on`` asset, Airflow queues a
release of that model. Here the refresh records a small manifest of the data snapshot it
saw (the model's reference data) so the event carries something meaningful.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset

from model_delivery.dag_factory import START_DATE
from model_delivery.settings import get_settings
from model_delivery.spec import ModelSpec, discover_specs


def refresh_snapshot(model: str, **context: Any) -> dict[str, Any]:
    """Record the snapshot of the model's data and attach it to the asset event."""
    from model_delivery.records import now
    from model_delivery.spec import load_spec
    from model_server.manifest import hash_file

    settings = get_settings()
    spec = load_spec(settings.models_dir / model)
    sha, size = hash_file(settings.models_dir / model / spec.validation.reference)
    snapshot = {"model": model, "reference_sha256": sha, "size_bytes": size, "refreshed_at": now()}
    assert spec.trigger_on is not None
    context["outlet_events"][Asset(spec.trigger_on)].extra = snapshot
    return snapshot


def data_refresh_dag(spec: ModelSpec) -> DAG:
    assert spec.trigger_on is not None
    with DAG(
        dag_id=f"data_refresh__{spec.name}",
        description=f"Example data refresh that triggers release__{spec.name} through {spec.trigger_on}",
        doc_md=__doc__,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        tags=["model-delivery", "data", f"model:{spec.name}"],
        default_args={"owner": spec.owner, "retries": spec.retries},
    ) as dag:
        PythonOperator(
            task_id="refresh",
            python_callable=refresh_snapshot,
            op_kwargs={"model": spec.name},
            outlets=[Asset(spec.trigger_on)],
            doc_md="Refreshes the data and emits the asset event that triggers the release.",
        )
    return dag


def data_refresh_dags() -> dict[str, DAG]:
    specs, _ = discover_specs(get_settings().models_dir)
    return {f"data_refresh__{s.name}": data_refresh_dag(s) for s in specs.values() if s.trigger_on}
