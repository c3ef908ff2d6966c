"""scripts/up.sh's connection to the local api-server: admin's password from the simple auth manager's file."""

from __future__ import annotations

import json
import stat
from typing import TYPE_CHECKING

import pytest

from model_delivery.devstack import api_connection, main

if TYPE_CHECKING:
    from pathlib import Path


def test_a_missing_file_gets_an_admin_password_that_airflow_will_use(tmp_path: Path) -> None:
    path = tmp_path / "home" / "simple_auth_manager_passwords.json.generated"
    connection = api_connection(path)
    stored = json.loads(path.read_text())
    assert stored == {"admin": connection["password"]} and len(connection["password"]) >= 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_connection(path)["password"] == connection["password"]  # stable


def test_existing_users_and_passwords_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "passwords.json"
    path.write_text(json.dumps({"admin": "s3cret", "viewer": "v"}))
    monkeypatch.setenv("AIRFLOW__API__PORT", "8999")
    assert api_connection(path) == {"conn_type": "http", "host": "127.0.0.1", "port": 8999, "schema": "http",
                                    "login": "admin", "password": "s3cret"}
    path.write_text(json.dumps({"viewer": "v"}))
    added = api_connection(path)["password"]
    assert json.loads(path.read_text()) == {"viewer": "v", "admin": added}


def test_a_file_that_is_not_a_mapping_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "passwords.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="Fix: remove it"):
        api_connection(path)


def test_the_command_prints_the_connection_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", raising=False)
    assert main(["api-connection"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["login"] == "admin"
    assert printed["password"] == json.loads((tmp_path / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    assert main(["nonsense"]) == 2
