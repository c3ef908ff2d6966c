"""The "Model releases" page's pieces without a server: cells, rows, links, and a light plugin (the charts:
test_releases_charts.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from model_delivery.records import ReleaseRecord
from model_delivery.store import ArtifactStore
from tests.conftest import PROJECT
from tests.unit.model_delivery.test_metrics import END, HISTORY


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
    folder = tmp_path / "store" / "demo" / "releases" / "manual__2026-01-01T00_00_00_00_00"
    assert url in (folder / "report.md").read_text()
    assert f'<a href="{url}">Model releases page</a>' in (folder / "report.html").read_text()  # clickable
    assert page_url() == "https://airflow.example.com/model-releases/"


def test_urls_in_the_report_are_links() -> None:
    from model_delivery.report import render_html

    page = render_html("- deploy_production: http://127.0.0.1:8600 (version 3)\n- a [page](/model-releases/)\n", "t")
    assert '<a href="http://127.0.0.1:8600">http://127.0.0.1:8600</a>' in page
    assert '<a href="/model-releases/">page</a>' in page
    assert "<script>" not in render_html("<script>alert(1)</script>\n", "t")  # raw HTML stays text


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


def test_two_versions_side_by_side_name_what_differs() -> None:
    from model_delivery.page.version_detail import files_changed, side_by_side

    def detail(version: str, c: str, train: str, files: dict[str, str]) -> dict[str, Any]:
        return {"version": version, "metrics": {"accuracy": 0.9 if version == "1" else 0.95}, "params": {"C": c},
                "lineage": {"git_sha": "abc", "spec_digest": f"sha256:{version}", "data": {"train": {"sha256": train}}},
                "files_by_path": {p: {"sha256": h, "size": 1} for p, h in files.items()}}

    a = detail("1", "1.0", "t1", {"model.joblib": "m1", "serving.json": "s", "old.txt": "o"})
    b = detail("2", "0.5", "t1", {"model.joblib": "m2", "serving.json": "s", "new.txt": "n"})
    both = side_by_side(a, b)
    assert [(r["name"], r["a"], r["b"], r["same"]) for r in both["params"]] == [("C", "1.0", "0.5", False)]
    assert [(r["name"], r["same"]) for r in both["data"]] == [("train", True)]
    assert {r["name"]: r["same"] for r in both["lineage"]} == {"git_sha": True, "spec_digest": False}
    assert both["files"] == {"added": ["new.txt"], "removed": ["old.txt"], "changed": ["model.joblib"],
                             "same": ["serving.json"]}
    assert files_changed({}, {}) == {"added": [], "removed": [], "changed": [], "same": []}


@pytest.mark.parametrize(("size", "text"), [(None, "—"), (512, "512 B"), (3648, "3.6 KiB"), (5 * 2**30, "5.0 GiB"),
                                             (3 * 2**40, "3072.0 GiB")])
def test_sizes_read_in_binary_units(size: int | None, text: str) -> None:
    from model_delivery.page.releases_app import fmt_bytes

    assert fmt_bytes(size) == text
