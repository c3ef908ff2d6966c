"""The shared shape of a release stage: time it, record it, push a small result, raise typed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from model_delivery.release import ReleaseContext


FIRST_STAGES = ("build", "resolve")
"""The first stage of a release and of a rollback: a run restarted there clears its old outcome."""


class ReleaseStageOperator(BaseOperator):
    """Base of the stage operators: subclasses implement :meth:`run`.

    The stage's entry in the release record (status, start, seconds, result or error) is
    written whatever happens. A dry run (:class:`DryRunComplete`) is recorded as ``dry-run`` and
    skips what follows. A typed failure's findings are pushed to XCom *before* the
    task fails, so the UI and later tasks can read why.

    :param model: the model this release delivers (its folder name) (templated).
    """

    template_fields: tuple[str, ...] = ("model",)
    ui_color = "#e8f1fb"

    def __init__(self, *, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def release_context(self, context: Context) -> ReleaseContext:
        from model_delivery.release import ReleaseContext

        params = context.get("params") or {}
        ti = context["ti"]
        return ReleaseContext(
            model=self.model,
            run_id=context["run_id"],
            dag_id=self.dag_id,
            conf={key: params[key] for key in params},
            log=self.log.info,
            dagrun_state=getattr(ti, "get_dagrun_state", None),
            last_try=ti.try_number > getattr(ti, "max_tries", 0),
        )

    def on_kill(self) -> None:
        """The task is being killed (marked failed, timed out): stop the process groups it started
        (a build, ``ansible-playbook``), SIGINT then SIGKILL, so a retry never runs beside them."""
        from model_delivery.procs import stop_running

        stopped = stop_running()
        if stopped:
            self.log.warning("stopped the process group(s) this task had started: %s", stopped)

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSkipException

        from model_delivery.exceptions import DryRunComplete
        from model_delivery.records import now

        rc = self.release_context(context)
        entry: dict[str, Any] = {"started_at": now(), "try": context["ti"].try_number}
        record = rc.record.load()
        if self.task_id in FIRST_STAGES and record.get("outcome") is not None:  # a cleared run starts over
            rc.record.update(outcome=None, finished_at=None)
        earlier = record.get("stages", {}).get(self.task_id) or {}
        if earlier.get("status") == "waiting":  # rescheduled while another run held the deploy lease
            entry.update(waits=earlier.get("waits", 1), waiting_since=earlier.get("waiting_since"))
        start = time.monotonic()
        try:
            result = self.run(rc)
        except AirflowSkipException as exc:
            rc.record.add_stage(self.task_id, {**entry, "status": "skipped", "note": str(exc),
                                               "seconds": time.monotonic() - start})
            raise
        except DryRunComplete as exc:  # not a failure: the deploy stages after this one are skipped
            context["ti"].xcom_push(key="return_value", value=exc.result)
            rc.record.add_stage(self.task_id, {**entry, "status": "dry-run", "result": exc.result, "note": str(exc),
                                               "seconds": time.monotonic() - start})
            raise AirflowSkipException(str(exc)) from None
        except AirflowRescheduleException as exc:
            entry.update(waits=entry.get("waits", 0) + 1, waiting_since=entry.get("waiting_since") or entry["started_at"])
            rc.record.add_stage(self.task_id, {**entry, "status": "waiting", "seconds": time.monotonic() - start,
                                               "note": f"waiting for another run to finish deploying (next try {exc.reschedule_date})"})
            raise
        except Exception as exc:
            partial = getattr(exc, "result", None)
            if partial is not None:
                context["ti"].xcom_push(key="return_value", value=partial)
            rc.record.add_stage(self.task_id, {**entry, "status": "failed", "error": str(exc), "result": partial,
                                               "error_type": type(exc).__name__, "seconds": time.monotonic() - start})
            raise
        rc.record.add_stage(self.task_id, {**entry, "status": "success", "result": result,
                                           "note": result.get("note", ""), "seconds": time.monotonic() - start})
        return result
