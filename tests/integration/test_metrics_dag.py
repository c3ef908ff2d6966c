"""The delivery_metrics DAG on a real history: every figure against answers computed from the records.

The history (five real releases and rollbacks, then the DAG reading Airflow's metadata through
a running api-server) is built once per session by ``tests.helpers.delivery_history``.
"""

from __future__ import annotations

import csv
import io
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from model_delivery.metrics import ASSET_URI, DAY, stage_end
from model_delivery.store import safe_segment
from tests.helpers.delivery_history import MODEL, STEPS, History, at

pytestmark = pytest.mark.integration
pytest_plugins = ("tests.helpers.delivery_history",)


@pytest.fixture
def history(delivery_history: History) -> History:
    return delivery_history


# -- the history and its records -----------------------------------------------------------------------


def test_the_history_ended_as_planned(history: History) -> None:
    outcomes = {step: history.records[step]["outcome"] for step in STEPS}
    assert outcomes == {"champion": "released", "worse": "rejected", "smoke_fails": "rolled-back",
                        "fixed": "released", "revert": "reverted"}


def test_every_record_links_to_its_row_on_the_page(history: History) -> None:
    for record in history.records.values():
        anchor = f"/model-releases/models/{MODEL}#run-{safe_segment(record['run_id'])}"
        assert record["page_url"].startswith("http") and record["page_url"].endswith(anchor), record["page_url"]
        if record.get("report"):
            assert record["page_url"] in Path(record["report"].removeprefix("file://")).read_text()


# -- the metrics DAG -----------------------------------------------------------------------------------


def expected_figures(records: dict[str, dict[str, Any]], generated_at: datetime) -> dict[str, Any]:
    """The figures, from the records, by the definitions in docs/metrics.md."""
    observed = (generated_at - min(at(r["created_at"]) for r in records.values())).total_seconds()
    smoke = records["smoke_fails"]["stages"]
    revert = records["revert"]
    restore_times = [
        (stage_end(smoke["rollback"]) - stage_end(smoke["smoke"])).total_seconds(),  # its own rollback
        (stage_end(revert["stages"]["promote"]) - at(revert["created_at"])).total_seconds(),  # the manual rollback
    ]
    return {
        "runs": 5, "failures": 2, "rejections": 1, "open_failures": 0, "observed_seconds": observed,
        "failure_rate_per_day": 2 / (observed / DAY), "mttf_seconds": observed / 2,
        "mttr_seconds": statistics.fmean(restore_times), "deployments": 2,
        "deployment_frequency_per_day": 2 / (observed / DAY),
        "change_failure_rate": 2 / 3, "changes_needing_rollback": 2, "changes_deployed": 3,
        "outcomes": {"release:rejected": 1, "release:released": 2, "release:rolled-back": 1, "rollback:reverted": 1},
    }


@pytest.mark.parametrize("days", ["7", "30", "90"])
def test_the_metrics_dag_computes_every_figure_from_the_history(history: History, days: str) -> None:
    assert history.metrics_run.state == "success"
    document = history.document
    assert document["models"] == [MODEL]
    assert history.records["fixed"]["artifact"]["version"] == history.records["revert"]["stages"]["resolve"][
        "result"]["from_version"]
    expected = expected_figures(history.records, at(document["generated_at"]))
    window = document["windows"][days]
    for scope in (window["overall"], window["models"][MODEL]):
        for key, value in expected.items():
            assert scope[key] == pytest.approx(value), (days, key)
        assert scope["notes"] == {}


def test_lead_time_runs_from_the_change_to_production(history: History) -> None:
    runs = {r["run_id"]: r for r in history.document["runs"]}
    leads = []
    for step in ("champion", "fixed"):
        record = history.records[step]
        run = runs[record["run_id"]]
        build_start = at(record["stages"]["build"]["started_at"])
        assert at(run["deployed_at"]) == stage_end(record["stages"]["promote"])
        if run["change_source"] == "build":  # a dirty checkout: no commit time to start from
            assert at(run["change_at"]) == build_start
        else:
            assert run["change_source"] == "commit" and at(run["change_at"]) <= build_start
        leads.append((at(run["deployed_at"]) - at(run["change_at"])).total_seconds())
    lead = history.document["windows"]["30"]["models"][MODEL]["lead_time_seconds"]
    assert lead["count"] == 2
    assert lead["median"] == pytest.approx(statistics.median(leads))


def test_coverage_of_the_project_and_of_the_model_build_code(history: History) -> None:
    coverage = history.document["coverage"]
    assert coverage["project"]["coverage"] == 0.75
    model = coverage["models"][MODEL]
    assert model["tests_passed"] is True, model
    assert 0 < model["covered_lines"] < model["num_statements"]
    assert model["coverage"] == model["covered_lines"] / model["num_statements"]


def test_airflow_metadata_was_read_through_the_rest_api(history: History) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    assert history.document["airflow"]["available"] is True, history.document["airflow"]
    run_ids = {r["run_id"] for r in history.records.values()}
    with create_session() as session:
        dag_runs = session.query(DagRun).filter(DagRun.run_id.in_(run_ids),
                                                DagRun.dag_id.in_([f"release__{MODEL}", "model_rollback"])).all()
        tis = session.query(TaskInstance).filter(TaskInstance.run_id.in_(run_ids),
                                                 TaskInstance.dag_id.in_([f"release__{MODEL}", "model_rollback"])).all()
        states = [str(r.state) for r in dag_runs]
        expected = {
            "dag_runs": 5,
            "dag_run_states": {"failed": 2, "success": 3},
            "task_instances": len(tis),
            "task_failures": sum(1 for ti in tis if ti.state == "failed"),
            "task_retries": sum(max(0, ti.try_number - 1) for ti in tis),
        }
    assert sorted(states) == ["failed", "failed", "success", "success", "success"]
    figures = history.document["windows"]["7"]["models"][MODEL]["airflow"]
    assert {k: figures[k] for k in expected} == expected
    assert figures["task_failures"] >= 4  # gate and record of the rejection, smoke and record of the rollback
    assert history.document["windows"]["7"]["overall"]["airflow"]["dag_runs"] == 5  # other tests' models left out


def test_results_are_json_csv_and_an_asset_event(history: History) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from model_delivery.metrics import HISTORY, metrics_dir

    rows = list(csv.DictReader(io.StringIO((metrics_dir(history.store) / HISTORY).read_text())))
    assert [(r["window_days"], r["scope"]) for r in rows] == [
        (d, s) for d in ("7", "30", "90") for s in ("all", MODEL)]
    assert all(r["failures"] == "2" and float(r["change_failure_rate"]) == pytest.approx(2 / 3) for r in rows)
    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.uri == ASSET_URI, AssetEvent.source_run_id == history.metrics_run.run_id).all())
        assert len(events) == 1
        assert events[0].extra["latest"].endswith("_delivery_metrics/latest.json")


