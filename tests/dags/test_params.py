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


# Airflow 3.3's React trigger form (airflow-core/src/airflow/ui/src/components/FlexibleForm/isParamRequired.tsx,
# the same in the 3.3.2 wheel's ui/dist): a field is required (a red `*`; empty, an error badge and Trigger greyed
# out) when its schema has a type, unless that type is a list that includes "null". FlexibleForm's section check
# counts a required field whose value is null, undefined or "" as an error as soon as the form opens.
def form_requires(schema: dict) -> bool:
    kind = schema.get("type")
    return bool(kind) and (not isinstance(kind, list) or "null" not in kind)


def form_errors_on_open(params: dict) -> list[str]:
    return [name for name, param in params.items() if form_requires(param.schema) and param.value in (None, "")]


def test_the_form_rule_as_mirrored_here_flags_the_old_params() -> None:
    """The mirror of the UI rule can fail: the params as they were had a required reason, in error on open."""
    from airflow.sdk import Param

    old = {"reason": Param("", type="string", maxLength=500), "force": Param(False, type="boolean")}
    assert form_requires(old["force"].schema) and form_errors_on_open(old) == ["reason"]


@pytest.mark.parametrize("dag_id", ["release__breast_cancer", "model_rollback"])
def test_the_trigger_form_opens_without_an_error_and_only_a_rollback_model_and_version_are_required(
        airflow_db: Path, dag_id: str) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = get_dag(dag_id)
    params = DagSerialization.from_dict(DagSerialization.to_dict(dag)).params  # what the api-server serves the UI
    required = {name for name, param in params.items() if form_requires(param.schema)}
    assert required == ({"model", "version"} if dag_id == "model_rollback" else set())
    assert form_errors_on_open(params) == []
    assert "reason" in params and not form_requires(params.get_param("reason").schema)


def test_booleans_are_optional_booleans_and_reason_says_when_it_is_needed() -> None:
    from airflow.sdk.exceptions import ParamValidationError

    from model_delivery.dag_factory import release_params

    params = release_params()
    for name in ("force", "dry_run"):
        assert sorted(params[name].schema["type"]) == ["boolean", "null"], name
        assert params[name].resolve(None) is None and params[name].resolve(True) is True
        with pytest.raises(ParamValidationError):
            params[name].resolve("yes")
    reason = params["reason"]
    assert "required when Force is on" in reason.description
    assert reason.value is None and reason.resolve(None) is None and reason.resolve("why") == "why"
    with pytest.raises(ParamValidationError):
        reason.resolve("x" * 501)


def test_a_conf_without_a_reason_or_with_nulls_is_valid_for_airflow() -> None:
    from airflow.sdk.definitions.param import ParamsDict

    from model_delivery.dag_factory import release_params

    for conf in ({}, {"reason": None}, {"reason": None, "force": None, "dry_run": None}, {"force": True}):
        params = ParamsDict(release_params())
        params.update(conf)
        params.validate()  # the force-needs-a-reason rule is check_conf's (the build task's first step)


@pytest.mark.parametrize(("conf", "refused"), [
    pytest.param({"reason": None}, False, id="null-reason"),
    pytest.param({"reason": None, "force": None, "dry_run": None}, False, id="all-null"),
    pytest.param({"force": False, "reason": ""}, False, id="no-force-no-reason"),
    pytest.param({"force": True, "reason": "hotfix"}, False, id="force-with-reason"),
    pytest.param({"force": True, "reason": None}, True, id="force-null-reason"),
    pytest.param({"force": True}, True, id="force-no-reason"),
    pytest.param({"force": True, "reason": "   "}, True, id="force-blank-reason"),
])
def test_force_needs_a_reason_and_null_is_empty(conf: dict, refused: bool) -> None:
    from model_delivery.exceptions import InvalidConf
    from model_delivery.release import check_conf

    if refused:
        with pytest.raises(InvalidConf, match="conf 'force' is true but 'reason' is empty"):
            check_conf(conf)
    else:
        check_conf(conf)


def test_null_conf_values_are_recorded_as_their_defaults() -> None:
    from model_delivery.release import recorded_conf

    assert recorded_conf({"reason": None, "force": None, "dry_run": None}) == {
        "reason": "", "force": False, "dry_run": False}
    assert recorded_conf({"reason": "why", "force": True, "dry_run": False}) == {
        "reason": "why", "force": True, "dry_run": False}
    assert recorded_conf({"model": "wine", "version": "previous", "reason": None}) == {
        "model": "wine", "version": "previous", "reason": ""}


@pytest.mark.parametrize(("conf", "force", "refused"), [
    pytest.param('{"reason": null}', False, False, id="null-reason"),
    pytest.param('{"reason": null, "force": true}', False, True, id="conf-force-null-reason"),
    pytest.param('{"reason": null}', True, True, id="flag-force-null-reason"),
])
def test_model_delivery_release_takes_a_null_reason_as_empty(conf: str, force: bool, refused: bool) -> None:
    from argparse import Namespace

    from model_delivery import ci

    args = Namespace(conf=conf, reason="", force=force, dry_run=False)
    if refused:
        with pytest.raises(ci.UsageError, match="refused the run before triggering it: conf 'force' is true"):
            ci.release_conf(args)
    else:
        assert ci.release_conf(args) == {"reason": None}


def test_cli_trigger_accepts_nulls_and_no_reason(models_env: dict[str, str]) -> None:
    result = run_airflow("dags", "trigger", "release__breast_cancer", "--run-id", "null-conf",
                         "--conf", '{"reason": null, "force": null, "dry_run": null}', env=models_env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = run_airflow("dags", "list-runs", "release__breast_cancer", "-o", "plain", env=models_env)
    assert "null-conf" in runs.stdout
