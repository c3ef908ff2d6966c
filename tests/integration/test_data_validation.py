"""Bad data stops the release before anything is deployed, says why, and production keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.models import edit_spec
from tests.helpers.release import check_outcome, load_record, release_env, run_release, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    with release_env(tmp_path_factory.mktemp("data"), (MODEL,)) as models_dir:
        first = run_release(MODEL, {"reason": "good data"})
        assert first.state == "success"
        shutil.copy(HERE.parent / "helpers" / "corrupt_train.py", models_dir / MODEL / "corrupt_train.py")
        yield models_dir, load_record(MODEL, first.run_id)["artifact"]["digest"]


def _front(models_dir: Path) -> str:
    port = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())["deploy"]["local"]["port"]
    return f"http://127.0.0.1:{port}"


BAD_DATA = [
    pytest.param("nan", "train", ["expect_column_values_to_not_be_null on column 'mean radius': 5 of", "e.g. [None"], id="nans"),
    pytest.param("missing_column", "eval", ["column 'mean texture' is missing"], id="missing-column"),
    pytest.param("extra_column", "train", ["column 'surprise' is extra"], id="extra-column"),
    pytest.param("wrong_dtype", "eval", ["column 'mean area' changed type: string"], id="wrong-dtype"),
    pytest.param("out_of_range", "train", ["expect_column_values_to_be_between on column 'mean smoothness': 3 of",
                                           "50.0"], id="out-of-range"),
    pytest.param("empty", "eval", ["eval.csv: the file is empty"], id="empty-file"),
    pytest.param("not_table", "train", ["train.csv: not a readable CSV table"], id="not-a-table"),
    pytest.param("drift", "train", ["feature 'mean radius' drifted (ks = "], id="drift"),
]


@pytest.mark.parametrize(("how", "dataset", "expected"), BAD_DATA)
def test_bad_data_stops_the_release_before_deploy(env, how: str, dataset: str, expected: list[str]) -> None:
    models_dir, good_digest = env
    edit_spec(models_dir / MODEL, lambda spec: spec["build"].update(
        entrypoint="corrupt_train.py", params={**spec["build"]["params"], "corrupt": how, "dataset": dataset}))

    dag_run = run_release(MODEL, {"reason": f"bad data: {how}"})

    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["build"] == "success"
    assert states["validate_data"] == "failed"
    assert states["deploy_staging"] == "upstream_failed"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "failed"
    check_outcome(dag_run, "failed")
    stage = record["stages"]["validate_data"]
    reasons = " ".join(record["reasons"])
    for text in expected:
        assert text in reasons, f"{text!r} not in {reasons}"
    if stage["result"]:  # a readable table: the full GX result sits beside the record
        gx_path = Path(stage["result"]["gx_results"][dataset].removeprefix("file://"))
        assert json.loads(gx_path.read_text())["results"]
    report = Path(record["report"].removeprefix("file://")).read_text()
    assert expected[0] in report
    response = httpx.get(f"{_front(models_dir)}/v2/health/ready", timeout=5)
    assert response.headers["x-model-digest"] == good_digest
