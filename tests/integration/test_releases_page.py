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
    # What stands: production of the released run (live: v1 serves); staging servers of finished runs are gone.
    assert [(d["stage"], d["live"]) for d in versions["1"]["deployments"]] == [("deploy_production", True)]
    assert all(d["url"].startswith("http://127.0.0.1:") and d["at"] for d in versions["1"]["deployments"])
    assert all(not d["live"] for v in view["versions"] if v["version"] != "1" for d in v["deployments"])
    # The fixed version was first built by a run that failed its smoke test and rolled back, then released by
    # the next: its report is the release's, and the rolled-back run's staging server is not listed.
    assert records["smoke_fails"]["artifact"]["version"] == fixed
    assert versions[fixed]["report_url"].endswith(f"/releases/{safe_segment(records['fixed']['run_id'])}/report")
    assert [d["run_id"] for d in versions[fixed]["deployments"]] == [records["fixed"]["run_id"]]
    assert view["serving"]["front_link"].endswith(f"/v2/models/{MODEL}")
    # The trend has one point per version, production marked by its alias.
    trend = view["trend"]
    assert len({p["version"] for p in trend}) == len(trend) and [p["version"] for p in trend if p["production"]] == ["1"]
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
        metric_row = page.evaluate(
            f"[...document.querySelectorAll('tr[data-scope=\"{MODEL}\"] td')].map(td => td.innerText)")
        version_rows = page.evaluate("[...document.querySelectorAll('tr[data-version]')].map(r => r.dataset.version)")
        run_rows = page.evaluate("[...document.querySelectorAll('table.releases tr[id]')].map(r => r.id)")
    assert shot.stat().st_size > 10_000
    assert "Model releases" in text and "Delivery metrics, last 7 days" in text
    assert "production v1" in text and f"previous v{history.records['fixed']['artifact']['version']}" in text
    # scope, coverage, runs, failures, failure rate, MTTF, MTTR, deployment frequency, lead time, CFR
    assert metric_row[0] == MODEL and metric_row[2:4] == ["5", "2"]
    assert metric_row[1] == f"{history.document['coverage']['models'][MODEL]['coverage']:.1%}"
    assert metric_row[-1] == "66.7% (2/3)"
    assert version_rows == sorted(version_rows, key=int, reverse=True) and "1" in version_rows
    assert sorted(run_rows) == sorted(f"run-{safe_segment(r['run_id'])}" for r in history.records.values())


CHARTS = """(() => [...document.querySelectorAll('section.model')].map(section => ({
  model: section.dataset.model,
  charts: [...section.querySelectorAll('.chart[data-chart]')].map(el => ({
    chart: el.dataset.chart, rendered: el.dataset.rendered || null, svg: el.querySelectorAll('svg').length,
    text: [...el.querySelectorAll('svg text')].map(t => t.textContent),
    smallest: Math.min(...[...el.querySelectorAll('svg text')].map(t => parseFloat(getComputedStyle(t).fontSize))),
    width: el.getBoundingClientRect().width})),
})))()"""
TOOLTIP = """(() => { const el = document.querySelector('section.model .chart[data-chart="%s"]');
  const chart = echarts.getInstanceByDom(el);
  chart.dispatchAction({type: 'showTip', seriesIndex: 0, dataIndex: %d});
  return [...el.querySelectorAll('div')].filter(d => !d.querySelector('svg') && d.innerText.trim())
    .map(d => d.innerText).join(' | '); })()"""


