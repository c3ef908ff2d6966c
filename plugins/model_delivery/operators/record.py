"""The last two tasks of a release or a rollback.

``record`` (RecordReleaseOperator) writes release.json and report.md; ``outcome`` (ReleaseOutcomeOperator)
fails the run, with the outcome and its reasons, unless the release did what was asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

RECORD_TASK = "record"


class RecordReleaseOperator(BaseOperator):
    """Close the release record. Runs whatever happened before (``trigger_rule=all_done``).

    It succeeds whenever it recorded, whatever the outcome (a rejected or rolled-back release too): it fails
    only when recording itself failed. It returns (and so pushes to XCom) the record's summary:
    ``outcome``, ``reasons``, ``report``. The next task, ``outcome``, fails the run when the release
    did not go out.

    :param model: the model.
    """

    template_fields = ("model",)
    ui_color = "#eaeded"

    def __init__(self, *, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def execute(self, context: Context) -> dict[str, Any]:
        from model_delivery.release import ReleaseContext, recorded_conf

        params = context.get("params") or {}
        rc = ReleaseContext(model=self.model, run_id=context["run_id"], dag_id=self.dag_id, log=self.log.info)
        record = rc.record.finalize(dag_id=self.dag_id, conf=recorded_conf({key: params[key] for key in params}),
                                    triggered_by=getattr(context["dag_run"], "triggering_user_name", None))
        if rc.ledger.release(rc.model, rc.run_id):
            self.log.warning("gave back the deploy lease that this run still held")
        self.log.info("release %s of %s: %s; report %s", rc.run_id, self.model, record["outcome"], record["report"])
        return {key: record[key] for key in ("outcome", "reasons", "report")}


def outcome_line(summary: dict[str, Any]) -> str:
    """The outcome and its reasons in one line, e.g. ``rolled-back: smoke: smoke test of ... failed: ...``."""
    reasons = "; ".join(str(reason) for reason in summary.get("reasons") or [])
    return f"{summary.get('outcome')}: {reasons}" if reasons else str(summary.get("outcome"))


class ReleaseOutcomeOperator(BaseOperator):
    """The last task (``trigger_rule=all_done``, after ``record``): fail unless the release did what was asked.

    It reads the summary ``record`` pushed. When the outcome is ``released``, ``no-change``, ``dry-run``
    (or a rollback's ``reverted``) it succeeds; otherwise it pushes the summary, with ``error``, to XCom and
    fails with ``release <outcome>: <reasons>``, so the run fails and this red task says why. When
    ``record`` left no summary (recording failed), it fails saying so. Its ``on_failure_callback``
    notifies (once: a ``ReleaseFailed`` is not retried).
    """

    ui_color = "#d5e8d4"

    def execute(self, context: Context) -> dict[str, Any]:
        from model_delivery.exceptions import ReleaseFailed
        from model_delivery.records import SUCCESS_OUTCOMES

        ti = context["ti"]
        summary = ti.xcom_pull(task_ids=RECORD_TASK)
        if not isinstance(summary, dict) or not summary.get("outcome"):
            summary = {"outcome": "unrecorded", "reasons": [
                f"the {RECORD_TASK} task did not record this release (see its log); release.json may be incomplete"]}
        line = outcome_line(summary)
        if summary["outcome"] in SUCCESS_OUTCOMES:
            self.log.info("release %s", line)
            return summary
        error = f"release {line}"
        ti.xcom_push(key="return_value", value={**summary, "error": error})
        raise ReleaseFailed(error, result=summary)
