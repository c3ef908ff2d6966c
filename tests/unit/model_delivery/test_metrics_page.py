"""The "Model releases" page's pieces without a server: plots, cells, rows, links, and a light plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from model_delivery.metrics import NO_DEPLOYMENT, NO_FAILURE, compute, figures
from model_delivery.page import page_url
from model_delivery.page.releases_app import figure_cells, fmt_count_rate, fmt_rate, fmt_when, metrics_view
from model_delivery.page.releases_data import (
    Links,
    release_row,
    shown_run,
    version_rows,
    version_trend,
    versus_champion,
)
from model_delivery.page.releases_svg import per_day, stacked_bars, trend
from model_delivery.records import ReleaseRecord
from model_delivery.store import ArtifactStore
from tests.conftest import PROJECT
from tests.unit.model_delivery.test_metrics import END, HISTORY


def test_trend_plots_one_point_per_evaluation_and_rings_production() -> None:
    points = [(datetime(2026, 3, d, tzinfo=UTC), v, str(n)) for n, (d, v) in enumerate([(1, 0.9), (2, 0.95), (3, 0.93)], 1)]
    svg = trend(points, title="accuracy of <m>", production="2")
    assert svg.startswith("<svg") and svg.count("<circle") == 3
    assert svg.count('class="production"') == 1 and "v2: 0.9500" in svg
    assert "<m>" not in svg and "accuracy of &lt;m&gt;" in svg
    assert "no evaluated version yet" in trend([], title="t")


def test_stacked_bars_count_each_day_by_series() -> None:
    counts = {date(2026, 3, 9): {"released": 2, "rejected": 1}, date(2026, 3, 1): {"failed": 1}}
    svg = stacked_bars(counts, end=date(2026, 3, 10), days=7, title="releases")
    assert svg.count('data-series="released"') == 1 and svg.count('data-series="rejected"') == 1
    assert 'data-series="failed"' not in svg  # before the window
    assert "2026-03-04" in svg and "2026-03-10" in svg
    assert "nothing in the last 7 days" in stacked_bars({}, end=date(2026, 3, 10), days=7, title="releases")


def test_per_day_groups_runs_by_finishing_day_and_skips_the_unnamed() -> None:
    runs = [{"finished_at": "2026-03-01T10:00:00+00:00", "outcome": "failed"},
            {"finished_at": "2026-03-01T23:00:00+00:00", "outcome": "released"},
            {"finished_at": None, "outcome": "failed"}]
    assert per_day(runs, lambda r: r["outcome"] if r["outcome"] != "released" else None) == {
        date(2026, 3, 1): {"failed": 1}}


@pytest.mark.parametrize(
    ("value", "text"),
    [pytest.param(None, "—", id="none"), pytest.param(0.2857, "0.286/day", id="small"),
     pytest.param(2.5, "2.5/day", id="units"), pytest.param(4511.4, "4,511/day", id="large")],
)
def test_rates_read_without_exponents(value, text: str) -> None:
    assert fmt_rate(value) == text


def test_figure_cells_say_why_a_figure_is_missing() -> None:
    cells = figure_cells(figures([], end=END, days=7), {"coverage": None, "note": "no tests"})
    assert cells["mttf"] == NO_FAILURE and cells["mttr"] == NO_FAILURE
    assert cells["change_failure_rate"] == NO_DEPLOYMENT and cells["coverage"] == "no tests"
    full = figure_cells(figures(HISTORY, end=END, days=30), {"coverage": 0.75})
    assert (full["coverage"], full["failures"], full["mttf"], full["mttr"]) == ("75.0%", "3", "3.3 d", "8.6 h")
    assert full["change_failure_rate"] == "66.7% (2/3)" and full["failure_rate"] == "0.3/day"


def test_metrics_view_lists_overall_then_the_visible_models() -> None:
    document = compute(HISTORY, end=END, models=["a", "b"], windows=(7,))
    view = metrics_view(document, 7, ["a"])
    assert [row["scope"] for row in view["rows"]] == ["all models", "a"]
    assert metrics_view(document, 30, ["a"]) is None and metrics_view(None, 7, ["a"]) is None


def test_a_release_row_links_its_report_and_airflow_run() -> None:
    record = {
        "model": "m", "run_id": "manual__2026-03-01T00:00:00+00:00", "dag_id": "release__m", "outcome": "rolled-back",
        "finished_at": "2026-03-01T00:10:00+00:00", "artifact": {"version": "3", "digest": "sha256:" + "a" * 64},
        "gate": {"verdict": "blessed"}, "reasons": ["smoke: no"],
        "stages": {"deploy_staging": {"status": "success", "started_at": "2026-03-01T00:05:00+00:00", "seconds": 2,
                                      "result": {"target": "local", "url": "http://127.0.0.1:1"}},
                   "rollback": {"status": "success", "started_at": "2026-03-01T00:08:00+00:00", "seconds": 1,
                                "result": {"action": "stopped-candidate"}}},
    }
    row = release_row(record, Links(prefix="/base/model-releases", airflow="/base"))
    assert row["anchor"] == "run-manual__2026-03-01T00_00_00_00_00"
    assert row["report_url"] == "/base/model-releases/models/m/releases/manual__2026-03-01T00_00_00_00_00/report"
    assert row["airflow_url"] == "/base/dags/release__m/runs/manual__2026-03-01T00%3A00%3A00%2B00%3A00"
    assert row["deployments"] == [{"stage": "deploy_staging", "target": "local", "url": "http://127.0.0.1:1",
                                   "at": "2026-03-01T00:05:02+00:00"}]
    assert row["rolled_back_at"] == "2026-03-01T00:08:01+00:00" and row["promoted_at"] is None


def test_metrics_against_the_champion_are_deltas() -> None:
    record = {"stages": {"evaluate": {"result": {"metrics": {"accuracy": 0.95, "f1": 0.9},
                                                 "champion": {"version": "1", "metrics": {"accuracy": 0.97}}}}}}
    result = versus_champion(record)
    assert result["champion_version"] == "1"
    assert result["metrics"][0] == {"name": "accuracy", "value": 0.95, "champion": 0.97, "delta": pytest.approx(-0.02)}
    assert result["metrics"][1]["champion"] is None and result["metrics"][1]["delta"] is None


def test_times_show_in_utc() -> None:
    assert fmt_when("2026-03-01T01:00:00+01:00") == "2026-03-01 00:00:00 UTC"
    assert fmt_when(None) == "—"


def test_every_record_links_to_its_row_on_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DELIVERY_UI_URL", "https://airflow.example.com/")
    record = ReleaseRecord(ArtifactStore(f"file://{tmp_path}/store"), "demo", "manual__2026-01-01T00:00:00+00:00")
    record.add_stage("build", {"status": "failed", "started_at": "2026-01-01T00:00:00+00:00", "seconds": 1,
                               "error": "boom"})
    final = record.finalize(dag_id="release__demo", conf={})
    url = "https://airflow.example.com/model-releases/models/demo#run-manual__2026-01-01T00_00_00_00_00"
    assert final["page_url"] == url == page_url("demo", "manual__2026-01-01T00:00:00+00:00")
    assert url in (tmp_path / "store" / "demo" / "releases" / "manual__2026-01-01T00_00_00_00_00" / "report.md").read_text()
    assert page_url() == "https://airflow.example.com/model-releases/"


def test_the_plugin_registers_the_page_and_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from airflow import plugins_manager\n"
        "apps, _ = plugins_manager.get_fastapi_plugins()\n"
        "views, _ = plugins_manager._get_ui_plugins()\n"
        "heavy = [m for m in ('fastapi', 'mlflow', 'model_delivery.page.releases_app') if m in sys.modules]\n"
        "print(json.dumps({'apps': [[a['url_prefix'], a['name']] for a in apps], 'views': views, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["apps"] == [["/model-releases", "Model releases"]]
    assert result["views"] == [{"name": "Model releases", "href": "/model-releases/", "destination": "nav",
                                "url_route": "model-releases", "nav_top_level": True}]
    assert result["heavy"] == []


def _version(n: int, value: float | None, aliases: tuple[str, ...] = (), run_id: str | None = None) -> Any:
    from model_delivery.registry import ModelVersion

    tags = {"run_id": run_id or f"run-{n}"} | ({"metric.accuracy": str(value)} if value is not None else {})
    return ModelVersion(name="m", version=str(n), source="", run_id=None, tags=tags, aliases=list(aliases))


def test_the_trend_has_one_point_per_version_and_marks_production_by_its_alias() -> None:
    """v2 was built by a run that rolled back, then released by a later run: still one point; the rolled-back run
    of v3 does not make v3 production."""
    versions = [_version(1, 0.9), _version(2, 0.95, ("production",)), _version(3, 0.5), _version(4, None)]
    records = [{"run_id": "run-2", "finished_at": "2026-03-02T10:00:00+00:00"},
               {"run_id": "again-2", "finished_at": "2026-03-03T10:00:00+00:00", "artifact": {"version": "2"}}]
    points = version_trend(versions, "accuracy", records)
    assert [(p["version"], p["value"], p["production"]) for p in points] == [
        ("1", 0.9, False), ("2", 0.95, True), ("3", 0.5, False)]
    assert points[1]["at"] == "2026-03-02T10:00:00+00:00" and points[0]["at"] is None
    assert version_trend(versions, None, records) == []
    svg = trend([(None, p["value"], p["version"]) for p in points], title="t", production="2")
    assert svg.count("<circle") == 3 and svg.count('class="production"') == 1


def test_one_value_is_labelled_once_on_the_y_axis() -> None:
    svg = trend([(None, 0.9, "1"), (None, 0.9, "2")], title="t")
    assert svg.count(">0.9</text>") == 1


@pytest.mark.parametrize(("count", "per_day", "seconds", "text"), [
    pytest.param(3, 160.0, 27 * 60, "3 releases in 27.0 min", id="27 minutes: counted, not 160/day"),
    pytest.param(1, 2.0, 12 * 3600, "1 release in 12.0 h", id="half a day"),
    pytest.param(0, 0.0, 600, "0 releases in 10.0 min", id="none yet"),
    pytest.param(14, 2.0, 7 * 86400, "2.0/day", id="a week: a rate"),
    pytest.param(None, None, None, "—", id="nothing observed"),
])
def test_rates_are_never_extrapolated_beyond_the_observed_span(count: int | None, per_day: float | None,
                                                               seconds: float | None, text: str) -> None:
    assert fmt_count_rate(count, per_day, seconds, "release") == text


def test_a_version_links_the_run_that_released_it_and_lists_only_what_stands() -> None:
    """A version first built by a run that rolled it back, then released by another: the release's report, and only
    the production deployment of the release (the rolled-back run's staging server is gone)."""
    def record(run_id: str, outcome: str, promoted: bool, finished: str) -> dict[str, Any]:
        stages = {"deploy_staging": {"status": "success", "result": {"target": "local", "url": f"http://s/{run_id}"}},
                  "deploy_production": {"status": "success", "result": {"target": "local", "url": "http://front"}}}
        if promoted:
            stages["promote"] = {"status": "success"}
        return {"model": "m", "run_id": run_id, "dag_id": "release__m", "outcome": outcome, "stages": stages,
                "artifact": {"version": "2"}, "created_at": finished, "finished_at": finished}

    records = [record("released-2", "released", True, "2026-03-03T00:00:00+00:00"),
               record("rolled-2", "rolled-back", False, "2026-03-02T00:00:00+00:00")]
    serving = {"slots": {"active": {"version": "2"}}}
    [row] = version_rows([_version(2, 0.9, ("production",), run_id="rolled-2")], records, serving, Links())
    assert row["report_url"] == "/model-releases/models/m/releases/released-2/report"
    assert [(d["run_id"], d["stage"], d["live"]) for d in row["deployments"]] == [
        ("released-2", "deploy_production", True)]
    assert shown_run(records[1:], "rolled-2")["run_id"] == "rolled-2"  # never released: the run that built it