@pytest.mark.parametrize("width", [1440, 390])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_each_model_has_three_charts_drawn_by_the_vendored_library(history: History, tmp_path: Path, width: int,
                                                                   scheme: str) -> None:
    """The charts are drawn in the browser from the page's JSON by the ECharts the plugin serves (no CDN): three
    per model, with axis titles, text of 11 px or more, tooltips, one spelling per outcome, the colour scheme
    the browser asks for, and no JS error; the page fits the width. Screenshots: test-artifacts/."""
    url = history.server.url
    with chromium(tmp_path / "profile", width=width, height=1400) as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        page.emulate(width=width, height=1400, dark=scheme == "dark")
        assert page.open(f"{url}/model-releases/?window=7") == 200
        drawn = page.wait_for("document.querySelectorAll('section.model .chart[data-rendered] svg').length >= 3")
        charts = page.evaluate(CHARTS)
        shot = page.screenshot(f"model-releases-charts-{width}-{scheme}.png")
        tooltip = page.wait_for(TOOLTIP % ("trend", 0), timeout=10)
        bar_tooltip = page.wait_for(TOOLTIP % ("releases", 0), timeout=10)
        fits = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        colours = page.evaluate("[getComputedStyle(document.body).backgroundColor,"
                                " getComputedStyle(document.querySelector('section.model')).backgroundColor]")
        outcomes = page.evaluate("[...document.querySelectorAll('table.releases td.outcome')].map(td => td.innerText)")
        page.drain()
        errors = list(page.errors)
        library = [r for r in page.responses if "/model-releases/static/vendor/echarts-" in r["url"]]
    assert drawn, f"the charts were not drawn: {charts}"
    assert errors == [], errors
    assert [(r["status"], {k.lower(): v for k, v in r["headers"].items()}.get("cache-control")) for r in library] == [
        (200, "private, max-age=31536000, immutable")]
    assert [m["model"] for m in charts] == [MODEL]
    by_name = {c["chart"]: c for c in charts[0]["charts"]}
    assert sorted(by_name) == ["failures", "releases", "trend"]
    for name, chart in by_name.items():
        assert chart["rendered"] == scheme and chart["svg"] >= 1, (name, chart)
        assert chart["smallest"] >= 11, (name, chart["smallest"])
        assert chart["width"] <= width - 16, (name, chart["width"])
    assert {"model version (oldest first)", "accuracy (registry tag)", "production"} <= set(by_name["trend"]["text"])
    for name in ("releases", "failures"):
        assert {"day (UTC)", "runs per day", "rolled back"} <= set(by_name[name]["text"]), (name, by_name[name]["text"])
    assert "released" in by_name["releases"]["text"] and "reverted" in by_name["failures"]["text"]
    assert "rolled back" in outcomes and not [o for o in outcomes if "-" in o], outcomes
    assert tooltip.startswith("v1") and "accuracy: 0." in tooltip, tooltip
    assert "released: " in bar_tooltip or "rejected: " in bar_tooltip, bar_tooltip
    assert fits[0] <= fits[1], f"the page is {fits[0]} px wide in a {fits[1]} px window"
    dark_page = {"light": ("rgb(246, 248, 250)", "rgb(255, 255, 255)"), "dark": ("rgb(13, 17, 23)", "rgb(22, 27, 34)")}
    assert tuple(colours) == dark_page[scheme]
    assert shot.stat().st_size > 10_000


def test_a_signed_out_browser_is_sent_to_the_login_and_back(history: History, tmp_path: Path) -> None:
    """The README's URL in a browser without a login: Airflow's login page, which comes back to the page."""
    with chromium(tmp_path / "profile") as page:
        page.open(f"{history.server.url}/model-releases/?window=7")
        where = page.evaluate("location.pathname + location.search")
        text = page.text()
    assert where.startswith("/auth/login") and "next=%2Fmodel-releases%2F%3Fwindow%3D7" in where, where
    assert MODEL not in text


def test_an_api_client_without_a_login_still_gets_401_json(history: History) -> None:
    response = httpx.get(f"{history.server.url}/model-releases/", headers={"Accept": "application/json"}, timeout=30)
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}


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


