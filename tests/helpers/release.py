"""Run release DAGs for real with ``dag.test()`` in an isolated model-delivery home."""

from __future__ import annotations

import contextlib
import json
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tests.helpers.models import copy_models

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
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
    from model_delivery.settings import get_settings

    store = get_settings().open_store()  # a file root, or an oci:// one (records under the records root)
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


def check_outcome(dag_run: Any, outcome: str) -> dict[str, Any] | None:
    """Check the last two tasks of a finished release or rollback whose record says ``outcome``: ``record`` is
    green whenever it recorded; ``outcome`` is green when the release did what was asked, else red, having pushed
    its error (``release <outcome>: <reasons>``) first. Return what ``outcome`` pushed (None when green)."""
    from model_delivery.records import SUCCESS_OUTCOMES

    states = task_states(dag_run)
    assert states["record"] == "success", states
    pushed = xcom_values(dag_run).get("outcome.return_value")
    if outcome in SUCCESS_OUTCOMES:
        assert states["outcome"] == "success" and dag_run.state == "success", states
        return None
    assert states["outcome"] == "failed" and dag_run.state == "failed", states
    assert pushed is not None and pushed["outcome"] == outcome, pushed
    assert pushed["error"] == f"release {outcome}: " + "; ".join(pushed["reasons"]), pushed
    return pushed


def rolled_back_record(dag_run: Any, failed: str, not_run: str) -> dict[str, Any]:
    """Check that ``failed`` failed, ``not_run`` never ran and the run rolled back by itself (``record`` green,
    ``outcome`` red with the reasons); return the record."""
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states[failed] == "failed" and states["rollback"] == "success", states
    assert states[not_run] == "upstream_failed", states
    record = load_record(dag_run.dag_id.removeprefix("release__"), dag_run.run_id)
    assert record["outcome"] == "rolled-back", record.get("reasons")
    pushed = check_outcome(dag_run, "rolled-back")
    assert pushed is not None and pushed["reasons"] == record["reasons"] and failed in pushed["error"]
    return record


KILLED_RELEASE = """
import json, sys
from tests.helpers.release import run_release
run_release(sys.argv[1], json.loads(sys.argv[2]))
"""


def kill_release_when(model: str, conf: dict[str, Any], log: Path, killed_run: Callable[[], str | None],
                      timeout: float = 900) -> str:
    """Run ``release__<model>`` with ``dag.test()`` in a process of its own (its output in ``log``); once
    ``killed_run()`` names a run, SIGKILL the process and its group, as a lost worker, and return that run.

    What the release started in sessions of their own (``ansible-playbook``, model servers) runs on.
    """
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    project = Path(__file__).resolve().parents[2]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_RELEASE, model, json.dumps(conf)], cwd=project,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": f"{project}:{project / 'plugins'}:"
                                                                 f"{project / 'include' / 'serving'}"})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            run_id = killed_run()
            if run_id:
                return run_id
            time.sleep(0.2)
        raise AssertionError(f"the release never reached the kill point in {timeout:g} s:\n{log.read_text()[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def mark_failed(run_id: str) -> None:
    """What "mark failed" in the UI does to a DagRun that no longer runs."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagRun).filter(DagRun.run_id == run_id).one().state = "failed"
