"""The gRPC settings of the model spec: ``serving.grpc``, ``smoke.protocol`` and the targets' gRPC ports, refused
at parse with the field and the fix when they do not fit together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.spec import check_port_clashes, discover_specs, load_spec
from tests.helpers.models import copy_models, edit_spec

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

LM = {"task": "language-model", "evaluation": {"metrics": ["perplexity"]},
      "gate": {"thresholds": {"perplexity": {"max": 100}}}, "serving": {"runtime": "vllm"}}


def _model(tmp_path: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    edit_spec(model_dir, change)
    return model_dir


def _grpc(spec: dict[str, Any], port_offset: int = 1) -> None:
    spec["serving"] = {**spec.get("serving", {}), "grpc": True}
    spec["deploy"]["local"]["grpc_port"] = spec["deploy"]["local"]["port"] + port_offset


def test_grpc_is_off_and_the_smoke_test_speaks_rest_by_default(tmp_path: Path) -> None:
    spec = load_spec(_model(tmp_path, lambda s: None))
    assert spec.serving.grpc is False and spec.smoke.protocol == "rest"
    assert spec.deploy.local is not None and spec.deploy.local.grpc_port is None


def test_grpc_with_a_front_port_and_a_grpc_smoke_test_loads(tmp_path: Path) -> None:
    def change(spec: dict[str, Any]) -> None:
        _grpc(spec)
        spec["smoke"]["protocol"] = "grpc"

    spec = load_spec(_model(tmp_path, change))
    assert spec.serving.grpc is True and spec.smoke.protocol == "grpc"
    assert spec.deploy.local is not None and spec.deploy.local.grpc_port == spec.deploy.local.port + 1


REFUSED = [
    pytest.param(lambda s: s["smoke"].update(protocol="grpc"), "smoke.protocol",
                 "needs servers that speak gRPC. Fix: set serving.grpc: true, or use smoke.protocol rest",
                 id="grpc-smoke-without-grpc-serving"),
    pytest.param(lambda s: s["smoke"].update(protocol="soap"), "smoke.protocol", "'rest' or 'grpc'",
                 id="unknown-protocol"),
    pytest.param(lambda s: s.update(serving={"grpc": "sometimes"}), "serving.grpc", "use true or false",
                 id="grpc-not-a-bool"),
    pytest.param(lambda s: s.update(serving={"grpc": True}), "deploy.local.grpc_port",
                 "the local front needs a stable port for gRPC clients. Fix: set deploy.local.grpc_port",
                 id="grpc-without-a-local-front-port"),
    pytest.param(lambda s: s["deploy"]["local"].update(grpc_port=8899), "deploy.local.grpc_port",
                 "serving.grpc is false, so no server would answer on it. Fix: set serving.grpc: true",
                 id="local-grpc-port-without-grpc"),
    pytest.param(lambda s: _grpc(s, 0), "deploy.local", "grpc_port and port are both",
                 id="grpc-port-is-the-http-port"),
    pytest.param(lambda s: s.update(serving={"args": {"grpc_port": 9000}}), "serving.args",
                 "grpc_port is chosen by the deploy target: use serving.grpc: true", id="grpc-port-in-args"),
    pytest.param(lambda s: s.update(LM, serving={"runtime": "vllm", "grpc": True}), "serving.grpc",
                 "runtime 'vllm' speaks openai over HTTP only", id="grpc-on-vllm"),
    pytest.param(lambda s: (s.update(LM), s["smoke"].update(protocol="grpc")), "smoke.protocol",
                 "runtime 'vllm' speaks openai. Fix: use smoke.protocol rest", id="grpc-smoke-on-vllm"),
    pytest.param(lambda s: (s.update(serving={"grpc": True}), s["deploy"].update(target="ansible", ansible={
        "inventory_conn_id": "fleet", "load_balancer": {"runtime_api": "/run/haproxy.sock",
                                                        "front_url": "http://lb:80"}})),
                 "deploy.ansible.load_balancer.grpc_front", "Fix: set deploy.ansible.load_balancer.grpc_front",
                 id="ansible-grpc-without-a-grpc-front"),
    pytest.param(lambda s: s["deploy"].update(target="ansible", ansible={
        "inventory_conn_id": "fleet", "load_balancer": {"runtime_api": "/run/haproxy.sock",
                                                        "front_url": "http://lb:80", "grpc_front": "grpc://lb"}}),
                 "deploy.ansible.load_balancer.grpc_front", "should match pattern", id="ansible-grpc-front-not-host-port"),
]


@pytest.mark.parametrize(("change", "field", "detail"), REFUSED)
def test_grpc_settings_that_do_not_fit_are_refused_naming_the_field_and_the_fix(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], field: str, detail: str
) -> None:
    model_dir = _model(tmp_path, change)
    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)
    message = str(caught.value)
    assert f"field '{field}'" in message, message
    assert detail in message, message
    assert "Fix:" in message


def test_ansible_grpc_front_loads(tmp_path: Path) -> None:
    def change(spec: dict[str, Any]) -> None:
        spec["serving"] = {"grpc": True}
        spec["smoke"]["protocol"] = "grpc"
        spec["deploy"] = {"target": "ansible", "ansible": {"inventory_conn_id": "fleet", "load_balancer": {
            "runtime_api": "/run/haproxy.sock", "front_url": "http://lb:80", "grpc_front": "lb:8081"}}}

    spec = load_spec(_model(tmp_path, change))
    assert spec.deploy.ansible is not None and spec.deploy.ansible.load_balancer.grpc_front == "lb:8081"


def test_a_grpc_front_port_another_model_claims_is_refused_naming_both(tmp_path: Path) -> None:
    models = copy_models(tmp_path / "models", ("breast_cancer", "wine"))
    wine = edit_spec(models / "wine", lambda s: None)
    edit_spec(models / "breast_cancer", lambda s: (s.update(serving={"grpc": True}),
                                                   s["deploy"]["local"].update(grpc_port=wine["deploy"]["local"]["port"])))
    specs, errors = discover_specs(models)
    assert not errors
    with pytest.raises(InvalidModelSpec) as caught:
        check_port_clashes(specs["breast_cancer"], models / "breast_cancer", specs.values())
    message = str(caught.value)
    assert "field 'deploy.local.grpc_port'" in message and "which model 'wine' claims too (deploy.local.port" in message