def test_the_embedded_page_follows_the_colour_mode_of_airflow(history: History, tmp_path: Path) -> None:
    """Inside the UI the page takes Airflow's own colour mode (its theme switch), not the system's, and follows a
    switch while it is open."""
    url = history.server.url
    frame_theme = ("(() => { const f = document.querySelector('iframe'); const d = f && f.contentDocument;"
                   " return d && d.readyState === 'complete' && d.querySelector('section.model')"
                   " ? [document.documentElement.className, d.documentElement.dataset.theme,"
                   " getComputedStyle(d.body).backgroundColor] : null })()")
    with chromium(tmp_path / "profile") as page:  # the system's scheme is light
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/plugin/model-releases") == 200
        page.evaluate("localStorage.setItem('theme', 'dark')")  # Airflow's theme switch, as it stores it
        assert page.open(f"{url}/plugin/model-releases") == 200
        deadline, dark = time.monotonic() + 60, None
        while time.monotonic() < deadline and not (dark and dark[1] == "dark"):
            dark = page.evaluate(frame_theme)
            time.sleep(0.3)
        page.screenshot("model-releases-in-airflow-dark.png")
        page.evaluate("document.documentElement.classList.replace('dark', 'light')")  # switched back to light
        light = None
        while time.monotonic() < deadline and not (light and light[1] == "light"):
            light = page.evaluate(frame_theme)
            time.sleep(0.3)
    assert dark is not None and "dark" in dark[0].split() and dark[1] == "dark", dark
    assert dark[2] == "rgb(13, 17, 23)"  # the dark background
    assert light is not None and light[1] == "light" and light[2] == "rgb(246, 248, 250)", light


def test_an_airflow_run_link_in_the_embedded_page_opens_the_run_in_the_ui(history: History, tmp_path: Path) -> None:
    """Airflow sandboxes the iframe without top navigation: the link must still open the run in the UI itself.

    Clicked once the page has loaded (as a person would) and the UI has mirrored the iframe's address into its
    own (/plugin/model-releases/model-releases/, on the iframe's load event); before that the UI's own update
    of its address may land after the click's."""
    url = history.server.url
    revert = history.records["revert"]
    with chromium(tmp_path / "profile") as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/plugin/model-releases") == 200
        deadline = time.monotonic() + 60
        clicked = None
        while time.monotonic() < deadline and not clicked:
            clicked = page.evaluate(
                "(() => { const f = document.querySelector('iframe'); const d = f && f.contentDocument;"
                " if (!d || d.readyState !== 'complete' || !location.pathname.endsWith('/model-releases/')) return null;"
                f" const row = d && d.getElementById('run-{safe_segment(revert['run_id'])}');"
                " const a = row && row.querySelector('a[data-airflow]');"
                " if (!a) return null; a.click(); return a.getAttribute('href') })()")
            time.sleep(0.5)
        assert clicked, "no Airflow run link in the embedded page"
        where, body = None, ""
        while time.monotonic() < deadline:
            where, body = page.evaluate("[location.pathname, document.body.innerText]")
            if where == clicked and revert["run_id"] in body:
                break
            time.sleep(0.5)
        page.screenshot("model-releases-airflow-run-link.png")
    assert where == clicked == f"/dags/model_rollback/runs/{quote(revert['run_id'], safe='')}", (where, clicked)
    assert revert["run_id"] in body  # the UI's own run page, not the iframe


def test_a_version_shows_its_build_serving_files_signature_and_checks(history: History, tmp_path: Path) -> None:
    records = history.records
    champion = records["champion"]
    with history.server.client() as client:
        detail = client.get(f"/model-releases/api/models/{MODEL}/versions/1").json()
        missing = client.get(f"/model-releases/api/models/{MODEL}/versions/999")
    build = champion["stages"]["build"]["result"]
    # v1 is production again because the manual rollback put it back: that run is shown (report, outcome);
    # its lineage, gate and smoke are those of the release that built and judged it
    assert detail["digest"] == champion["artifact"]["digest"]
    assert detail["run_id"] == records["revert"]["run_id"] and detail["checked_by"] == champion["run_id"]
    assert detail["params"]["C"] == "1.0"
    assert detail["lineage"]["git_sha"] == build["git_sha"] and detail["lineage"]["spec_digest"] == build["spec_digest"]
    assert detail["lineage"]["data"]["train"]["sha256"] == build["data"]["train"]["sha256"]
    assert detail["serving"]["runtime"] == "model_server" and detail["serving"]["flavor"] == "sklearn"
    assert [t["name"] for t in detail["serving"]["outputs"]] == ["predict", "predict_proba"]
    assert {f["path"] for f in detail["files"]} >= {"serving.json", "model.joblib"}
    assert all(f["size"] > 0 and len(f["sha256"]) == 64 for f in detail["files"])
    assert detail["signature"]["bundle"] is False and detail["signature"]["mode"] == "off"
    assert {c["metric"] for c in detail["checks"]["gate"]} >= {"accuracy"} and detail["checks"]["smoke"]["smoke"]["passed"]
    assert detail["checks"]["smoke"]["smoke"]["latency_ms"]["p95"] > 0
    assert missing.status_code == 404 and "no version '999'" in missing.text
    url = history.server.url
    with chromium(tmp_path / "profile") as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/model-releases/models/{MODEL}/versions/1") == 200
        text = page.text()
        report = page.evaluate("document.querySelector('iframe.report').getAttribute('src')")
        page.screenshot("model-releases-version.png")
    assert "Serving" in text and "model.joblib" in text and "unsigned" in text and build["git_sha"] in text
    assert report.endswith(f"/releases/{safe_segment(records['revert']['run_id'])}/report")


