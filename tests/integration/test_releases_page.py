"""The "Model releases" page, served by a real api-server: refused without a login, then read by
its JSON API and in a real headless Chromium (screenshots in ``test-artifacts/``).

The history it shows is built once per session by ``tests.helpers.delivery_history``.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from model_delivery.store import safe_segment
from tests.helpers.browser import chromium
from tests.helpers.delivery_history import MODEL, History

pytestmark = pytest.mark.integration
pytest_plugins = ("tests.helpers.delivery_history",)


@pytest.fixture
def history(delivery_history: History) -> History:
    return delivery_history


# -- the page: authentication ---------------------------------------------------------------------------


PAGE_ROUTES = ["/model-releases/", f"/model-releases/models/{MODEL}", "/model-releases/api/models",
               f"/model-releases/api/models/{MODEL}", "/model-releases/api/metrics",
               f"/model-releases/models/{MODEL}/releases/x/report"]


@pytest.mark.parametrize("route", PAGE_ROUTES)
@pytest.mark.parametrize(
    ("credentials", "status"),
    [
        pytest.param({}, 401, id="anonymous"),
        pytest.param({"headers": {"Authorization": "Bearer not-a-jwt"}}, 403, id="bad bearer token"),
        pytest.param({"cookies": {"_token": "not-a-jwt"}}, 403, id="bad session cookie"),
    ],
)
def test_the_page_refuses_requests_without_a_valid_airflow_login(history: History, route: str,
                                                                  credentials: dict, status: int) -> None:
    response = httpx.get(f"{history.server.url}{route}", timeout=30, **credentials)
    assert response.status_code == status, response.text
    assert MODEL not in response.text


def test_the_session_cookie_of_the_ui_is_accepted(history: History) -> None:
    response = httpx.get(f"{history.server.url}/model-releases/api/models", cookies={"_token": history.server.token},
                         timeout=30)
    assert response.status_code == 200
    assert [m["model"] for m in response.json()["models"]] == [MODEL]


def test_the_plugin_is_registered_with_a_nav_entry(history: History) -> None:
    with history.server.client() as client:
        plugins = client.get("/api/v2/plugins").json()["plugins"]
    plugin = next(p for p in plugins if p["name"] == "model_delivery")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/model-releases"
    assert {(v["name"], v["href"], v["destination"]) for v in plugin["external_views"]} == {
        ("Model releases", "/model-releases/", "nav")}


# -- the page: the JSON API -------------------------------------------------------------------------------


def test_the_json_api_gives_versions_aliases_gates_and_deployments(history: History) -> None:
    records = history.records
    fixed = records["fixed"]["artifact"]["version"]
    with history.server.client() as client:
        view = client.get(f"/model-releases/api/models/{MODEL}").json()
    assert (view["production"], view["previous"]) == ("1", fixed)  # the manual rollback went back to v1
    versions = {v["version"]: v for v in view["versions"]}
    assert [v["version"] for v in view["versions"]] == sorted(versions, key=int, reverse=True)
    assert versions["1"]["aliases"] == ["production"] and versions["1"]["serving"] == ["active"]
    assert versions[fixed]["aliases"] == ["previous"]
    assert versions["1"]["gate"] == "first-release"
    assert versions[records["worse"]["artifact"]["version"]]["gate"] == "rejected"
    assert versions[records["worse"]["artifact"]["version"]]["deployments"] == []
    against = versions[fixed]["versus_champion"]
    assert against["champion_version"] == "1"
    accuracy = next(m for m in against["metrics"] if m["name"] == "accuracy")
    assert accuracy["delta"] == pytest.approx(accuracy["value"] - accuracy["champion"])
    stages = {d["stage"] for d in versions["1"]["deployments"]}
    assert stages == {"deploy_staging", "deploy_production"}
    assert all(d["url"].startswith("http://127.0.0.1:") and d["at"] for d in versions["1"]["deployments"])
    rows = {r["run_id"]: r for r in view["releases"]}
    assert {rows[r["run_id"]]["outcome"] for r in records.values()} == {"released", "rejected", "rolled-back",
                                                                        "reverted"}
    revert = rows[records["revert"]["run_id"]]
    assert (revert["kind"], revert["from_version"], revert["airflow_url"]) == (
        "rollback", fixed, f"/dags/model_rollback/runs/{quote(records['revert']['run_id'], safe='')}")


def test_the_report_of_each_release_is_served(history: History) -> None:
    worse = history.records["worse"]
    with history.server.client() as client:
        view = client.get(f"/model-releases/api/models/{MODEL}").json()
        row = next(r for r in view["releases"] if r["run_id"] == worse["run_id"])
        report = client.get(row["report_url"])
        record = client.get(row["record_url"])
        traversal = client.get(f"/model-releases/models/{MODEL}/releases/..%2F..%2Fsha256/report")
    assert report.status_code == 200 and "rejected" in report.text and "<table>" in report.text
    assert record.json()["run_id"] == worse["run_id"]
    assert traversal.status_code == 404


def test_the_json_api_serves_the_latest_metrics(history: History) -> None:
    with history.server.client() as client:
        assert client.get("/model-releases/api/metrics").json() == history.document


# -- the page: in a real browser ---------------------------------------------------------------------------


def test_the_page_in_a_browser_shows_versions_and_metrics(history: History, tmp_path: Path) -> None:
    url = history.server.url
    with chromium(tmp_path / "profile") as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/model-releases/?window=7") == 200
        text = page.text()
        shot = page.screenshot("model-releases.png")
        plots = page.evaluate("document.querySelectorAll('section.model svg.plot').length")
        metric_row = page.evaluate(
            f"[...document.querySelectorAll('tr[data-scope=\"{MODEL}\"] td')].map(td => td.innerText)")
        version_rows = page.evaluate("[...document.querySelectorAll('tr[data-version]')].map(r => r.dataset.version)")
        run_rows = page.evaluate("[...document.querySelectorAll('table.releases tr[id]')].map(r => r.id)")
    assert shot.stat().st_size > 10_000
    assert "Model releases" in text and "Delivery metrics, last 7 days" in text
    assert "production v1" in text and f"previous v{history.records['fixed']['artifact']['version']}" in text
    assert plots == 3
    # scope, coverage, runs, failures, failure rate, MTTF, MTTR, deployment frequency, lead time, CFR
    assert metric_row[0] == MODEL and metric_row[2:4] == ["5", "2"]
    assert metric_row[1] == f"{history.document['coverage']['models'][MODEL]['coverage']:.1%}"
    assert metric_row[-1] == "66.7% (2/3)"
    assert version_rows == sorted(version_rows, key=int, reverse=True) and "1" in version_rows
    assert sorted(run_rows) == sorted(f"run-{safe_segment(r['run_id'])}" for r in history.records.values())


def test_the_page_in_a_browser_without_a_login_is_refused(history: History, tmp_path: Path) -> None:
    with chromium(tmp_path / "profile") as page:
        assert page.open(f"{history.server.url}/model-releases/") == 401
        text = page.text()
    assert "Not authenticated" in text and MODEL not in text


def test_the_page_is_in_the_airflow_ui_navigation(history: History, tmp_path: Path) -> None:
    """The UI embeds the page at /plugin/model-releases, with the same login (the session cookie)."""
    url = history.server.url
    with chromium(tmp_path / "profile") as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/plugin/model-releases") == 200
        deadline = time.monotonic() + 60
        frame = None
        while time.monotonic() < deadline:
            frame = page.evaluate("(() => { const f = document.querySelector('iframe');"
                                  " return f && f.contentDocument && f.contentDocument.readyState === 'complete'"
                                  " ? [f.getAttribute('src'), f.contentDocument.body.innerText] : null })()")
            if frame and MODEL in frame[1]:
                break
            time.sleep(0.5)
        page.screenshot("model-releases-in-airflow-ui.png")
    assert frame is not None, "the Airflow UI did not embed the page"
    assert frame[0].endswith("/model-releases/") and MODEL in frame[1] and "production v1" in frame[1]
