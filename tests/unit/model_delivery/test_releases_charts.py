"""The "Model releases" page's charts without a browser: their data (releases_charts), the page that embeds it,
and the static route that serves the vendored ECharts."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from model_delivery.page import releases_app
from model_delivery.page.releases_app import STATIC, render_page, static_file
from model_delivery.page.releases_charts import (
    ECHARTS,
    OUTCOMES,
    chart_data,
    days_shown,
    outcome_key,
    outcome_label,
    per_day,
    trend_chart,
)
from model_delivery.page.releases_data import Links, version_trend

TODAY = date(2026, 3, 10)


def _version(n: int, value: float | None, aliases: tuple[str, ...] = ()) -> Any:
    from model_delivery.registry import ModelVersion

    tags = {"run_id": f"run-{n}"} | ({"metric.accuracy": str(value)} if value is not None else {})
    return ModelVersion(name="m", version=str(n), source="", run_id=None, tags=tags, aliases=list(aliases))


def _run(day: int, outcome: str, kind: str = "release", hour: int = 12) -> dict[str, Any]:
    return {"finished_at": f"2026-03-{day:02d}T{hour:02d}:00:00+00:00", "outcome": outcome, "kind": kind}


def _model(runs: list[dict[str, Any]], trend: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"model": "m", "primary_metric": "accuracy", "trend": trend or [], "releases": runs}


def _counts(chart: dict[str, Any]) -> dict[str, list[int]]:
    return {s["key"]: s["counts"] for s in chart["series"]}


# -- one spelling per outcome ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["rolled-back", "rolled back", "Rolled_Back", " rolled  back ", "rolled -back"])
def test_every_spelling_of_a_rollback_is_one_outcome(spelling: str) -> None:
    assert outcome_key(spelling) == "rolled-back"
    assert outcome_label(spelling) == "rolled back"


def test_labels_are_words_and_unknown_outcomes_keep_one_spelling() -> None:
    assert [outcome_label(k) for k in ("no-change", "dry-run", "released")] == ["no change", "dry run", "released"]
    assert outcome_key(None) == "in-progress" and outcome_label(None) == "in progress"
    assert (outcome_key("Half_Done"), outcome_label("half done")) == ("half-done", "half done")
    assert all(" " not in key and "_" not in key for key in OUTCOMES)


def test_both_bar_charts_spell_a_rollback_the_same_way() -> None:
    runs = [_run(9, "rolled-back"), _run(9, "rolled back"), _run(10, "released")]
    charts = chart_data(_model(runs), window=7, today=TODAY)
    for name in ("releases", "failures"):
        rolled = [s for s in charts[name]["series"] if "roll" in s["key"] or "roll" in s["label"]]
        assert [(s["key"], s["label"]) for s in rolled] == [("rolled-back", "rolled back")], name
        assert sum(rolled[0]["counts"]) == 2, name


# -- the trend: one point per version, production by its alias --------------------------------------------------


def test_the_trend_has_one_point_per_version_and_marks_production_by_its_alias() -> None:
    """v2 was built by a run that rolled back, then released by a later run: one point; production is v2 because
    of its alias, whatever the runs of v3 did."""
    versions = [_version(1, 0.9), _version(2, 0.95, ("production",)), _version(3, 0.5), _version(4, None)]
    records = [{"run_id": "run-2", "finished_at": "2026-03-02T10:00:00+00:00"},
               {"run_id": "again-2", "finished_at": "2026-03-03T10:00:00+00:00", "artifact": {"version": "2"}},
               {"run_id": "run-3", "finished_at": "2026-03-04T10:00:00+00:00", "outcome": "released"}]
    chart = trend_chart(_model([], version_trend(versions, "accuracy", records)))
    assert [(p["label"], p["value"], p["production"]) for p in chart["points"]] == [
        ("v1", 0.9, False), ("v2", 0.95, True), ("v3", 0.5, False)]
    assert chart["production"] == "2"
    assert chart["points"][1]["at"] == "2026-03-02 10:00 UTC" and chart["points"][0]["at"] is None
    assert (chart["x_title"], chart["y_title"]) == ("model version (oldest first)", "accuracy (registry tag)")


def test_a_trend_without_a_production_version_marks_none() -> None:
    chart = trend_chart(_model([], [{"version": "1", "value": 0.8, "at": None, "production": False}]))
    assert chart["production"] is None and [p["production"] for p in chart["points"]] == [False]
    assert trend_chart(_model([]))["points"] == []


# -- per day ----------------------------------------------------------------------------------------------------


def test_per_day_groups_runs_by_finishing_day_in_utc_and_skips_the_unnamed() -> None:
    runs = [{"finished_at": "2026-03-01T10:00:00+00:00", "outcome": "failed"},
            {"finished_at": "2026-03-02T01:00:00+02:00", "outcome": "failed"},  # 2026-03-01 23:00 UTC
            {"finished_at": "2026-03-01T23:00:00+00:00", "outcome": "released"},
            {"finished_at": None, "outcome": "failed"}]
    assert per_day(runs, lambda r: r["outcome"] if r["outcome"] != "released" else None) == {
        date(2026, 3, 1): {"failed": 2}}


def test_the_day_axis_starts_at_the_first_run_or_the_window() -> None:
    assert days_shown([_run(8, "released")], end=TODAY, window=30) == [date(2026, 3, d) for d in (8, 9, 10)]
    assert len(days_shown([_run(1, "released")], end=TODAY, window=7)) == 7
    assert days_shown([], end=TODAY, window=7) == [TODAY]


def test_releases_per_day_count_each_outcome_of_release_runs_only() -> None:
    runs = [_run(4, "released"), _run(4, "rejected"), _run(4, "released", hour=23), _run(6, "rolled-back"),
            _run(10, "failed"), _run(1, "released"),  # before the 7-day window
            _run(5, "reverted", kind="rollback"), {"finished_at": None, "outcome": "in progress", "kind": "release"}]
    chart = chart_data(_model(runs), window=7, today=TODAY)["releases"]
    assert chart["days"] == [f"2026-03-{d:02d}" for d in range(4, 11)]
    assert _counts(chart) == {"released": [2, 0, 0, 0, 0, 0, 0], "rejected": [1, 0, 0, 0, 0, 0, 0],
                              "rolled-back": [0, 0, 1, 0, 0, 0, 0], "failed": [0, 0, 0, 0, 0, 0, 1]}
    assert chart["total"] == 5 and (chart["x_title"], chart["y_title"]) == ("day (UTC)", "runs per day")
    assert [s["label"] for s in chart["series"]] == ["released", "rejected", "rolled back", "failed"]
    assert all(s["color"]["light"] != s["color"]["dark"] for s in chart["series"])


def test_failures_per_day_count_failures_and_rollbacks_of_both_kinds_of_run() -> None:
    runs = [_run(8, "released"), _run(8, "failed"), _run(9, "rolled-back"), _run(9, "rejected"),
            _run(10, "reverted", kind="rollback"), _run(10, "failed", kind="rollback")]
    chart = chart_data(_model(runs), window=30, today=datetime(2026, 3, 10, 8, tzinfo=UTC))["failures"]
    assert chart["days"] == ["2026-03-08", "2026-03-09", "2026-03-10"]
    assert _counts(chart) == {"failed": [1, 0, 1], "rolled-back": [0, 1, 0], "reverted": [0, 0, 1]}
    assert [s["label"] for s in chart["series"]] == ["failed", "rolled back", "reverted"]


def test_a_quiet_window_says_so() -> None:
    charts = chart_data(_model([_run(1, "released")]), window=7, today=TODAY)
    assert charts["releases"]["total"] == 0 and charts["releases"]["series"] == []
    assert charts["releases"]["empty"] == "no release finished in the last 7 days"
    assert charts["failures"]["empty"] == "no failure or rollback in the last 7 days"


# -- the page embeds the data ------------------------------------------------------------------------------------


class _FakeData:
    links = Links(prefix="/base/model-releases", airflow="/base")

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view

    def model(self, name: str) -> dict[str, Any]:
        return json.loads(json.dumps(self.view))

    def metrics(self) -> None:
        return None


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.json: list[str] = []
        self.sources: list[str] = []
        self.charts: list[str] = []
        self._in_json = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("type") == "application/json":
            self._in_json = True
            self.json.append("")
        elif tag == "script" and a.get("src"):
            self.sources.append(str(a["src"]))
        elif tag == "div" and a.get("data-chart"):
            self.charts.append(str(a["data-chart"]))

    def handle_endtag(self, tag: str) -> None:
        self._in_json = False

    def handle_data(self, data: str) -> None:
        if self._in_json:
            self.json[-1] += data


def test_the_page_embeds_each_models_chart_data_as_json_and_loads_the_vendored_library() -> None:
    name = "m</script><script>alert(1)</script>"
    view = {"model": name, "description": "", "url": "/u", "dag_id": "release__m", "target": "local",
            "serving": {}, "production": "2", "previous": None, "primary_metric": "accuracy", "versions": [],
            "registry_note": None,
            "trend": [{"version": "1", "value": 0.9, "at": None, "production": False},
                      {"version": "2", "value": 0.95, "at": None, "production": True}],
            "releases": [{**_run(9, "rolled-back"), "anchor": "run-a", "run_id": "a", "reasons": [], "conf": {},
                          "report_url": "/r", "record_url": "/j", "airflow_url": None}]}
    html = render_page(_FakeData(view), [name], window=7, title="t")  # type: ignore[arg-type]
    parsed = _Scripts()
    parsed.feed(html)
    assert len(parsed.json) == 1 and parsed.charts == ["trend", "releases", "failures"]
    charts = json.loads(parsed.json[0])
    assert charts == json.loads(json.dumps(chart_data(view, window=7, today=datetime.now(UTC))))
    assert charts["model"] == name and "</script><script>alert" not in html
    assert parsed.sources == [f"/base/model-releases/static/{ECHARTS}"]
    assert (STATIC / ECHARTS).is_file()
    assert "<svg" not in html
    assert re.search(r'<td class="outcome outcome-rolled-back">rolled back</td>', html)


# -- the vendored library and the static route ------------------------------------------------------------------


def test_the_vendored_files_match_the_hashes_in_their_readme() -> None:
    readme = (STATIC / "vendor" / "README.md").read_text()
    folder = STATIC / Path(ECHARTS).parent
    listed = dict(re.findall(r"^\| `([^`]+)` \| `package/[^`]+` \| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))
    assert set(listed) == {p.name for p in folder.iterdir()} and {"echarts.min.js", "LICENSE"} <= set(listed)
    for file, digest in listed.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
    version = folder.name.removeprefix("echarts-")
    assert f"| version | {version} (exact) |" in readme and 'npm pack "echarts@$V"' in readme


@pytest.mark.parametrize("path", ["../releases_app.py", "vendor/../../releases_app.py", "/etc/passwd", "vendor",
                                  "", ".hidden", "vendor/.hidden/x.js", "vendor\\README.md", "nope.js"])
def test_the_static_route_serves_only_files_under_static(path: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vendor" / ".hidden").mkdir(parents=True)
    (tmp_path / "vendor" / ".hidden" / "x.js").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "vendor" / "README.md").write_text("ok")
    monkeypatch.setattr(releases_app, "STATIC", tmp_path)
    assert static_file("vendor/README.md") == (tmp_path / "vendor" / "README.md").resolve()
    assert static_file(path) is None


def test_a_symlink_out_of_static_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_text("x")
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "link.txt").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(releases_app, "STATIC", tmp_path / "static")
    assert static_file("link.txt") is None


def test_the_app_serves_the_library_behind_the_login_with_a_long_cache() -> None:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    app = releases_app.create_app()
    client = TestClient(app)
    url = f"/static/{ECHARTS}"
    assert client.get(url).status_code == 401
    app.dependency_overrides[get_user] = lambda: object()
    response = client.get(url)
    assert response.status_code == 200 and response.content == (STATIC / ECHARTS).read_bytes()
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert client.get("/static/vendor/..%2F..%2Freleases_app.py").status_code == 404
    assert client.get("/static/vendor").status_code == 404