def test_two_versions_compare_side_by_side(history: History, tmp_path: Path) -> None:
    worse = history.records["worse"]["artifact"]["version"]
    with history.server.client() as client:
        both = client.get(f"/model-releases/api/models/{MODEL}/compare", params={"a": "1", "b": worse}).json()
    assert (both["a"], both["b"]) == ("1", worse)
    assert {r["name"]: (r["a"], r["b"]) for r in both["params"]}["C"] == ("1.0", "0.02")
    assert "model.joblib" in both["files"]["changed"] and both["files"]["added"] == both["files"]["removed"] == []
    assert any(not r["same"] for r in both["metrics"])
    url = history.server.url
    with chromium(tmp_path / "profile") as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/model-releases/models/{MODEL}/compare?a=1&b={worse}") == 200
        differs = page.evaluate("[...document.querySelectorAll('table.compare-params tr.differs')]"
                                ".map(r => r.dataset.name)")
        page.screenshot("model-releases-compare.png")
    assert differs == ["C"]


def test_every_run_carries_its_outcome_as_its_airflow_note(history: History) -> None:
    """The Grid tells the story: the scheduler's listener (here, dag.test()'s) notes each run's outcome."""
    with history.server.client() as client:
        notes = {step: client.get(f"/api/v2/dags/{record['dag_id']}/dagRuns/{quote(record['run_id'], safe='')}")
                 .json()["note"] for step, record in history.records.items()}
    for step, record in history.records.items():
        assert notes[step] and notes[step].startswith(f"{record['outcome']}"), (step, notes[step])
    assert "smoke" in notes["smoke_fails"] and '"this one fails its smoke test"' in notes["smoke_fails"]
    # who asked: dag.test() triggers as the user dag_test; the record and the page say so
    assert "asked by dag_test" in notes["champion"] and history.records["champion"]["triggered_by"] == "dag_test"
    with history.server.client() as client:
        rows = client.get(f"/model-releases/api/models/{MODEL}").json()["releases"]
    champion = next(r for r in rows if r["run_id"] == history.records["champion"]["run_id"])
    assert (champion["triggered_by"], champion["reason"]) == ("dag_test", "champion")


# -- the page: actions, through Airflow's REST API as the signed-in user --------------------------------------


def _act(history: History, tmp_path: Path, user: str, fill: str, name: str) -> tuple[str, str]:
    """Open the page as ``user``, run the ``fill`` script on the model's actions, submit, and wait for the answer."""
    url = history.server.url
    with chromium(tmp_path / "profile", width=390, height=1400) as page:
        page.set_cookie("_token", history.server.tokens[user], f"{url}/")
        assert page.open(f"{url}/model-releases/models/{MODEL}") == 200
        page.evaluate(f"(() => {{ const box = document.querySelector('.actions[data-model=\"{MODEL}\"]'); {fill} }})()")
        deadline = time.monotonic() + 60
        result = ("", "")
        while time.monotonic() < deadline:
            result = page.evaluate("(() => { const r = document.querySelector('.act-result');"
                                   " return [r.className, r.innerText] })()")
            if result[1]:
                break
            time.sleep(0.3)
        page.screenshot(name)
    return result


