"""RollbackModelOperator: put back what served before this run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class RollbackModelOperator(ReleaseStageOperator):
    """Undo this run's deployment, from whatever step it reached; skip if it deployed nothing.

    Runs when any deploy-side stage failed (``trigger_rule=one_failed``). The run still
    ends failed: the record task fails it, so CI sees the release did not happen.

    :param model: the model.
    """

    ui_color = "#f5b7b1"

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from model_delivery.release import rollback

        result = rollback(rc)
        if result["action"] == "none":
            raise AirflowSkipException(f"nothing to roll back: this run deployed nothing; serving {result['serving']}")
        self.log.warning("rolled back %s: %s; now serving version %s", rc.model, result["action"], result["serving"])
        return result
