"""The team topology of docker-compose.yaml, run natively: PostgreSQL, Redis, and Airflow's api-server,
scheduler, dag-processor, triggerer and a Celery worker as processes sharing one JWT secret and Fernet
key. A release is triggered through the REST API with the CLI and must succeed on the worker."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROJECT
from tests.helpers.models import copy_models, edit_spec, free_port
from tests.helpers.services import postgres, redis

pytestmark = pytest.mark.integration

SERVICES = {
    "api-server": ["api-server", "--host", "127.0.0.1"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "worker": ["celery", "worker", "--concurrency", "4"],
}


def test_a_release_succeeds_on_postgres_redis_and_celery(tmp_path: Path) -> None:
    """Then a second release, and twice over a release and a rollback triggered at the same moment:
    serialized by the lease in the PostgreSQL ledger, each promotion decided against the production the
    last one left; a run that lost the race says why and deployed nothing."""
    from tests.helpers.processes import kill_matching

    try:
        _team_stack(tmp_path)
    finally:
        kill_matching(str(tmp_path / "md"))  # the model servers the worker started


def _team_stack(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    base = tmp_path
    models = copy_models(base / "models", ("breast_cancer",))
    edit_spec(models / "breast_cancer", lambda spec: spec.update(trigger_on=None, schedule=None))
    bin_dir = Path(sys.executable).parent
    api_port = free_port()
    with postgres(base / "pg", also=("model_delivery",)) as db_url, redis(base / "redis", secrets.token_hex(8)) as broker:
        ledger_url = db_url.rsplit("/", 1)[0] + "/model_delivery"  # its own database on the same server
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(base / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "MODEL_DELIVERY_HOME": str(base / "md"),
            "MODEL_DELIVERY_MODELS_DIR": str(models),
            "MODEL_DELIVERY_LEDGER_CONN_ID": "model_delivery_ledger",
            "AIRFLOW_CONN_MODEL_DELIVERY_LEDGER": ledger_url.replace("postgresql+psycopg2://", "postgresql://"),
        }
        (base / "airflow").mkdir()
        migrate = subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, capture_output=True,
                                 text=True, timeout=600)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        procs = {}
        try:
            for name, args in SERVICES.items():
                with open(base / f"{name}.log", "wb") as log:
                    procs[name] = subprocess.Popen([str(bin_dir / "airflow"), *args], env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
            url = f"http://127.0.0.1:{api_port}"
            _wait_healthy(url, procs, base)
            password = (base / "airflow" / "simple_auth_manager_passwords.json.generated").read_text()
            import json

            client_env = {**env, "AIRFLOW_API_URL": url, "AIRFLOW_API_USERNAME": "admin",
                          "AIRFLOW_API_PASSWORD": json.loads(password)["admin"]}
            result = subprocess.run([str(bin_dir / "model-delivery"), "release", "breast_cancer", "--reason",
                                     "team stack", "--unpause", "--wait", "--timeout", "600"],
                                    env=client_env, capture_output=True, text=True, timeout=700)
            assert result.returncode == 0, result.stdout + result.stderr + _tails(base, "scheduler", "worker")
            at_once = _release_and_rollback_at_once(url, json.loads(password)["admin"], models, client_env, bin_dir)
        finally:
            for proc in procs.values():
                os.killpg(proc.pid, 15)
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
        assert result.returncode == 0, result.stdout + result.stderr + _tails(base, "scheduler", "worker", "api-server")
        assert "release released" in result.stdout
        assert "release__breast_cancer" in (base / "worker.log").read_text()  # the Celery worker ran the tasks
        # The deployment ledger is the PostgreSQL one, through the Airflow connection; no local file.
        from model_delivery.ledger import Ledger

        ledger = Ledger(ledger_url)
        assert {e["action"] for e in ledger.journal("breast_cancer")} >= {"start", "switch", "aliases"}
        assert ledger.holder("breast_cancer") is None  # given back by retire
        assert not (base / "md" / "ledger.db").exists()
        _check_serialized(ledger, at_once, base)
        assert httpx.post(_front(models), json=_golden(models), timeout=10).headers["x-model-digest"] == (
            ledger.state("breast_cancer", "local")["active"]["digest"])


ROUNDS = (0.3, 0.6)
"""The C of each round's release: a new version each time, released as a rollback is triggered."""


