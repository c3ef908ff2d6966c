"""ApproveReleaseOperator: a person approves the candidate before production traffic moves."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from model_delivery.release import ReleaseContext


class ApproveReleaseOperator(ApprovalOperator):
    """Ask for approval in Airflow's Required Actions, showing the gate verdict, metrics and smoke results.

    A rejection or no answer within the timeout fails the task (no retry), so production
    traffic never moves; the rollback task then stops the staged candidate. The answer,
    who gave it and when, and who triggered the run, are written to the release record.
    An approval by the user who triggered the run is refused (recorded under ``refused``)
    and the request waits on for another person, unless the spec sets ``approval_allow_self``.

    :param model: the model.
    :param timeout_minutes: how long to wait for an answer.
    """

    ui_color = "#f9e79f"

    def __init__(self, *, model: str, timeout_minutes: float, **kwargs: Any) -> None:
        super().__init__(
            subject=f"Release {model} to production?",
            body="(filled in when the task runs)",
            response_timeout=timedelta(minutes=timeout_minutes),
            fail_on_reject=True,
            **kwargs,
        )
        self.model = model

    def _context(self, context: Context) -> ReleaseContext:
        from model_delivery.release import ReleaseContext

        return ReleaseContext(model=self.model, run_id=context["run_id"], dag_id=self.dag_id, log=self.log.info)

    def execute(self, context: Context) -> Any:
        from model_delivery.release import approval_request

        rc = self._context(context)
        self.body = approval_request(rc)
        return self._ask(rc, context, {"status": "waiting", "started_at": _now(), "note": "waiting for a person"})

    def _ask(self, rc: ReleaseContext, context: Context, entry: dict[str, Any]) -> Any:
        """Record ``entry`` as the stage, then write the request (clearing an earlier answer) and wait."""
        rc.record.add_stage(self.task_id, entry)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        rc = self._context(context)
        entry: dict[str, Any] = {**rc.record.load().get("stages", {}).get(self.task_id, {}), "finished_at": _now()}
        answer = _answer(event)
        triggered_by = getattr(context["dag_run"], "triggering_user_name", None)
        entry["triggered_by"] = triggered_by
        if (answer["chosen"] == [self.APPROVE] and triggered_by and answer["by"] == triggered_by
                and not rc.spec.approval_allow_self):
            # Four eyes: the person who asked for the release does not approve it. Ask again (Airflow clears
            # the answer when the request is written anew) and wait for somebody else.
            refused = [*entry.get("refused", []), {**answer, "why": "approved by the user who triggered the run"}]
            from model_delivery.release import approval_request

            entry.pop("finished_at")
            self.log.warning("approval by %s refused: they triggered this run; waiting for another person",
                             triggered_by)
            self.body = approval_request(rc)
            return self._ask(rc, context, {
                **entry, "status": "waiting", "refused": refused,
                "note": f"approval by {triggered_by}, who triggered the run, refused: another person must approve "
                "(approval_allow_self: true allows it)"})
        start = time.monotonic()
        try:
            result = super().execute_complete(context, event)
        except Exception as exc:
            timed_out = event.get("error_type") == "timeout"
            why = "no answer before the approval timeout" if timed_out else f"rejected: {exc}"
            rc.record.add_stage(self.task_id, {**entry, "status": "failed", "error": f"approval {why}",
                                               "result": _answer(event), "seconds": time.monotonic() - start})
            raise
        rc.record.add_stage(self.task_id, {**entry, "status": "success", "result": _answer(event),
                                           "note": f"approved by {_answer(event).get('by')}"})
        return result


def _answer(event: dict[str, Any]) -> dict[str, Any]:
    user = event.get("responded_by_user") or {}
    responded: Any = event.get("responded_at")
    return {
        "chosen": event.get("chosen_options"),
        "by": user.get("name") if isinstance(user, dict) else str(user),
        "at": responded.isoformat() if hasattr(responded, "isoformat") else responded,
        "error_type": event.get("error_type"),
    }


def _now() -> str:
    from model_delivery.records import now

    return now()
