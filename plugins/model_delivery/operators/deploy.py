"""DeployModelOperator: start the candidate beside production, or shift traffic to it."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from model_delivery.release import ReleaseContext

STEPS = ("staging", "production")
BUSY_RETRY_SECONDS = 10


class DeployModelOperator(ReleaseStageOperator):
    """Deploy through the spec's target (``local`` runs blue-green on this machine).

    A target may raise ``RolloutPending`` (``kubernetes`` does, after a short in-task wait): the
    operator then defers to the trigger it names and runs the step again when the trigger fires.

    :param model: the model.
    :param candidate: the build stage's result (templated).
    :param step: ``staging`` starts the candidate without traffic; ``production`` shifts traffic to it.
    :param wait_timeout: how long ``staging`` waits for another run's deploy lease before it fails (by
        default the spec's ``deploy.lease_wait_seconds``).
    """

    template_fields = ("model", "candidate")
    ui_color = "#d5f5e3"

    def __init__(self, *, candidate: Any, step: str, wait_timeout: timedelta | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        self.candidate = candidate
        self.step = step
        self.wait_timeout = wait_timeout

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.deploy.kubernetes.rollout import RolloutPending

        try:
            return self._run(rc)
        except RolloutPending as pending:  # a long rollout wait: free the worker slot, wait in the triggerer
            from model_delivery.records import now

            rc.record.add_stage(self.task_id, {"status": "waiting", "note": str(pending), "started_at": now()})
            self.defer(trigger=pending.trigger(), method_name="execute_complete", timeout=pending.timeout)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """The deferred rollout wait ended: run the step again (idempotent); it now finds the rollout over."""
        self.log.info("rollout wait ended: %s", event)
        return self.execute(context)

    def _run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import deploy_production, deploy_staging

        if self.step == "production":
            return deploy_production(rc)
        from airflow.sdk.exceptions import AirflowRescheduleException
        from airflow.sdk.timezone import utcnow

        from model_delivery.ledger import DeployBusy, LeaseWaitExpired
        from model_delivery.metrics import parse_time

        try:
            return deploy_staging(rc, self.candidate)
        except DeployBusy as busy:
            self.log.warning("%s", busy)
            since = parse_time((rc.record.load().get("stages", {}).get(self.task_id) or {}).get("waiting_since"))
            wait = self.wait_timeout or timedelta(seconds=rc.spec.deploy.lease_wait_seconds)
            if since is not None and (utcnow() - since).total_seconds() > wait.total_seconds():
                raise LeaseWaitExpired(f"{busy} Gave up after waiting {wait} (deploy.lease_wait_seconds). "
                                   "Fix: let that run end, or mark it failed in the UI (its lease is then taken "
                                   "over), and trigger this release again.") from None
            raise AirflowRescheduleException(utcnow() + timedelta(seconds=BUSY_RETRY_SECONDS)) from None
