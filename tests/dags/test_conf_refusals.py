"""Conf rules that JSON schema cannot state are refused before a run exists, or by the first task in its first
seconds, never retried.

Airflow validates each param by its schema before a run exists (tests/dags/test_params.py). Airflow stores a conf
that is not a JSON object (``[]``) as ``{}``, so ``dag.test`` refuses it before creating the run. A key the release
does not know and ``force`` without a ``reason`` pass Airflow's validation, so the build task refuses them before
it builds anything. The model's entrypoint here fails at once if it is ever run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.exceptions import InvalidConf
from tests.helpers.models import copy_models
from tests.helpers.release import environ, get_dag, load_record, task_states

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MODEL = "wine"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("conf-refusals")
    models = copy_models(base / "models", (MODEL,))
    (models / MODEL / "train.py").write_text("import sys\nsys.exit('the build must not run')\n")
    with environ({"MODEL_DELIVERY_HOME": str(base / "home"), "MODEL_DELIVERY_MODELS_DIR": str(models)}):
        yield models


@pytest.mark.parametrize("conf", [
    pytest.param([], id="an-empty-list"),  # Airflow stored it as {} and released to production
    pytest.param([["force", True]], id="a-list"),  # Airflow failed with AttributeError: 'list' ... 'items'
    pytest.param(0, id="zero"),
])
def test_dag_test_refuses_a_conf_that_is_not_an_object_before_a_run_exists(env: Path, conf: Any) -> None:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    dag = get_dag(f"release__{MODEL}")
    with create_session() as session:
        before = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id).count()
    with pytest.raises(InvalidConf, match=r"^conf must be a JSON object \(got .*\)\. Fix: pass an object"):
        dag.test(run_conf=conf)
    with create_session() as session:
        assert session.query(DagRun).filter(DagRun.dag_id == dag.dag_id).count() == before


@pytest.mark.parametrize("reason", [pytest.param("  ", id="blank"), pytest.param(None, id="null")])
def test_the_build_task_refuses_force_without_a_reason_at_once_and_without_retries(env: Path, reason: Any) -> None:
    build_only = get_dag(f"release__{MODEL}").partial_subset("build", include_downstream=False)  # no deploy side
    dag_run = build_only.test(run_conf={"force": True, "reason": reason})  # the params accept a null reason

    assert dag_run.state == "failed"
    assert task_states(dag_run)["build"] == "failed"
    stage = load_record(MODEL, dag_run.run_id)["stages"]["build"]
    assert stage["error_type"] == "InvalidConf", stage
    assert "conf 'force' is true but 'reason' is empty" in stage["error"] and "Fix:" in stage["error"]
    assert stage["try"] == 1 and stage["seconds"] < 5  # refused in its first seconds, and not retried
