"""Human approval before production (spec ``approval: required``), answered through the real REST API.

The release runs with ``dag.test()``; a second thread waits for the ``approve`` task to
park in AWAITING_INPUT and answers it the way a person in the UI does: a PATCH to the
api-server's Human-in-the-loop endpoint. For the timeout, the thread runs the
scheduler's own timeout sweep once the deadline has passed (``dag.test`` has no scheduler).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.api_server import api_server
from tests.helpers.models import edit_spec
from tests.helpers.release import check_outcome, load_record, release_env, run_release, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    base = tmp_path_factory.mktemp("approval")
    with release_env(base, (MODEL,)) as models_dir:
        first = run_release(MODEL, {"reason": "production before approvals"})
        assert first.state == "success"
        edit_spec(models_dir / MODEL, lambda spec: spec.update(approval="required", approval_timeout_minutes=10))
        with api_server(base / "api-server.log") as api:
            yield models_dir, api, load_record(MODEL, first.run_id)["artifact"]["digest"]


def serving_digest(models_dir: Path) -> str:
    port = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())["deploy"]["local"]["port"]
    return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).headers["x-model-digest"]


def _awaiting_approval(seen: set[str], deadline: float) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    while time.monotonic() < deadline:
        with create_session() as session:
            ti = (
                session.query(TaskInstance)
                .filter_by(dag_id=f"release__{MODEL}", task_id="approve", state=TaskInstanceState.AWAITING_INPUT)
                .one_or_none()
            )
            if ti is not None and ti.run_id not in seen:
                session.expunge(ti)
                return ti
        time.sleep(0.5)
    raise AssertionError("the approve task never waited for input")


def answer_on_the_page(api: Any, ti: Any, answer: str, profile: Path) -> dict[str, Any]:
    """Answer as a person does on the Model releases page (admin, in a real Chromium): its pending approval's button."""
    from tests.helpers.browser import chromium

    button = f".approval[data-run=\"{ti.run_id}\"] button[data-option=\"{answer}\"]"
    with chromium(profile) as page:
        page.set_cookie("_token", api.tokens["admin"], f"{api.url}/")
        assert page.open(f"{api.url}/model-releases/models/{MODEL}") == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not page.evaluate(f"!!document.querySelector('{button}')"):
            time.sleep(0.3)
        listed = page.evaluate("document.querySelector('.approvals').innerText")
        page.evaluate(f"document.querySelector('{button}').click()")
        said = ""
        while time.monotonic() < deadline and not said:
            said = page.evaluate("document.querySelector('.act-result').innerText")
            time.sleep(0.3)
        page.screenshot("model-releases-approval.png")
    return {"listed": listed, "said": said}


def answer_in_background(api: Any, answer: str | None, seen: set[str], page: Path | None = None) -> dict[str, Any]:
    """Answer the next approval request: 'Approve', 'Reject', or None to let it time out; on the page with ``page``
    (a browser profile directory), else through the REST API."""
    outcome: dict[str, Any] = {}

    def respond() -> None:
        try:
            ti = _awaiting_approval(seen, time.monotonic() + 300)
            seen.add(ti.run_id)
            outcome["body"] = _hitl_detail(api, ti)["body"]
            if answer is None:
                _let_it_time_out(ti)
                return
            if page is not None:
                outcome["page"] = answer_on_the_page(api, ti, answer, page)
                outcome["status"] = 200 if outcome["page"]["said"].startswith(f"{answer} sent for") else 0
                return
            with api.client() as client:
                response = client.patch(
                    f"/api/v2/dags/{ti.dag_id}/dagRuns/{ti.run_id}/taskInstances/approve/-1/hitlDetails",
                    json={"chosen_options": [answer], "params_input": {}},
                )
            outcome["status"] = response.status_code
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=respond, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def _hitl_detail(api: Any, ti: Any) -> dict[str, Any]:
    with api.client() as client:
        response = client.get(f"/api/v2/dags/{ti.dag_id}/dagRuns/{ti.run_id}/taskInstances/approve/-1/hitlDetails")
    assert response.status_code == 200, response.text
    return response.json()


def _let_it_time_out(ti: Any) -> None:
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils import timezone

    wait = (ti.trigger_timeout - timezone.utcnow()).total_seconds()
    time.sleep(max(0.0, wait) + 1)
    SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()


