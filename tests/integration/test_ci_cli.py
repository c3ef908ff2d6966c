"""`model-delivery release --wait` against a real Airflow (standalone: api-server, scheduler, executor).

Exit codes: 0 released, 1 failed or rolled back, 2 rejected by the gate, 3 usage or
connection error. Also: two triggers of one model never run at once; two models do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model_delivery.ci import _call
from tests.helpers.models import copy_models, edit_spec
from tests.helpers.stack import standalone

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("stack")
    models = copy_models(base / "models")
    for name in ("breast_cancer", "wine"):  # no schedules or asset triggers: only what the tests trigger
        edit_spec(models / name, lambda spec: spec.update(schedule=None, trigger_on=None))
    with standalone(base, models) as running:
        yield running, models


def cli(stack, *args: str, extra_env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    running, _ = stack
    env = {**os.environ, **running.env, **(extra_env or {})}
    exe = str(Path(sys.executable).parent / "model-delivery")
    return subprocess.run([exe, "release", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_exit_0_when_released(stack) -> None:
    result = cli(stack, "breast_cancer", "--reason", "from CI", "--wait", "--timeout", "600")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success         build" in result.stdout
    assert "success         promote" in result.stdout
    assert "release released" in result.stdout
    assert "AIRFLOW_API_PASSWORD" not in result.stdout and stack[0].env["AIRFLOW_API_PASSWORD"] not in result.stdout


def test_exit_2_when_the_gate_rejects(stack) -> None:
    _, models = stack
    edit_spec(models / "breast_cancer", lambda spec: spec["gate"]["thresholds"].update(accuracy={"min": 0.999}))
    try:
        result = cli(stack, "breast_cancer", "--reason", "too strict a gate", "--wait")
    finally:
        edit_spec(models / "breast_cancer", lambda spec: spec["gate"]["thresholds"].update(accuracy={"min": 0.93}))

    assert result.returncode == 2, result.stdout + result.stderr
    assert "failed          gate" in result.stdout
    assert "release rejected" in result.stdout
    assert "accuracy = 0.9790, must be >= 0.999" in result.stdout


def test_exit_1_when_the_release_fails_and_rolls_back(stack) -> None:
    _, models = stack
    cases = json.loads((models / "breast_cancer" / "golden.json").read_text())
    cases[0]["expect"]["equals"] = [7]
    (models / "breast_cancer" / "golden.json").write_text(json.dumps(cases))
    edit_spec(models / "breast_cancer", lambda spec: spec["build"]["params"].update(C=0.5))

    result = cli(stack, "breast_cancer", "--reason", "fails its smoke test", "--wait")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed          smoke" in result.stdout
    assert "release rolled-back" in result.stdout


@pytest.mark.parametrize(("args", "extra_env", "message"), [
    pytest.param(["no_such_model"], {}, "no DAG 'release__no_such_model'", id="unknown-model"),
    pytest.param(["wine", "--conf", '{"force": "yes"}'], {}, "refused the run", id="bad-conf"),
    pytest.param(["wine", "--conf", "not json"], {}, "--conf is not JSON", id="conf-not-json"),
    pytest.param(["wine"], {"AIRFLOW_API_PASSWORD": "wrong"}, "login to", id="bad-password"),
    pytest.param(["wine", "--api-url", "http://127.0.0.1:9"], {}, "cannot reach the Airflow API", id="unreachable"),
])
def test_exit_3_on_usage_or_connection_errors(stack, args: list[str], extra_env: dict, message: str) -> None:
    result = cli(stack, *args, extra_env=extra_env, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr


def test_one_model_at_a_time_but_models_in_parallel(stack) -> None:
    running, _ = stack
    token = httpx.post(f"{running.url}/auth/token", json={"username": "admin",
                       "password": running.env["AIRFLOW_API_PASSWORD"]}).json()["access_token"]
    client = httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    # Dry runs (build to gate, then the plan): what is serialized is the run, whatever it deploys, and a dry
    # run takes half a release's tasks. --force: a model already production ends as no-change at once.
    for _ in range(2):
        assert cli(stack, "wine", "--reason", "twice", "--dry-run", "--force").returncode == 0
    assert cli(stack, "breast_cancer", "--reason", "in parallel", "--dry-run", "--force").returncode == 0
    seen_wine_both_running = seen_models_together = False
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        # read as the CLI reads: a 5xx of the api-server on a busy SQLite is retried, not taken for an answer
        states = {dag: [r["state"] for r in _call(client, "GET", f"/api/v2/dags/{dag}/dagRuns",
                                                  params={"order_by": "-run_after", "limit": 2}).json()["dag_runs"]]
                  for dag in ("release__wine", "release__breast_cancer")}
        seen_wine_both_running |= states["release__wine"].count("running") > 1
        seen_models_together |= "running" in states["release__wine"] and "running" in states["release__breast_cancer"]
        if all(s in ("success", "failed") for runs in states.values() for s in runs):
            break
        time.sleep(1)
    assert not seen_wine_both_running, "two runs of one model ran at once"
    assert seen_models_together, "two models never ran at the same time"


def test_make_up_connection_reads_the_rest_api_as_admin(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/up.sh exports devstack.api_connection(): it must log in to the real api-server."""
    from datetime import UTC, datetime, timedelta

    from model_delivery.devstack import api_connection
    from model_delivery.metrics import read_airflow_history

    running, _ = stack
    monkeypatch.setenv("AIRFLOW__API__PORT", running.url.rsplit(":", 1)[1])
    connection = api_connection(running.home / "simple_auth_manager_passwords.json.generated")
    assert connection["password"] == running.env["AIRFLOW_API_PASSWORD"]  # the one standalone generated
    monkeypatch.setenv("AIRFLOW_CONN_MD_UP_API", json.dumps(connection))

    history = read_airflow_history(datetime.now(UTC) - timedelta(days=1), conn_id="md_up_api")

    assert history["available"] is True, history.get("note")
    assert isinstance(history["dag_runs"], list)


def test_dry_run_exits_0_and_reports_the_plan(stack) -> None:
    # --force: wine may be production already with these inputs, and a dry run of that ends as no-change.
    result = cli(stack, "wine", "--reason", "what would change?", "--dry-run", "--force", "--wait", "--timeout", "600")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "; release dry-run" in result.stdout
    assert "dry run on the local target" in result.stdout and "nothing was changed" in result.stdout
