"""The ``outcome`` task: green when the release did what was asked, else red with the outcome and its reasons."""

from __future__ import annotations

from typing import Any

import pytest

from model_delivery.exceptions import ReleaseFailed
from model_delivery.operators.record import RECORD_TASK, ReleaseOutcomeOperator, outcome_line


class FakeTI:
    """What the operator uses of a task instance: the record task's summary in XCom, and a push."""

    def __init__(self, summary: Any) -> None:
        self.summary = summary
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str) -> Any:
        assert task_ids == RECORD_TASK
        return self.summary

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def run(summary: Any) -> tuple[Any, FakeTI]:
    ti = FakeTI(summary)
    return ReleaseOutcomeOperator(task_id="outcome").execute({"ti": ti}), ti  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome", ["released", "no-change", "dry-run", "reverted"])
def test_a_release_that_did_what_was_asked_is_green(outcome: str) -> None:
    summary = {"outcome": outcome, "reasons": [], "report": "r.md"}
    result, ti = run(summary)
    assert result == summary and ti.pushed == {}


@pytest.mark.parametrize(("outcome", "reasons"), [
    ("rolled-back", ["smoke: smoke test of http://127.0.0.1:1/ failed: case 0 answered [1], expected [7]"]),
    ("rejected", ["gate: gate rejected version 3 of wine: accuracy 0.91 < min 0.93"]),
    ("failed", ["validate_data: 3 rows have nulls", "retire: port busy"]),
    ("refused", ["resolve: model 'wine' has no version '42'"]),
])
def test_a_release_that_did_not_go_out_fails_with_its_outcome_and_reasons(outcome: str, reasons: list[str]) -> None:
    summary = {"outcome": outcome, "reasons": reasons, "report": "r.md"}
    with pytest.raises(ReleaseFailed) as failed:
        run(summary)
    assert str(failed.value) == f"release {outcome}: " + "; ".join(reasons)
    assert failed.value.result == summary


def test_the_failure_is_pushed_with_its_error_before_the_task_fails() -> None:
    ti = FakeTI({"outcome": "rolled-back", "reasons": ["smoke: bad answer"], "report": "r.md"})
    with pytest.raises(ReleaseFailed, match=r"^release rolled-back: smoke: bad answer$"):
        ReleaseOutcomeOperator(task_id="outcome").execute({"ti": ti})  # type: ignore[arg-type]
    assert ti.pushed["return_value"]["error"] == "release rolled-back: smoke: bad answer"
    assert ti.pushed["return_value"]["outcome"] == "rolled-back"


@pytest.mark.parametrize("summary", [None, {}, {"outcome": None}])
def test_a_release_the_record_task_did_not_record_fails_saying_so(summary: Any) -> None:
    with pytest.raises(ReleaseFailed, match=r"^release unrecorded: the record task did not record this release"):
        run(summary)


def test_the_outcome_line() -> None:
    assert outcome_line({"outcome": "no-change", "reasons": []}) == "no-change"
    assert outcome_line({"outcome": "rejected", "reasons": ["a", "b"]}) == "rejected: a; b"


def test_a_release_failure_is_never_retried() -> None:
    """So the notifier, the outcome task's on_failure_callback, posts once per failed release."""
    from airflow.sdk.exceptions import AirflowFailException

    assert issubclass(ReleaseFailed, AirflowFailException)


def test_record_then_outcome_end_every_release_and_rollback(tmp_path: Any) -> None:
    from airflow.sdk import DAG

    from model_delivery.dag_factory import deploy_chain
    from model_delivery.notify import ReleaseNotifier
    from model_delivery.operators import RecordReleaseOperator

    with DAG("chain", schedule=None) as dag:
        deploy_chain("wine", {"version": "1", "digest": "sha256:x"})
    record, outcome = dag.get_task("record"), dag.get_task("outcome")
    assert isinstance(record, RecordReleaseOperator) and isinstance(outcome, ReleaseOutcomeOperator)
    assert record.trigger_rule == outcome.trigger_rule == "all_done"
    assert outcome.upstream_task_ids == {"record"} and outcome.downstream_task_ids == set()
    assert [type(cb) for cb in outcome.on_failure_callback or []] == [ReleaseNotifier]
    assert not record.on_failure_callback  # a failed release is outcome's to report, once
    assert [t.task_id for t in dag.tasks if not t.downstream_task_ids] == ["outcome"]
