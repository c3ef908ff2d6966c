"""A task that outlives its ``execution_timeout``, for real: Airflow raises in the task, then calls
``on_kill``; the build's process group (the model's train.py, and a child it started) is stopped,
not left running beside a retry. (It was left: the exception had unwound the wait, and with it
the record of the running group, before ``on_kill`` looked.)

A one-task DAG with the real BuildModelOperator, in a folder of its own, run by ``dag.test()``;
train.py hangs.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.helpers.models import edit_spec
from tests.helpers.release import release_env, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"

PROBE_DAG = """
from datetime import timedelta
from airflow.sdk import DAG
from model_delivery.operators.build import BuildModelOperator

with DAG("md_on_kill_probe", schedule=None, catchup=False):
    BuildModelOperator(task_id="build", model="breast_cancer", execution_timeout=timedelta(seconds=15))
"""

HANGING_TRAIN = """
import json, os, subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
Path(json.loads({pids!r})).write_text(f"{{os.getpid()}} {{child.pid}}")
time.sleep(600)
"""


def test_a_build_past_its_execution_timeout_leaves_no_process(airflow_db: Path, tmp_path: Path) -> None:
    import json

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    pids_file = tmp_path / "pids"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(PROBE_DAG)
    with release_env(tmp_path, (MODEL,)) as models:
        (models / MODEL / "train.py").write_text(HANGING_TRAIN.format(pids=json.dumps(str(pids_file))))
        edit_spec(models / MODEL, lambda spec: spec["build"].update(timeout_seconds=1800))  # not the build's own
        with create_session() as session:
            DagBundlesManager().sync_bundles_to_db(session=session)
        bag = DagBag(dag_folder=str(dags))
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, "dags-folder", None)  # serialized, as the DAG processor would (dag.test needs it)
        dag_run = bag.dags["md_on_kill_probe"].test()

    assert task_states(dag_run) == {"build": "failed"}, task_states(dag_run)
    assert pids_file.exists(), "train.py never ran"
    pids = [int(p) for p in pids_file.read_text().split()]
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"the timed-out task left the build's processes running: {alive}"
