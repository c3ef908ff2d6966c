"""The ``model_rollback`` DAG: move a model's registry alias and its serving deployment back together.

Params: ``model`` (one of the specs), ``version`` (default ``previous``) and an optional ``reason``
(its type allows null, so Airflow's trigger form does not mark it required). The run
resolves the version (refusing an unknown model or version before anything changes),
stops early when that version already serves, and otherwise deploys it through the
model's own target exactly like a release does: stage, smoke, shift, verify, promote, with
automatic undo if any of that fails. It holds the same deploy lease as a release, so a
rollback and a release never deploy the same model at once; rollbacks of different models
run side by side. Once it holds the lease it checks that production is still the "from"
version it resolved, and stops if another run changed it meanwhile. ``record`` writes the record
(green whenever it recorded); ``outcome``, last, fails the run with the outcome and its reasons unless
it is ``reverted`` or ``no-change``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, Param

from model_delivery.dag_factory import OPTIONAL, START_DATE, deploy_chain
from model_delivery.operators import ResolveRollbackOperator
from model_delivery.release import MAX_REASON

MODEL = "{{ params.model }}"
ROLLBACKS_AT_ONCE = 8


def is_a_change(target: dict[str, Any]) -> bool:
    """Go on unless the target version already serves."""
    return not target.get("no_op")


def rollback_dag(models: list[str]) -> DAG:
    """The manual rollback DAG for the given models."""
    with DAG(
        dag_id="model_rollback",
        description="Roll a model back to its previous (or a named) version: registry and serving together",
        doc_md=__doc__,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=ROLLBACKS_AT_ONCE,  # serialized per model by the deploy lease, not across models
        tags=["model-delivery", "rollback"],
        params={
            "model": Param(models[0] if models else "", type="string", enum=models or [""], title="Model"),
            "version": Param("previous", type="string", minLength=1, maxLength=20, title="Version",
                             description="A registry version number, or 'previous' (the version before production)."),
            "reason": Param(None, type=[OPTIONAL, "string"], maxLength=MAX_REASON, title="Reason",
                            description="Why; recorded with the rollback. Optional (empty is the same as none)."),
        },
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    ) as dag:
        resolve = ResolveRollbackOperator(task_id="resolve", model=MODEL, version="{{ params.version }}")
        target: Any = resolve.output
        go_on = ShortCircuitOperator(task_id="detect_change", python_callable=is_a_change,
                                     op_kwargs={"target": target}, ignore_downstream_trigger_rules=False,
                                     doc_md="Ends the run when the version already serves.")
        go_on >> deploy_chain(MODEL, target)
    return dag
