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
        assert ledger.state("breast_cancer", "local")["active"]["version"] == "1"
        assert {e["action"] for e in ledger.journal("breast_cancer")} >= {"start", "switch", "aliases"}
        assert ledger.holder("breast_cancer") is None  # given back by retire
        assert not (base / "md" / "ledger.db").exists()


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
