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

USERS = "admin:admin,dag_test:admin,viewer:viewer"
"""The api-server's users (simple auth manager, ``name:role``): ``dag_test`` is the user ``dag.test()`` triggers as; ``viewer`` may read but not act."""


@dataclass
class ApiServer:
    """Where the api-server listens and a bearer token for each of its users."""

    url: str
    tokens: dict[str, str]

    @property
    def token(self) -> str:
        return self.tokens["admin"]

    def client(self, user: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[user]}"}, timeout=30)


def _passwords(airflow_home: Path) -> dict[str, str]:
    return json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text())


@contextmanager
def api_server(log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """Start ``airflow api-server``, wait until it is healthy, log in as each user, stop it at exit."""
    port = free_port()
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS, **(extra_env or {})}
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
        tokens = {}
        for user, password in _passwords(Path(env["AIRFLOW_HOME"])).items():
            response = httpx.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=30)
            assert response.status_code in (200, 201), response.text
            tokens[user] = response.json()["access_token"]
        yield ApiServer(url, tokens)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
