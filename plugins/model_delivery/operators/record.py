"""RecordReleaseOperator: write release.json and report.md, and fail the run unless released."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class RecordReleaseOperator(BaseOperator):
    """Close the release record. Runs whatever happened before (``trigger_rule=all_done``).

    It fails the run unless the outcome is ``released`` or ``no-change``, so a rejected or rolled-back
    release is visible as a failed run to the UI and to CI.

    :param model: the model.
    """

    template_fields = ("model",)
    ui_color = "#eaeded"

    def __init__(self, *, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def execute(self, context: Context) -> dict[str, Any]:
        from model_delivery.exceptions import ReleaseFailed
        from model_delivery.records import SUCCESS_OUTCOMES
        from model_delivery.release import ReleaseContext

        params = context.get("params") or {}
        rc = ReleaseContext(model=self.model, run_id=context["run_id"], dag_id=self.dag_id, log=self.log.info)
        record = rc.record.finalize(dag_id=self.dag_id, conf={key: params[key] for key in params})
        if rc.ledger.release(rc.model, rc.run_id):
            self.log.warning("gave back the deploy lease that this run still held")
        self.log.info("release %s of %s: %s; report %s", rc.run_id, self.model, record["outcome"], record["report"])
        summary = {key: record[key] for key in ("outcome", "reasons", "report")}
        if record["outcome"] not in SUCCESS_OUTCOMES:
            context["ti"].xcom_push(key="return_value", value=summary)
            raise ReleaseFailed(f"release {record['outcome']}: " + "; ".join(record["reasons"]), result=summary)
        return summary
