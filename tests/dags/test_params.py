"""The release conf is validated by JSON schema: a bad conf is refused before a run exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from model_delivery.release import CONF_KEYS
from tests.conftest import run_airflow
from tests.helpers.models import copy_models
from tests.helpers.release import get_dag

if TYPE_CHECKING:
    from pathlib import Path

BAD_CONFS = [
    pytest.param({"force": "yes"}, "force", id="force-not-boolean"),
    pytest.param({"reason": 42}, "reason", id="reason-not-string"),
    pytest.param({"reason": "x" * 501}, "reason", id="reason-too-long"),
]


@pytest.fixture(scope="module")
def models_env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path) -> dict[str, str]:
    models = copy_models(tmp_path_factory.mktemp("params") / "models", ("breast_cancer",))
    env = {"MODEL_DELIVERY_MODELS_DIR": str(models)}
    reserialized = run_airflow("dags", "reserialize", env=env, check=False)
    assert reserialized.returncode == 0, reserialized.stderr[-2000:]
    return env


def test_params_are_exactly_the_conf_keys_the_release_accepts() -> None:
    from model_delivery.dag_factory import release_params

    assert tuple(release_params()) == CONF_KEYS


@pytest.mark.parametrize(("conf", "field"), BAD_CONFS)
def test_dag_test_refuses_bad_conf(airflow_db: Path, conf: dict, field: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = get_dag("release__breast_cancer")
    with pytest.raises(ParamValidationError, match=field):
        dag.test(run_conf=conf)


@pytest.mark.parametrize(("conf", "field"), BAD_CONFS)
def test_cli_trigger_refuses_bad_conf_and_creates_no_run(models_env: dict[str, str], conf: dict, field: str) -> None:
    import json

    run_id = f"bad-conf-{field}-{len(json.dumps(conf))}"
    result = run_airflow("dags", "trigger", "release__breast_cancer", "--run-id", run_id, "--conf", json.dumps(conf),
                         env=models_env, check=False)
    assert result.returncode != 0
    assert field in result.stdout + result.stderr
    runs = run_airflow("dags", "list-runs", "release__breast_cancer", "-o", "plain", env=models_env)
    assert run_id not in runs.stdout


def test_cli_trigger_accepts_good_conf(models_env: dict[str, str]) -> None:
    result = run_airflow("dags", "trigger", "release__breast_cancer", "--run-id", "good-conf",
                         "--conf", '{"reason": "from CI", "force": false}', env=models_env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = run_airflow("dags", "list-runs", "release__breast_cancer", "-o", "plain", env=models_env)
    assert "good-conf" in runs.stdout
