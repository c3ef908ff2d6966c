"""DAG integrity: every DAG loads, is documented and owned, and parsing stays cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.conftest import PROJECT, run_airflow
from tests.helpers.models import copy_models, edit_spec

if TYPE_CHECKING:
    from pathlib import Path

HEAVY = ("mlflow", "sklearn", "pandas", "great_expectations", "kubernetes", "scipy", "fastapi", "uvicorn", "joblib")


def _json_lines(stdout: str) -> list[dict]:
    """The JSON list the airflow CLI printed among its log lines."""
    found = [line for line in stdout.splitlines() if line.startswith("[{") or line == "[]"]
    assert found, stdout[-2000:]
    return json.loads(found[-1])


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"release__breast_cancer", "release__wine"} <= set(dagbag.dags)


@pytest.mark.parametrize("dag_id", ["release__breast_cancer", "release__wine"])
def test_release_dag_is_owned_tagged_retried_documented(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.max_active_runs == 1
    assert "model-delivery" in dag.tags and "release" in dag.tags
    assert dag.doc_md and "airflow dags trigger" in dag.doc_md
    assert set(dag.params.keys()) == {"reason", "force", "dry_run"}
    for task in dag.tasks:
        assert task.owner == "ml-platform", task.task_id
        assert task.retries >= 1, task.task_id
        assert task.doc_md or type(task).__doc__, task.task_id
        assert task.task_id == "detect_change" or type(task).__module__.startswith("model_delivery."), task.task_id
    assert [t.task_id for t in dag.topological_sort()][:5] == ["build", "detect_change", "validate_data", "evaluate", "gate"]


def test_parsing_the_dags_imports_no_heavy_library() -> None:
    code = (
        "import sys, json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(PROJECT / 'dags')!r})\n"
        "assert bag.dags and not bag.import_errors, bag.import_errors\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_broken_spec_is_an_import_error_for_that_model_only(tmp_path: Path, airflow_db: Path) -> None:
    models = copy_models(tmp_path / "models")
    edit_spec(models / "wine", lambda spec: spec["gate"]["thresholds"]["accuracy"].update(min="high"))
    env = {"MODEL_DELIVERY_MODELS_DIR": str(models)}

    listed = run_airflow("dags", "list-import-errors", "--local", "-o", "json", env=env, check=False)
    assert listed.returncode == 1, listed.stderr[-2000:]  # the CLI exits 1 when there are import errors
    errors = _json_lines(listed.stdout)
    assert len(errors) == 1
    message = errors[0]["error"]
    assert "model 'wine'" in message
    assert str(models / "wine" / "model.yaml") in message
    assert "field 'gate.thresholds.accuracy.min'" in message
    assert "Fix: use a number" in message
    assert "breast_cancer" not in message

    dags = run_airflow("dags", "list", "--local", "-o", "json", env=env, check=False)
    dag_ids = {d["dag_id"] for d in _json_lines(dags.stdout)}
    assert "release__breast_cancer" in dag_ids
    assert "release__wine" not in dag_ids


def test_every_dag_is_owned_tagged_retried_documented(dagbag) -> None:
    assert "data_refresh__breast_cancer" in dagbag.dags
    for dag in dagbag.dags.values():
        assert dag.doc_md, dag.dag_id
        assert "model-delivery" in dag.tags, dag.dag_id
        for task in dag.tasks:
            assert task.owner not in ("airflow", None), (dag.dag_id, task.task_id)
            assert task.retries >= 1, (dag.dag_id, task.task_id)