def _release_and_rollback_at_once(url: str, password: str, models: Path, client_env: dict[str, str],
                                  bin_dir: Path) -> dict[str, tuple[str, str]]:
    """Release a second version, then, several times over, trigger a release and a rollback in the same moment."""
    from model_delivery import ci

    edit_spec(models / "breast_cancer", lambda spec: spec["build"]["params"].update(C=0.5))
    second = subprocess.run([str(bin_dir / "model-delivery"), "release", "breast_cancer", "--reason", "v2",
                             "--wait", "--timeout", "600"], env=client_env, capture_output=True, text=True, timeout=700)
    assert second.returncode == 0, second.stdout + second.stderr
    client = ci._client(url, None, "admin", password)
    runs = {}
    for n, c in enumerate(ROUNDS, start=1):
        edit_spec(models / "breast_cancer", lambda spec, c=c: spec["build"]["params"].update(C=c))
        now = {f"release-{n}": ("release__breast_cancer", ci.trigger(client, "release__breast_cancer",
                                                                     {"reason": f"at once, round {n}"}, unpause=False)),
               f"rollback-{n}": ("model_rollback", ci.trigger(client, "model_rollback",
                                                             {"model": "breast_cancer", "reason": f"at once, round {n}"},
                                                             unpause=True))}
        for dag_id, run_id in now.values():
            ci.wait(client, dag_id, run_id, timeout=600, out=open(os.devnull, "w"))  # noqa: SIM115
        runs.update(now)
    # The scheduler's listener (model_delivery.run_notes) noted each run's outcome, in its own transaction.
    notes = {name: client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json().get("note")
             for name, (dag_id, run_id) in runs.items()}
    for name, (_dag_id, run_id) in runs.items():
        outcome = _record(models.parent, run_id).get("outcome")
        assert notes[name] and notes[name].startswith(f"{outcome}"), (name, outcome, notes[name])
        assert "asked by admin" in notes[name], notes[name]
    return runs


def _front(models: Path) -> str:
    import yaml

    port = yaml.safe_load((models / "breast_cancer" / "model.yaml").read_text())["deploy"]["local"]["port"]
    return f"http://127.0.0.1:{port}/v2/models/breast_cancer/infer"


def _golden(models: Path) -> dict[str, Any]:
    import json

    return {"inputs": json.loads((models / "breast_cancer" / "golden.json").read_text())[0]["inputs"]}


def _record(base: Path, run_id: str) -> dict[str, Any]:
    from model_delivery.records import ReleaseRecord
    from model_delivery.store import ArtifactStore

    return ReleaseRecord(ArtifactStore(f"file://{base / 'md' / 'artifacts'}"), "breast_cancer", run_id).load()


def _check_serialized(ledger: Any, runs: dict[str, tuple[str, str]], base: Path) -> None:
    """Every promotion was decided against the production the one before it left, one run at a time."""
    promotions = [e for e in ledger.journal("breast_cancer", target="registry") if e["action"] == "aliases"]
    assert all(e["status"] == "done" for e in promotions), promotions
    for earlier, later in zip(promotions, promotions[1:], strict=False):
        assert later["compensation"]["production"] == earlier["detail"]["to"], (earlier, later)
    assert not [e for e in ledger.journal("breast_cancer", target="lease") if e["action"] == "takeover"]
    ours = {e["run_id"] for e in promotions}
    for name, (_dag_id, run_id) in runs.items():
        stages = _record(base, run_id)["stages"]
        if run_id not in ours:  # it lost the race: stopped at deploy_staging, with why, deploying nothing
            assert "another run changed production meanwhile" in stages["deploy_staging"]["error"], (name, stages)
    state = ledger.state("breast_cancer", "local")
    assert state["active"]["version"] == promotions[-1]["detail"]["to"]


def _wait_healthy(url: str, procs: dict, base: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited: " + (base / f"{name}.log").read_text()[-3000:]
        try:
            health = httpx.get(f"{url}/api/v2/monitor/health", timeout=2).json()
            if health["scheduler"]["status"] == "healthy" and health["dag_processor"]["status"] == "healthy":
                return
        except (httpx.HTTPError, KeyError, ValueError, TypeError):
            pass
        time.sleep(1)
    raise AssertionError("the stack did not become healthy in 240 s")


def _tails(base: Path, *names: str) -> str:
    """The end of each service's log, for a failure's message."""
    return "".join(f"\n--- {name}.log ---\n" + (base / f"{name}.log").read_text(errors="replace")[-4000:]
                   for name in names)
