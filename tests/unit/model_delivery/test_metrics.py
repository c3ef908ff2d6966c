"""The delivery-metric formulas on synthetic histories with known answers (docs/metrics.md)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model_delivery.metrics import (
    DAY,
    NO_DEPLOYMENT,
    NO_FAILURE,
    NO_RELEASE,
    NO_RESTORED,
    NO_RUNS,
    Run,
    airflow_figures,
    change_failure_rate,
    compute,
    failure_rate,
    figures,
    history_rows,
    line_coverage,
    model_coverage,
    mttf,
    observed_seconds,
    project_coverage,
    read_latest,
    run_from_record,
    runs_without_record,
    write_outputs,
)
from model_delivery.store import ArtifactStore

BASE = datetime(2026, 3, 1, tzinfo=UTC)
END = BASE + timedelta(days=10)
HOUR = 3600.0


def t(hours: float) -> datetime:
    return BASE + timedelta(hours=hours)


def release(model: str, start: float, end: float, outcome: str, **fields) -> Run:
    return Run(model=model, run_id=f"{model}-{start}", outcome=outcome, started_at=t(start), finished_at=t(end), **fields)


# Model "a": the known history of docs/metrics.md's worked example.
HISTORY = [
    release("a", 0, 1, "released", deployed=True, deployed_at=t(1), change_at=t(0), version="1"),
    release("a", 24, 24.5, "rejected", version="2"),
    release("a", 48, 49, "rolled-back", deployed=True, failed_at=t(48.5), restored_at=t(48.75), version="3"),
    release("a", 72, 72.2, "failed", failed_at=t(72.1)),  # build failed: nothing deployed
    release("a", 96, 97, "released", deployed=True, deployed_at=t(97), change_at=t(96), version="4"),
    Run(model="a", run_id="rb", outcome="reverted", started_at=t(120), finished_at=t(120.5), kind="rollback",
        failed_at=t(120), restored_at=t(120.5), version="1", reverted_version="4"),
]


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        pytest.param(30, {
            "runs": 6, "failures": 3, "observed_seconds": 10 * DAY, "failure_rate_per_day": 0.3,
            "mttf_seconds": 80 * HOUR, "mttr_seconds": (0.25 + 24.9 + 0.5) / 3 * HOUR, "open_failures": 0,
            "deployments": 2, "deployment_frequency_per_day": 0.2, "change_failure_rate": 2 / 3,
            "changes_needing_rollback": 2, "changes_deployed": 3, "rejections": 1,
        }, id="30 days: the whole history"),
        pytest.param(7, {
            "runs": 3, "failures": 2, "observed_seconds": 7 * DAY, "failure_rate_per_day": 2 / 7,
            "mttf_seconds": 3.5 * DAY, "mttr_seconds": (24.9 + 0.5) / 2 * HOUR, "open_failures": 0,
            "deployments": 1, "deployment_frequency_per_day": 1 / 7, "change_failure_rate": 1.0,
            "changes_needing_rollback": 1, "changes_deployed": 1, "rejections": 0,
        }, id="7 days: from hour 72 on"),
    ],
)
def test_figures_of_a_known_history(days: int, expected: dict) -> None:
    result = figures(HISTORY, end=END, days=days, model="a")
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
    assert result["lead_time_seconds"]["median"] == pytest.approx(HOUR)
    assert result["notes"] == {}


def test_outcomes_are_counted_by_kind() -> None:
    assert figures(HISTORY, end=END, days=30)["outcomes"] == {
        "release:failed": 1, "release:rejected": 1, "release:released": 2, "release:rolled-back": 1,
        "rollback:reverted": 1,
    }


def test_a_gate_rejection_is_not_a_failure() -> None:
    runs = [release("a", 0, 1, "rejected"), release("a", 2, 3, "rejected")]
    result = figures(runs, end=t(10), days=7)
    assert result["failures"] == 0 and result["rejections"] == 2
    assert result["failure_rate_per_day"] == 0.0
    assert result["mttf_seconds"] is None
    assert result["notes"]["mttf"] == NO_FAILURE


def test_an_empty_window_reports_why_instead_of_dividing_by_zero() -> None:
    result = figures([], end=END, days=7)
    assert result["runs"] == 0 and result["observed_seconds"] == 0
    for key in ("failure_rate_per_day", "mttf_seconds", "mttr_seconds", "deployment_frequency_per_day",
                "change_failure_rate"):
        assert result[key] is None, key
    assert result["notes"] == {"failure_rate": NO_RUNS, "deployment_frequency": NO_RUNS, "mttf": NO_FAILURE,
                               "mttr": NO_FAILURE, "change_failure_rate": NO_DEPLOYMENT, "lead_time": NO_RELEASE}


def test_a_quiet_window_after_history_has_zero_failures_over_the_whole_window() -> None:
    end = END + timedelta(days=60)
    result = figures(HISTORY, end=end, days=7)
    assert result["runs"] == 0
    assert result["observed_seconds"] == 7 * DAY
    assert result["failure_rate_per_day"] == 0.0
    assert result["deployment_frequency_per_day"] == 0.0
    assert result["mttf_seconds"] is None and result["notes"]["mttf"] == NO_FAILURE


def test_all_failures_none_restored() -> None:
    runs = [release("a", h, h + 1, "failed", failed_at=t(h + 0.5)) for h in (0, 24, 48)]
    result = figures(runs, end=t(72), days=7)
    assert result["failures"] == 3
    assert result["observed_seconds"] == 72 * HOUR
    assert result["failure_rate_per_day"] == pytest.approx(1.0)
    assert result["mttf_seconds"] == pytest.approx(24 * HOUR)
    assert result["mttr_seconds"] is None and result["open_failures"] == 3
    assert result["notes"]["mttr"] == NO_RESTORED
    assert result["deployments"] == 0 and result["deployment_frequency_per_day"] == 0.0
    assert result["change_failure_rate"] is None and result["notes"]["change_failure_rate"] == NO_DEPLOYMENT
    assert result["notes"]["lead_time"] == NO_RELEASE


def test_all_deployed_changes_rolled_back() -> None:
    runs = [release("a", h, h + 1, "rolled-back", deployed=True, failed_at=t(h + 0.5), restored_at=t(h + 0.6))
            for h in (0, 10)]
    result = figures(runs, end=t(24), days=7)
    assert result["change_failure_rate"] == 1.0
    assert result["mttr_seconds"] == pytest.approx(0.1 * HOUR)


def test_restoration_is_per_model_and_not_after_the_window_end() -> None:
    runs = [
        release("a", 0, 1, "failed", failed_at=t(0.5)),
        release("b", 2, 3, "released", deployed=True, deployed_at=t(3), change_at=t(2)),  # another model
        release("a", 30, 31, "released", deployed=True, deployed_at=t(31), change_at=t(30)),  # after the end
    ]
    result = figures(runs, end=t(24), days=7, model="a")
    assert result["open_failures"] == 1 and result["mttr_seconds"] is None
    later = figures(runs, end=t(48), days=7, model="a")
    assert later["mttr_seconds"] == pytest.approx(30.5 * HOUR) and later["open_failures"] == 0


def test_overall_combines_models_and_observes_from_the_first_run_of_any() -> None:
    runs = [release("a", 0, 1, "failed", failed_at=t(1)), release("b", 12, 13, "failed", failed_at=t(13))]
    overall = figures(runs, end=t(24), days=7)
    assert overall["failures"] == 2 and overall["observed_seconds"] == 24 * HOUR
    only_b = figures(runs, end=t(24), days=7, model="b")
    assert only_b["failures"] == 1 and only_b["observed_seconds"] == 12 * HOUR


def test_a_manual_rollback_marks_only_the_release_it_reverted() -> None:
    runs = [
        release("a", 0, 1, "released", deployed=True, deployed_at=t(1), change_at=t(0), version="1"),
        release("a", 2, 3, "released", deployed=True, deployed_at=t(3), change_at=t(2), version="2"),
        Run(model="a", run_id="rb", outcome="reverted", started_at=t(4), finished_at=t(5), kind="rollback",
            failed_at=t(4), restored_at=t(5), version="1", reverted_version="2"),
    ]
    rate, needing, deployed = change_failure_rate(runs, runs, end=t(24))
    assert (rate, needing, deployed) == (0.5, 1, 2)
    # a later release of the same version is a new change: an older revert does not mark it
    runs.append(release("a", 6, 7, "released", deployed=True, deployed_at=t(7), change_at=t(6), version="2"))
    assert change_failure_rate(runs[3:], runs, end=t(24))[:2] == (0.0, 0)


@pytest.mark.parametrize(
    ("failures", "seconds", "rate", "mean"),
    [
        pytest.param(0, 7 * DAY, 0.0, None, id="no failure"),
        pytest.param(1, 7 * DAY, 1 / 7, 7 * DAY, id="one"),
        pytest.param(4, 2 * DAY, 2.0, DAY / 2, id="four in two days"),
        pytest.param(3, 0.0, None, None, id="no time observed"),
    ],
)
def test_failure_rate_and_mttf_are_inverse(failures: int, seconds: float, rate, mean) -> None:
    assert failure_rate(failures, seconds) == (pytest.approx(rate) if rate is not None else None)
    assert mttf(failures, seconds) == (pytest.approx(mean) if mean is not None else None)


def test_observed_time_starts_at_the_first_run_ever() -> None:
    assert observed_seconds(HISTORY, end=END, days=90) == pytest.approx(10 * DAY)
    assert observed_seconds(HISTORY, end=END, days=1) == pytest.approx(DAY)
    assert observed_seconds(HISTORY, end=t(-1), days=7) == 0.0


# -- records and Airflow metadata ----------------------------------------------------------------------


def stage(start: str, seconds: float, status: str = "success", **extra) -> dict:
    return {"status": status, "started_at": start, "seconds": seconds, **extra}


RELEASED = {
    "model": "m", "run_id": "r1", "dag_id": "release__m", "outcome": "released",
    "created_at": "2026-03-01T00:00:00.000+00:00", "finished_at": "2026-03-01T00:10:00.000+00:00",
    "artifact": {"version": "1", "git_sha": "abc-dirty"},
    "stages": {"build": stage("2026-03-01T00:00:01+00:00", 60),
               "deploy_staging": stage("2026-03-01T00:05:00+00:00", 5),
               "promote": stage("2026-03-01T00:09:00+00:00", 30)},
}
ROLLED_BACK = {
    "model": "m", "run_id": "r2", "dag_id": "release__m", "outcome": "rolled-back",
    "created_at": "2026-03-02T00:00:00+00:00", "finished_at": "2026-03-02T00:10:00+00:00",
    "stages": {"deploy_staging": stage("2026-03-02T00:05:00+00:00", 5),
               "smoke": stage("2026-03-02T00:06:00+00:00", 20, "failed"),
               "verify": stage("2026-03-02T00:07:00+00:00", 20, "failed"),
               "rollback": stage("2026-03-02T00:08:00+00:00", 10, result={"action": "stopped-candidate"})},
}
REVERTED = {
    "model": "m", "run_id": "r3", "dag_id": "model_rollback", "outcome": "reverted",
    "created_at": "2026-03-03T00:00:00+00:00", "finished_at": "2026-03-03T00:03:00+00:00",
    "stages": {"resolve": stage("2026-03-03T00:00:01+00:00", 1, result={"version": "1", "from_version": "2"}),
               "promote": stage("2026-03-03T00:02:00+00:00", 30)},
}


def test_a_released_record_becomes_a_deployed_run_with_its_lead_time() -> None:
    run = run_from_record(RELEASED, commit_time=lambda sha: pytest.fail("a dirty sha has no commit time"))
    assert run is not None
    assert (run.kind, run.outcome, run.version, run.deployed) == ("release", "released", "1", True)
    assert run.deployed_at == datetime(2026, 3, 1, 0, 9, 30, tzinfo=UTC)
    assert run.change_at == datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC) and run.change_source == "build"
    assert not run.is_failure and run.failed_at is None


def test_a_release_that_changed_nothing_in_production_is_not_a_deployment() -> None:
    same = {**RELEASED, "run_id": "r1b", "gate": {"verdict": "no-change"}}  # production served this artifact already
    new = {**RELEASED, "gate": {"verdict": "passed"}}
    runs = [run_from_record(same), run_from_record(new)]
    assert [(r.outcome, r.deployed) for r in runs] == [("released", False), ("released", True)]
    result = figures(runs, end=datetime(2026, 3, 2, tzinfo=UTC), days=7)
    assert result["outcomes"] == {"release:released": 2}
    assert result["deployments"] == 1 and result["changes_deployed"] == 1 and result["lead_time_seconds"]["count"] == 1


def test_a_clean_commit_starts_the_lead_time() -> None:
    record = {**RELEASED, "artifact": {"version": "1", "git_sha": "abc"}}
    committed = datetime(2026, 2, 28, tzinfo=UTC)
    run = run_from_record(record, commit_time=lambda sha: committed if sha == "abc" else None)
    assert run is not None and run.change_at == committed and run.change_source == "commit"


def test_a_rolled_back_record_fails_at_its_first_failed_stage_and_restores_at_its_rollback() -> None:
    run = run_from_record(ROLLED_BACK)
    assert run is not None and run.is_failure and run.deployed
    assert run.failed_at == datetime(2026, 3, 2, 0, 6, 20, tzinfo=UTC)
    assert run.restored_at == datetime(2026, 3, 2, 0, 8, 10, tzinfo=UTC)


def test_a_reverted_rollback_record_names_the_version_it_took_out() -> None:
    run = run_from_record(REVERTED)
    assert run is not None
    assert (run.kind, run.version, run.reverted_version) == ("rollback", "1", "2")
    assert run.failed_at == datetime(2026, 3, 3, tzinfo=UTC)
    assert run.restored_at == datetime(2026, 3, 3, 0, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"model": "m", "run_id": "x", "stages": {}}, id="in progress"),
        pytest.param({"model": "m", "run_id": "x", "outcome": "failed", "finished_at": "t9"}, id="bad time"),
    ],
)
def test_unfinished_or_unreadable_records_are_not_runs(record: dict) -> None:
    assert run_from_record(record) is None


def test_unparseable_stage_times_fall_back_to_the_record_times() -> None:
    record = {"model": "m", "run_id": "x", "outcome": "failed", "created_at": "t0",
              "finished_at": "2026-03-01T01:00:00+00:00", "stages": {"build": {"status": "failed", "started_at": "t0"}}}
    run = run_from_record(record)
    assert run is not None and run.started_at == run.finished_at == run.failed_at


def test_failed_dag_runs_without_a_record_are_failures() -> None:
    dag_runs = [
        {"dag_id": "release__m", "run_id": "gone", "state": "failed", "start_date": "2026-03-01T00:00:00Z",
         "end_date": "2026-03-01T00:01:00Z"},
        {"dag_id": "release__m", "run_id": "r1", "state": "failed", "end_date": "2026-03-01T00:01:00Z"},
        {"dag_id": "release__m", "run_id": "ok", "state": "success", "end_date": "2026-03-01T00:01:00Z"},
        {"dag_id": "model_rollback", "run_id": "rb", "state": "failed", "conf": {"model": "m"},
         "end_date": "2026-03-01T00:02:00Z"},
        {"dag_id": "something_else", "run_id": "z", "state": "failed", "end_date": "2026-03-01T00:02:00Z"},
    ]
    found = runs_without_record(dag_runs, {("m", "r1")})
    assert [(r.run_id, r.kind, r.source, r.is_failure) for r in found] == [
        ("gone", "release", "airflow", True), ("rb", "rollback", "airflow", True)]


def test_airflow_figures_count_runs_tasks_and_retries_in_the_window() -> None:
    history = {
        "dag_runs": [
            {"model": "m", "dag_id": "release__m", "run_id": "a", "state": "success",
             "start_date": "2026-03-09T00:00:00Z", "end_date": "2026-03-09T00:10:00Z"},
            {"model": "m", "dag_id": "release__m", "run_id": "b", "state": "failed",
             "start_date": "2026-03-09T01:00:00Z", "end_date": "2026-03-09T01:20:00Z"},
            {"model": "m", "dag_id": "release__m", "run_id": "old", "state": "failed",
             "start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-01T00:10:00Z"},
        ],
        "task_instances": [
            {"dag_id": "release__m", "run_id": "a", "state": "success", "try_number": 2},
            {"dag_id": "release__m", "run_id": "b", "state": "failed", "try_number": 3},
            {"dag_id": "release__m", "run_id": "old", "state": "failed", "try_number": 1},
        ],
    }
    result = airflow_figures(history, end=END, days=7, model="m")
    assert result == {"dag_runs": 2, "dag_run_states": {"failed": 1, "success": 1}, "mean_run_seconds": 900.0,
                      "task_instances": 2, "task_failures": 1, "task_retries": 3}


# -- coverage ----------------------------------------------------------------------------------------------


def test_line_coverage_is_covered_lines_over_statements() -> None:
    report = {"meta": {"timestamp": "2026-03-01T00:00:00"},
              "totals": {"covered_lines": 750, "num_statements": 1000, "percent_covered": 71.2}}
    assert line_coverage(report) == {"covered_lines": 750, "num_statements": 1000, "coverage": 0.75,
                                     "measured_at": "2026-03-01T00:00:00"}
    empty = line_coverage({"totals": {"covered_lines": 0, "num_statements": 0}})
    assert empty["coverage"] is None and empty["note"] == "no statements measured"


def test_missing_project_coverage_says_how_to_get_it(tmp_path: Path) -> None:
    result = project_coverage(tmp_path / "coverage.json")
    assert result["coverage"] is None and "make test" in result["note"]


def test_a_model_with_tests_has_its_build_code_measured(tmp_path: Path) -> None:
    model = tmp_path / "toy"
    (model / "tests").mkdir(parents=True)
    (model / "build_lib.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    (model / "tests" / "test_build_lib.py").write_text(
        "import build_lib\n\n\ndef test_f():\n    assert build_lib.f(True) == 1\n")
    result = model_coverage(model)
    assert result["tests_passed"] is True, result
    assert (result["covered_lines"], result["num_statements"], result["coverage"]) == (3, 4, 0.75)


def test_a_model_without_tests_is_not_measured(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    assert model_coverage(tmp_path / "toy") == {"coverage": None, "note": "no tests (add <model>/tests/test_*.py)"}


# -- outputs -----------------------------------------------------------------------------------------------


def test_json_and_csv_history_are_written_and_appended(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}/store")
    coverage = {"project": {"coverage": 0.8}, "models": {"a": {"coverage": None, "note": "no tests"}}}
    document = compute(HISTORY, end=END, models=["a"], coverage=coverage, windows=(7, 30))
    paths = write_outputs(store, document)
    write_outputs(store, compute(HISTORY, end=END + timedelta(days=1), models=["a"], coverage=coverage, windows=(7, 30)))

    assert read_latest(store)["generated_at"] == (END + timedelta(days=1)).isoformat()
    assert json.loads(Path(paths["latest"].removeprefix("file://")).read_text())["models"] == ["a"]
    rows = list(csv.DictReader(io.StringIO(Path(paths["history"].removeprefix("file://")).read_text())))
    assert len(rows) == 2 * 2 * 2  # two computations x two windows x (all, a)
    first = rows[0]
    assert (first["window_days"], first["scope"], first["coverage"], first["failures"]) == ("7", "all", "0.8", "2")
    assert rows[1]["scope"] == "a" and rows[1]["coverage"] == ""  # None is an empty cell
    assert float(rows[2]["change_failure_rate"]) == pytest.approx(2 / 3)


def test_history_rows_leave_unknown_figures_empty() -> None:
    rows = history_rows(compute([], end=END, models=["a"], windows=(7,)))
    assert [r["scope"] for r in rows] == ["all", "a"]
    assert rows[0]["mttf_seconds"] == "" and rows[0]["change_failure_rate"] == "" and rows[0]["runs"] == 0
