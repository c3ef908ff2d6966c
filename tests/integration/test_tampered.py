"""A tampered artifact never reaches a server: refused by the store, the deploy and the server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from model_delivery import release
from model_delivery.exceptions import TamperedArtifact
from tests.helpers.release import check_outcome, load_record, release_env, run_release, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    with release_env(tmp_path_factory.mktemp("tamper"), (MODEL,)) as models_dir:
        yield models_dir


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _stored_file(digest: str, name: str) -> Path:
    """Where the store keeps a file of an artifact (its blob), asked of the store."""
    from model_delivery.settings import get_settings

    store = get_settings().open_store()
    entry = next(e for e in store.read_manifest(MODEL, digest)["files"] if e["path"] == name)
    return Path(store.locate(MODEL, digest, entry).path)


def _front(models_dir: Path) -> str:
    port = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())["deploy"]["local"]["port"]
    return f"http://127.0.0.1:{port}"


def test_release_refuses_a_stored_artifact_that_was_changed(env: Path) -> None:
    first = run_release(MODEL, {"reason": "good release"})
    assert first.state == "success"
    good = load_record(MODEL, first.run_id)
    _flip_byte(_stored_file(good["artifact"]["digest"], "model.joblib"))

    second = run_release(MODEL, {"reason": "same code, damaged store"})

    assert second.state == "failed"
    states = task_states(second)
    assert states["build"] == "failed"
    assert states["deploy_staging"] == "upstream_failed"
    record = load_record(MODEL, second.run_id)
    assert record["outcome"] == "failed"
    check_outcome(second, "failed")
    assert record["stages"]["build"]["error_type"] == "TamperedArtifact"
    assert "model.joblib" in record["stages"]["build"]["error"]
    assert "Fix:" in record["stages"]["build"]["error"]
    # Production still answers from the good copy it verified at start.
    response = httpx.get(f"{_front(env)}/v2/health/ready", timeout=5)
    assert response.headers["x-model-digest"] == good["artifact"]["digest"]


def test_deploy_refuses_a_tampered_artifact_and_starts_nothing(env: Path, tmp_path: Path) -> None:
    rc = release.ReleaseContext(model=MODEL, run_id="tamper-deploy", dag_id="test", conf={"reason": "t"})
    # A new artifact (other params), stored intact, then damaged before deploy.
    from tests.helpers.models import edit_spec

    edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(C=0.25))
    candidate = release.build(rc)
    _flip_byte(_stored_file(candidate["digest"], "model.joblib"))
    before = rc.target.status()

    with pytest.raises(TamperedArtifact, match="model.joblib"):
        release.deploy_staging(rc, candidate)

    after = rc.target.status()
    assert after["candidates"] == before["candidates"]
    assert after["active"] == before["active"]
