"""A whole Airflow on this machine: ``airflow standalone`` (api-server, scheduler, dag-processor,
triggerer, LocalExecutor) in its own home and SQLite DB, on free ports of 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import PROJECT
from tests.helpers.models import free_port


@dataclass
class Stack:
    url: str
    env: dict[str, str]  # what a client needs: AIRFLOW_API_URL, AIRFLOW_API_USERNAME, AIRFLOW_API_PASSWORD
    home: Path


@contextmanager
def standalone(base: Path, models_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    port = free_port()
    home = base / "airflow"
    home.mkdir(parents=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{base / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "MODEL_DELIVERY_HOME": str(base / "md"),
        "MODEL_DELIVERY_MODELS_DIR": str(models_dir),
        **(extra_env or {}),
    }
    url = f"http://127.0.0.1:{port}"
    log_path = base / "standalone.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([f"{bin_dir}/airflow", "standalone"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).json()["scheduler"]["status"] == "healthy":
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"airflow standalone not healthy in 180 s:\n{log_path.read_text()[-3000:]}")
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        yield Stack(url, {"AIRFLOW_API_URL": url, "AIRFLOW_API_USERNAME": "admin", "AIRFLOW_API_PASSWORD": password},
                    home)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