def test_a_release_approved_on_the_model_releases_page_reaches_production(env, tmp_path: Path) -> None:
    """The page lists the pending approval and its buttons answer through Airflow's REST API as the signed-in user."""
    models_dir, api, _ = env
    edit_spec(models_dir / MODEL, lambda spec: spec["build"]["params"].update(C=0.3))
    answer = answer_in_background(api, "Approve", set(), page=tmp_path / "profile")

    dag_run = run_release(MODEL, {"reason": "needs a person"})

    answer["thread"].join(timeout=60)
    assert "error" not in answer, answer.get("error")
    assert f"Release {MODEL} to production?" in answer["page"]["listed"] and dag_run.run_id in answer["page"]["listed"]
    assert answer["status"] == 200, answer["page"]
    assert "Gate verdict: **blessed**" in answer["body"]
    assert dag_run.state == "success"
    record = load_record(MODEL, dag_run.run_id)
    assert record["stages"]["approve"]["status"] == "success"
    assert record["stages"]["approve"]["result"]["chosen"] == ["Approve"]
    assert record["stages"]["approve"]["result"]["by"] == "admin"
    assert serving_digest(models_dir) == record["artifact"]["digest"]


@pytest.mark.parametrize(("answer", "why"), [
    pytest.param("Reject", "approval rejected", id="rejected"),
    pytest.param(None, "no answer before the approval timeout", id="timed-out"),
])
def test_no_approval_stops_the_release_and_production_is_unchanged(env, answer: str | None, why: str) -> None:
    models_dir, api, _ = env
    before = serving_digest(models_dir)
    edit_spec(models_dir / MODEL, lambda spec: spec["build"]["params"].update(C=0.2 if answer else 0.1))
    if answer is None:
        edit_spec(models_dir / MODEL, lambda spec: spec.update(approval_timeout_minutes=0.05))
    responder = answer_in_background(api, answer, set())

    dag_run = run_release(MODEL, {"reason": f"to be {why}"})

    responder["thread"].join(timeout=60)
    assert "error" not in responder, responder.get("error")
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["approve"] == "failed"
    assert states["deploy_production"] == "upstream_failed"
    assert states["rollback"] == "success"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rejected"
    assert why in record["stages"]["approve"]["error"]
    pushed = check_outcome(dag_run, "rejected")
    assert pushed is not None and why in pushed["error"]
    assert record["stages"]["rollback"]["result"]["action"] == "stopped-candidate"
    assert serving_digest(models_dir) == before


def _asked_again(api: Any, ti: Any, deadline: float) -> dict[str, Any]:
    """Wait until the refused approval is recorded and the same task waits for input again; return its record."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    while time.monotonic() < deadline:
        try:
            stage = load_record(MODEL, ti.run_id)["stages"]["approve"]
        except (FileNotFoundError, KeyError):
            stage = {}
        with create_session() as session:
            state = session.query(TaskInstance.state).filter_by(
                dag_id=ti.dag_id, run_id=ti.run_id, task_id="approve").scalar()
        if stage.get("refused") and state == TaskInstanceState.AWAITING_INPUT:
            if not _hitl_detail(api, ti).get("response_received"):
                return stage
        time.sleep(0.5)
    raise AssertionError("the approval was not asked again after the self-approval")


def test_the_user_who_triggered_the_run_cannot_approve_it_and_another_person_can(env) -> None:
    models_dir, api, _ = env
    edit_spec(models_dir / MODEL, lambda spec: spec["build"]["params"].update(C=0.25))
    outcome: dict[str, Any] = {}

    def respond() -> None:
        try:
            ti = _awaiting_approval(set(), time.monotonic() + 300)
            path = f"/api/v2/dags/{ti.dag_id}/dagRuns/{ti.run_id}/taskInstances/approve/-1/hitlDetails"
            answer = {"chosen_options": ["Approve"], "params_input": {}}
            with api.client("dag_test") as client:  # dag.test() triggers as "dag_test": the same person
                outcome["self"] = client.patch(path, json=answer).status_code
            outcome["waiting"] = _asked_again(api, ti, time.monotonic() + 120)
            with api.client("admin") as client:
                outcome["other"] = client.patch(path, json=answer).status_code
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=respond, daemon=True)
    thread.start()
    dag_run = run_release(MODEL, {"reason": "four eyes"})
    thread.join(timeout=60)

    assert "error" not in outcome, outcome.get("error")
    assert outcome["self"] == 200 and outcome["other"] == 200
    assert "another person must approve" in outcome["waiting"]["note"]
    assert dag_run.state == "success", task_states(dag_run)
    stage = load_record(MODEL, dag_run.run_id)["stages"]["approve"]
    assert stage["status"] == "success" and stage["triggered_by"] == "dag_test"
    assert stage["result"]["by"] == "admin"
    assert [(r["by"], r["why"]) for r in stage["refused"]] == [("dag_test", "approved by the user who triggered the run")]
    assert serving_digest(models_dir) == load_record(MODEL, dag_run.run_id)["artifact"]["digest"]
