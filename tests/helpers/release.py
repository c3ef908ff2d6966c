"""Run release DAGs for real with ``dag.test()`` in an isolated model-delivery home."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tests.helpers.models import copy_models

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block; put back what was there before (or remove them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def release_env(base: Path, names: tuple[str, ...] = ("breast_cancer", "wine")) -> Iterator[Path]:
    """A fresh MODEL_DELIVERY_HOME and a copy of the model specs with free ports."""
    models = copy_models(base / "models", names)
    with environ({"MODEL_DELIVERY_HOME": str(base / "home"), "MODEL_DELIVERY_MODELS_DIR": str(models)}):
        yield base / "models"


def get_dag(dag_id: str) -> Any:
    """Parse the DAGs folder now (so the current environment's specs are used)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def run_release(model: str, conf: dict[str, Any] | None = None) -> Any:
    """Run ``release__<model>`` with ``dag.test()`` and return the finished DagRun."""
    return get_dag(f"release__{model}").test(run_conf=conf or {"reason": "test"})


def load_record(model: str, run_id: str) -> dict[str, Any]:
    from model_delivery.artifacts import ArtifactStore
    from model_delivery.settings import get_settings

    store = ArtifactStore(get_settings().artifact_root)
    return json.loads((store.release_dir(model, run_id) / "release.json").read_text())


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {ti.task_id: str(ti.state) for ti in tis}


def xcom_values(dag_run: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {f"{row.task_id}.{row.key}": row.value for row in rows}


def rolled_back_record(dag_run: Any, failed: str, not_run: str) -> dict[str, Any]:
    """Check that ``failed`` failed, ``not_run`` never ran and the run rolled back by itself; return the record."""
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states[failed] == "failed" and states["rollback"] == "success", states
    assert states[not_run] == "upstream_failed", states
    record = load_record(dag_run.dag_id.removeprefix("release__"), dag_run.run_id)
    assert record["outcome"] == "rolled-back", record.get("reasons")
    return record
