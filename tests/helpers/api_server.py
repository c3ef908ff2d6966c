"""A real Airflow api-server process on 127.0.0.1, sharing the test session's metadata DB."""

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

from tests.helpers.models import free_port


@dataclass
class ApiServer:
    """Where the api-server listens and a bearer token for its admin user."""

    url: str
    token: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


def _admin_password(airflow_home: Path) -> str:
    passwords = json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text())
    return passwords["admin"]


@contextmanager
def api_server(log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """Start ``airflow api-server``, wait until it is healthy, log in as admin, stop it at exit."""
    port = free_port()
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin", **(extra_env or {})}
    airflow = str(Path(sys.executable).parent / "airflow")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"api-server not healthy in 120 s:\n{log_path.read_text()[-3000:]}")
        password = _admin_password(Path(env["AIRFLOW_HOME"]))
        response = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        assert response.status_code in (200, 201), response.text
        yield ApiServer(url, response.json()["access_token"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