def _new_runs(history: History, dag_id: str, before: set[str]) -> list[dict]:
    with history.server.client() as client:
        runs = client.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]
        new = [r for r in runs if r["dag_run_id"] not in before]
        for run in new:  # no scheduler runs here: the queued run would only linger for the tests after this one
            assert client.delete(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'], safe='')}").status_code == 204
    return new


def _run_ids(history: History, dag_id: str) -> set[str]:
    with history.server.client() as client:
        return {r["dag_run_id"] for r in client.get(f"/api/v2/dags/{dag_id}/dagRuns",
                                                    params={"limit": 100}).json()["dag_runs"]}


SUBMIT_RELEASE = ("const f = box.querySelector('form.act-release'); f.elements.reason.value = {reason!r};"
                  " f.elements.force.checked = {force}; f.elements.dry_run.checked = {dry};"
                  " f.querySelector('button').click();")


def test_a_signed_in_user_triggers_a_dry_run_with_a_reason_from_the_page(history: History, tmp_path: Path) -> None:
    dag_id = f"release__{MODEL}"
    before = _run_ids(history, dag_id)
    state, text = _act(history, tmp_path, "admin",
                       SUBMIT_RELEASE.format(reason="what would change?", force="false", dry="true"),
                       "model-releases-trigger-390.png")
    new = _new_runs(history, dag_id, before)
    assert "ok" in state and text.startswith("Dry run triggered:"), (state, text)
    assert len(new) == 1 and new[0]["dag_run_id"] in text
    assert new[0]["conf"] == {"reason": "what would change?", "force": False, "dry_run": True}
    assert new[0]["triggering_user_name"] == "admin" and new[0]["note"] == "what would change?"


def test_force_without_a_reason_is_refused_on_the_page_before_anything_is_sent(history: History,
                                                                              tmp_path: Path) -> None:
    dag_id = f"release__{MODEL}"
    before = _run_ids(history, dag_id)
    state, text = _act(history, tmp_path, "admin", SUBMIT_RELEASE.format(reason="", force="true", dry="false"),
                       "model-releases-force-without-reason.png")
    assert "error" in state and "force needs a reason" in text
    assert _new_runs(history, dag_id, before) == []


def test_a_user_without_trigger_rights_is_refused_by_airflow_and_nothing_runs(history: History,
                                                                             tmp_path: Path) -> None:
    dag_id = f"release__{MODEL}"
    before = _run_ids(history, dag_id)
    state, text = _act(history, tmp_path, "viewer", SUBMIT_RELEASE.format(reason="a viewer tries", force="false",
                                                                          dry="false"),
                       "model-releases-viewer-refused.png")
    assert "error" in state and "HTTP 403" in text and "does not allow" in text, (state, text)
    assert _new_runs(history, dag_id, before) == []


def test_a_rollback_to_a_chosen_version_is_triggered_from_the_page(history: History, tmp_path: Path) -> None:
    fixed = history.records["fixed"]["artifact"]["version"]
    before = _run_ids(history, "model_rollback")
    state, text = _act(history, tmp_path, "admin",
                       "const f = box.querySelector('form.act-rollback');"
                       f" f.elements.version.value = {fixed!r}; f.elements.reason.value = 'back to the fixed one';"
                       " f.querySelector('button').click();", "model-releases-rollback.png")
    new = _new_runs(history, "model_rollback", before)
    assert "ok" in state and text.startswith(f"Rollback to v{fixed} triggered:"), (state, text)
    assert len(new) == 1 and new[0]["conf"] == {"model": MODEL, "version": fixed, "reason": "back to the fixed one"}
    assert new[0]["triggering_user_name"] == "admin"


def test_the_page_fits_a_phone(history: History, tmp_path: Path) -> None:
    url = history.server.url
    with chromium(tmp_path / "profile", width=390, height=1400) as page:
        page.set_cookie("_token", history.server.token, f"{url}/")
        assert page.open(f"{url}/model-releases/") == 200
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        page.screenshot("model-releases-390.png")
    assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"
