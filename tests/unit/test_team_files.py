"""Files that cannot run here (no Docker engine, no GitHub or GitLab) are validated against their schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT

CHECK = str(Path(sys.executable).parent / "check-jsonschema")


@pytest.mark.parametrize(("schema", "path"), [
    pytest.param("vendor.compose-spec", "docker-compose.yaml", id="compose"),
    pytest.param("vendor.github-workflows", "docs/ci/github-actions.yml", id="github-actions"),
    pytest.param("vendor.gitlab-ci", "docs/ci/gitlab-ci.yml", id="gitlab-ci"),
])
def test_file_matches_its_official_schema(schema: str, path: str) -> None:
    result = subprocess.run([CHECK, "--builtin-schema", schema, str(PROJECT / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump({"services": {"x": {"image": "a", "restart": ["not", "a", "string"]}}}))
    result = subprocess.run([CHECK, "--builtin-schema", "vendor.compose-spec", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


def test_compose_has_the_team_topology_with_healthchecks_and_shared_secrets() -> None:
    compose = yaml.safe_load((PROJECT / "docker-compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "mlflow", "api-server", "scheduler", "dag-processor", "triggerer", "worker"):
        assert "healthcheck" in services[name], name
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "worker"):
        service = services[name]
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert service["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] == "${AIRFLOW_JWT_SECRET}"
        assert service["environment"]["AIRFLOW__CORE__FERNET_KEY"] == "${AIRFLOW_FERNET_KEY}"
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts
    assert (PROJECT / ".env.example").read_text().count("=\n") >= 4  # secrets are placeholders, never values


def test_dockerfile_builds_on_the_pinned_airflow_image() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert dockerfile.splitlines()[2] == "FROM apache/airflow:3.3.2-python3.11"
    assert "-r /opt/model-delivery/requirements.txt -c /opt/model-delivery/constraints.txt" in dockerfile
