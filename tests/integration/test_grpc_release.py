"""A release with ``serving.grpc: true`` and ``smoke.protocol: grpc`` on the local target, for real with
``dag.test()``: the smoke test and verify send the golden cases over gRPC (to the candidate's gRPC port, then
through the front's), the record says so, and a wrong golden answer over gRPC rolls the release back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from model_delivery.smoke import grpc_served_digest
from tests.helpers.models import edit_spec, free_port
from tests.helpers.release import load_record, release_env, run_release, task_states

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    with release_env(tmp_path_factory.mktemp("grpc-release"), (MODEL,)) as models_dir:
        grpc_port = free_port()
        edit_spec(models_dir / MODEL, lambda spec: (
            spec.update(serving={"grpc": True}), spec["smoke"].update(protocol="grpc", repeats=3),
            spec["deploy"]["local"].update(grpc_port=grpc_port)))
        yield models_dir


def _grpc_front(models_dir: Path) -> str:
    import yaml

    spec = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())
    return f"127.0.0.1:{spec['deploy']['local']['grpc_port']}"


def test_a_release_smoke_tests_and_verifies_over_grpc(env: Path) -> None:
    dag_run = run_release(MODEL, {"reason": "first release over gRPC"})

    record = load_record(MODEL, dag_run.run_id)
    assert dag_run.state == "success", task_states(dag_run)
    assert record["outcome"] == "released"
    digest = record["artifact"]["digest"]
    staged = record["stages"]["deploy_staging"]["result"]
    for stage, address in (("smoke", staged["grpc_url"]), ("verify", _grpc_front(env))):
        result = record["stages"][stage]["result"]
        assert result["protocol"] == "grpc" and result["url"] == f"grpc://{address}", result
        assert result["passed"] is True and result["requests"] == 3 * len(result["cases"])
    assert record["stages"]["deploy_production"]["result"]["grpc_url"] == _grpc_front(env)
    assert grpc_served_digest(_grpc_front(env)) == digest


def test_a_wrong_golden_answer_over_grpc_rolls_the_release_back(env: Path) -> None:
    before = grpc_served_digest(_grpc_front(env))
    golden = json.loads((env / MODEL / "golden.json").read_text())
    golden[0]["expect"]["equals"] = [1 - v for v in golden[0]["expect"]["equals"]]
    (env / MODEL / "golden.json").write_text(json.dumps(golden))
    edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(C=0.5))  # a new version to release

    dag_run = run_release(MODEL, {"reason": "a wrong golden answer"})

    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rolled-back", record["outcome"]
    smoke = record["stages"]["smoke"]
    assert smoke["status"] == "failed" and "!= expected" in json.dumps(smoke), smoke
    assert task_states(dag_run)["deploy_production"] in ("upstream_failed", "skipped")
    assert grpc_served_digest(_grpc_front(env)) == before  # production untouched
