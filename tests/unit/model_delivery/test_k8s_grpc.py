"""The kubernetes target's manifests with ``serving.grpc``: a named ``grpc`` container port, the Services' gRPC
port, a readiness probe on it, the server started with ``--grpc-port``; a golden file, the OpenAPI schemas of two
Kubernetes versions; without gRPC nothing of it (the golden files of tests/unit/model_delivery/test_k8s_manifests.py
stay as they are)."""

from __future__ import annotations

import copy
import os
from typing import Any

import kubernetes_validate
import pytest

from model_delivery.deploy.kubernetes import manifests as m
from model_delivery.deploy.kubernetes.target import KubernetesTarget, render
from model_delivery.settings import get_settings
from model_delivery.spec import ModelSpec
from tests.helpers.k8s_specs import CPU, DIGEST, VERSION, k8s_raw
from tests.unit.model_delivery.test_k8s_manifests import GOLDEN, K8S_VERSIONS, kinds, server


def grpc_spec(section: dict[str, Any], *, grpc: bool = True) -> ModelSpec:
    raw = k8s_raw(section)
    raw["serving"] = {"grpc": grpc}
    if grpc:
        raw["smoke"] = {**raw["smoke"], "protocol": "grpc"}
    return ModelSpec.model_validate(raw)


def grpc_objects(section: dict[str, Any] | None = None, track: str = m.STABLE, *, grpc: bool = True
                 ) -> list[dict[str, Any]]:
    return render(grpc_spec(copy.deepcopy(section or CPU), grpc=grpc), get_settings(), VERSION, DIGEST, parts="all",
                  track=track)


def test_grpc_manifests_match_the_golden_file() -> None:
    rendered = m.to_yaml(grpc_objects() + grpc_objects(track=m.CANDIDATE)[-1:])
    path = GOLDEN / "cpu-grpc.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert rendered == path.read_text(), f"rendering changed; review it and regenerate with UPDATE_GOLDEN=1 ({path})"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("track", [m.STABLE, m.CANDIDATE])
def test_every_grpc_object_is_valid_for_the_kubernetes_openapi_schema(track: str, version: str) -> None:
    rendered = grpc_objects(track=track)
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_server_listens_for_grpc_on_a_named_port_probed_for_readiness() -> None:
    objs = kinds(grpc_objects({**CPU, "container_grpc_port": 9100, "service": {"grpc_port": 9001}}))
    container = server(objs["Deployment/breast-cancer"])
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "grpc", "containerPort": 9100, "protocol": "TCP"}]
    args = container["args"]
    assert args[args.index("--grpc-port") + 1] == "9100" and args[args.index("--port") + 1] == "8080"
    # the server does not implement grpc.health.v1: a TCP connect, not Kubernetes' grpc probe
    assert container["readinessProbe"]["tcpSocket"] == {"port": "grpc"} and "grpc" not in container["readinessProbe"]
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    for name in ("Service/breast-cancer", "Service/breast-cancer-candidate"):
        assert objs[name]["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": 9001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]


def test_without_grpc_nothing_of_it_is_rendered() -> None:
    objs = kinds(grpc_objects(grpc=False))
    container = server(objs["Deployment/breast-cancer"])
    assert [p["name"] for p in container["ports"]] == ["http"] and "--grpc-port" not in container["args"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert [p["name"] for p in objs["Service/breast-cancer"]["spec"]["ports"]] == ["http"]
    assert m.to_yaml(grpc_objects(grpc=False)) == (GOLDEN / "cpu.yaml").read_text()


def test_stage_and_shift_results_name_the_grpc_addresses() -> None:
    settings = get_settings()
    target = KubernetesTarget(grpc_spec({**CPU, "service": {"grpc_port": 9001}}), settings, settings.open_store())
    release = target.release(VERSION, DIGEST)
    staged = target._summary(release, target.staging_url, None, "staged")
    shifted = target._summary(release, target.production_url, None, "rolled out")
    assert staged["grpc_url"] == "breast-cancer-candidate.ml-serving.svc.cluster.local:9001"
    assert shifted["grpc_url"] == "breast-cancer.ml-serving.svc.cluster.local:9001"
    plain = KubernetesTarget(grpc_spec(CPU, grpc=False), settings, settings.open_store())
    assert "grpc_url" not in plain._summary(plain.release(VERSION, DIGEST), plain.staging_url, None, "staged")


@pytest.mark.parametrize(("change", "detail"), [
    pytest.param({"container_grpc_port": 8080}, "container_grpc_port and container_port are both 8080",
                 id="same-container-port"),
    pytest.param({"staging_grpc": "{name}:{grpcport}"}, "only {name}, {namespace}, {port} and {grpc_port}",
                 id="unknown-placeholder"),
])
def test_bad_grpc_settings_are_refused(change: dict[str, Any], detail: str) -> None:
    with pytest.raises(ValueError, match="deploy.kubernetes") as caught:
        grpc_spec({**CPU, **change})
    assert detail in str(caught.value)
