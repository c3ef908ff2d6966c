"""The kubernetes target's manifests: golden files, OpenAPI schemas of two Kubernetes versions, properties."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from model_delivery.cli import main as cli
from model_delivery.deploy.kubernetes import manifests as m
from model_delivery.deploy.kubernetes.target import render
from model_delivery.exceptions import InvalidModelSpec, SignatureRefused
from model_delivery.settings import get_settings
from model_delivery.spec import ModelSpec, load_spec
from tests.helpers.k8s_pods import PodRunner
from tests.helpers.k8s_specs import (
    CPU,
    DIGEST,
    GPU,
    GPU_LM,
    IMAGE,
    NAMESPACE,
    STORE,
    VERSION,
    k8s_raw,
    k8s_spec,
    use_kubernetes,
)
from tests.helpers.models import copy_models
from tests.helpers.processes import serving_env
from tests.helpers.signed_artifacts import ec_key_pair, sign_stored, store_artifact

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "k8s" / "golden"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # the oldest and newest minor kubernetes-validate ships that we support


def objects(section: dict[str, Any], parts: str = "all", track: str = m.STABLE, model: str = "breast_cancer"
            ) -> list[dict[str, Any]]:
    return render(k8s_spec(section, model), get_settings(), VERSION, DIGEST, parts=parts, track=track)


def kinds(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objs}


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


VARIANTS = {
    "cpu": lambda: objects(CPU),
    "cpu-candidate": lambda: objects(CPU, "workload", m.CANDIDATE),
    "gpu": lambda: objects(GPU, "workload") + objects(GPU, "workload", m.CANDIDATE)[-1:],
    "model-image": lambda: objects({**CPU, "image": None, "model_image": "registry.example/breast-cancer:7"}),
    "file-store-on-a-pvc": lambda: objects({**CPU, "artifact_fetch": {"store_uri": "file:///mnt/artifacts",
                                                                      "store_pvc": "model-store"}}, "workload"),
    "gpu-lm": lambda: objects(GPU_LM, "workload", model="code_lm"),
    "tolerations-and-limits": lambda: objects({**GPU, "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute", "toleration_seconds": 300}],
        "resources": {"cpu_request": "1", "cpu_limit": "4", "memory_request": "4Gi", "gpus": 2,
                      "gpu_resource": "amd.com/gpu"}}, "workload"),
}


@pytest.mark.parametrize("name", [pytest.param("cpu", id="cpu"), pytest.param("gpu", id="gpu"),
                                  pytest.param("gpu-lm", id="gpu-lm")])
def test_manifests_match_the_golden_files(name: str) -> None:
    rendered = m.to_yaml(VARIANTS[name]())
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert rendered == path.read_text(), f"rendering changed; review it and regenerate with UPDATE_GOLDEN=1 ({path})"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_for_the_kubernetes_openapi_schema(variant: str, version: str) -> None:
    rendered = VARIANTS[variant]()
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("break_it", [
    pytest.param(lambda d: d["spec"].update(replica=3), id="unknown-field"),
    pytest.param(lambda d: d["spec"].update(replicas="three"), id="wrong-type"),
    pytest.param(lambda d: server(d)["startupProbe"]["httpGet"].pop("port"), id="missing-required"),
])
def test_the_schema_check_catches_a_broken_deployment(break_it: Any, version: str) -> None:
    deployment = kinds(objects(CPU, "workload"))["Deployment/breast-cancer"]
    break_it(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def test_rolling_update_never_lowers_capacity_and_has_a_progress_deadline() -> None:
    deployment = kinds(objects({**CPU, "progress_deadline_seconds": 420}))["Deployment/breast-cancer"]
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    assert spec["progressDeadlineSeconds"] == 420
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "breast-cancer",
                                               "model-delivery.io/track": "stable"}


def test_probes_use_the_open_inference_protocol_health_paths() -> None:
    container = server(kinds(objects({**CPU, "startup_timeout_seconds": 120}))["Deployment/breast-cancer"])
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 120
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_pods_run_non_root_with_a_read_only_root_and_no_api_token() -> None:
    pod = kinds(objects(CPU))["Deployment/breast-cancer"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in [*pod["initContainers"], *pod["containers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsUser"] != 0
        assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])  # writable scratch


def test_labels_carry_the_model_the_version_and_the_digest() -> None:
    deployment = kinds(objects(CPU))["Deployment/breast-cancer"]
    for labels in (deployment["metadata"]["labels"], deployment["spec"]["template"]["metadata"]["labels"]):
        assert labels["model-delivery.io/model"] == "breast_cancer"
        assert labels["model-delivery.io/version"] == labels["app.kubernetes.io/version"] == VERSION
        assert labels["model-delivery.io/digest"] == DIGEST.removeprefix("sha256:")[:63]
        assert all(len(value) <= 63 for value in labels.values())
    assert deployment["spec"]["template"]["metadata"]["annotations"]["model-delivery.io/digest"] == DIGEST


def test_weights_are_fetched_and_verified_by_an_init_container_before_the_server_starts() -> None:
    pod = kinds(objects(CPU))["Deployment/breast-cancer"]["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    hex_digest = DIGEST.removeprefix("sha256:")
    assert fetch["args"] == ["--uri", f"{STORE}/breast_cancer/sha256/{hex_digest}", "--blobs", f"{STORE}/blobs/sha256", "--digest", DIGEST,
                             "--dest", f"/models/{hex_digest}"]
    assert fetch["command"] == ["python", "/opt/model-delivery/fetch_artifact.py"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--artifact") + 1] == f"/models/{hex_digest}"
    assert args[args.index("--digest") + 1] == DIGEST  # the server verifies again before it binds its port
    config_map = kinds(objects(CPU))["ConfigMap/breast-cancer-fetch"]
    assert config_map["data"]["fetch_artifact.py"] == (m.STATIC_DIR / "fetch_artifact.py").read_text()


def test_a_model_image_is_used_as_it_is_without_an_init_container() -> None:
    rendered = kinds(objects({**CPU, "image": None, "model_image": "registry.example/breast-cancer:7"}))
    pod = rendered["Deployment/breast-cancer"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert pod["containers"][0]["image"] == "registry.example/breast-cancer:7"
    args = pod["containers"][0]["args"]
    assert args[args.index("--artifact") + 1] == "/model"
    assert args[args.index("--digest") + 1] == DIGEST
    assert "ConfigMap/breast-cancer-fetch" not in rendered


def test_gpu_resources_node_selector_and_the_default_gpu_toleration() -> None:
    pod = kinds(objects(GPU))["Deployment/breast-cancer"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in pod["initContainers"][0]["resources"]["requests"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "tolerations" not in kinds(objects(CPU))["Deployment/breast-cancer"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(("section", "serving", "replicas"), [
    pytest.param(CPU, "false", 1, id="staging-takes-no-live-traffic"),
    pytest.param(GPU, "true", 1, id="canary-shares-the-production-service"),
])
def test_the_candidate_deployment(section: dict[str, Any], serving: str, replicas: int) -> None:
    rendered = kinds(objects(section, "all", m.CANDIDATE))
    candidate = rendered["Deployment/breast-cancer-candidate"]
    labels = candidate["spec"]["template"]["metadata"]["labels"]
    assert labels["model-delivery.io/serving"] == serving
    assert candidate["spec"]["replicas"] == replicas
    production = rendered["Service/breast-cancer"]["spec"]["selector"]
    takes_traffic = all(labels.get(k) == v for k, v in production.items())
    assert takes_traffic is (serving == "true")
    candidate_service = rendered["Service/breast-cancer-candidate"]["spec"]["selector"]
    assert all(labels.get(k) == v for k, v in candidate_service.items())
    assert rendered["PodDisruptionBudget/breast-cancer"]["spec"]["selector"]["matchLabels"][
        "model-delivery.io/track"] == "stable"


def test_rbac_is_one_namespace_and_exactly_the_rules_of_the_static_file() -> None:
    rendered = kinds(objects(CPU, "rbac"))
    assert set(rendered) == {"ServiceAccount/model-delivery-deployer", "Role/model-delivery-deployer",
                             "RoleBinding/model-delivery-deployer"}
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in rendered.values())
    role = rendered["Role/model-delivery-deployer"]
    assert role["rules"] == yaml.safe_load((m.STATIC_DIR / "deployer-role.yaml").read_text())
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    binding = rendered["RoleBinding/model-delivery-deployer"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "model-delivery-deployer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "model-delivery-deployer",
                                    "namespace": NAMESPACE}]


def test_names_of_a_long_model_stay_valid_dns_labels() -> None:
    model = "a_" + "b" * 60
    raw = k8s_raw(CPU)
    raw["name"] = model
    spec = ModelSpec.model_validate(raw)
    for obj in render(spec, get_settings(), VERSION, DIGEST, track=m.CANDIDATE):
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


def test_rendering_is_a_pure_function_of_spec_version_and_digest() -> None:
    assert m.to_yaml(objects(GPU)) == m.to_yaml(objects(GPU))
    assert m.to_yaml(objects(GPU)) != m.to_yaml(render(k8s_spec(GPU), get_settings(), "8", DIGEST))


@pytest.mark.parametrize(("change", "message"), [
    pytest.param({"image": None}, "needs 'image' (the serving image) or 'model_image'", id="no-image"),
    pytest.param({"max_surge": 0}, "max_surge must be at least 1", id="no-surge"),
    pytest.param({"max_surge": "150%"}, "percentage from 1% to 100%", id="bad-percentage"),
    pytest.param({"namespace": "ML_Serving"}, "deploy.kubernetes.namespace", id="namespace-not-a-dns-label"),
    pytest.param({"resources": {"gpus": -1}}, "deploy.kubernetes.resources.gpus", id="negative-gpus"),
    pytest.param({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "takes no value",
                 id="exists-with-value"),
    pytest.param({"staging_url": "http://{service}:80"}, "only {name}, {namespace} and {port}", id="bad-url-template"),
    pytest.param({"replicas": 2, "surprise": 1}, "deploy.kubernetes.surprise", id="unknown-field"),
])
def test_a_bad_kubernetes_section_is_refused_naming_the_field(tmp_path: Path, change: dict[str, Any],
                                                              message: str) -> None:
    model_dir = copy_models(tmp_path, ("breast_cancer",)) / "breast_cancer"
    use_kubernetes(model_dir, {**CPU, **change})
    with pytest.raises(InvalidModelSpec) as raised:
        load_spec(model_dir)
    assert message in str(raised.value)


def test_render_k8s_prints_the_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    models = copy_models(tmp_path / "models", ("breast_cancer",))
    use_kubernetes(models / "breast_cancer", CPU)
    monkeypatch.setenv("MODEL_DELIVERY_MODELS_DIR", str(models))

    assert cli(["render-k8s", "breast_cancer", "--version", VERSION, "--digest", DIGEST]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert m.to_yaml(printed) == m.to_yaml(objects(CPU))

    assert cli(["render-k8s", "breast_cancer", "--rbac"]) == 0
    assert [o["kind"] for o in yaml.safe_load_all(capsys.readouterr().out)] == ["ServiceAccount", "Role", "RoleBinding"]

    assert cli(["render-k8s", "breast_cancer", "--workload", "--candidate", "--version", VERSION,
                "--digest", DIGEST]) == 0
    workload = list(yaml.safe_load_all(capsys.readouterr().out))
    assert workload[-1]["metadata"]["name"] == "breast-cancer-candidate"
    assert IMAGE in m.to_yaml(workload)


def test_a_language_model_runs_vllm_offline_on_a_gpu_with_verified_weights() -> None:
    deployment = kinds(objects(GPU_LM, "workload", model="code_lm"))["Deployment/code-lm"]
    pod = deployment["spec"]["template"]["spec"]
    container = server(deployment)
    assert container["image"] == "vllm/vllm-openai:v0.32.0"  # pinned, the runtime's own
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = container["args"]
    assert args[args.index("--model") + 1] == f"/models/{DIGEST.split(':')[1]}"  # what the init container verified
    assert args[args.index("--max-model-len") + 1] == "256" and "--enforce-eager" in args
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["HF_HOME"].startswith("/tmp/")  # caches on the writable scratch volume; the root stays read-only
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    fetch = pod["initContainers"][0]
    assert fetch["image"] == "registry.example/model-server:1.0" and fetch["command"][0] == "python"


def test_the_weights_volume_and_the_startup_budget_are_sized_from_the_artifact() -> None:
    spec = k8s_spec(GPU_LM, "code_lm").deploy.kubernetes
    assert spec is not None
    release = m.Release("code_lm", VERSION, DIGEST, f"{STORE}/code_lm/sha256/x", "vllm", size_bytes=20 * 1024**3)
    deployment = m.deployment(spec, release)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["emptyDir"]["sizeLimit"] == f"{22528 + 256}Mi"  # 20 GiB + 10 % + 256 MiB
    probe = server(deployment)["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 600 + 20 * m.LOAD_SECONDS_PER_GIB
    unknown = m.deployment(spec, m.Release("code_lm", VERSION, DIGEST, "s3://x", "vllm"))
    assert {v["name"]: v for v in unknown["spec"]["template"]["spec"]["volumes"]}["models"]["emptyDir"] == {
        "sizeLimit": "2Gi"}
    pinned = k8s_spec({**GPU_LM, "artifact_fetch": {**GPU_LM["artifact_fetch"], "volume_size_limit": "40Gi"}},
                      "code_lm").deploy.kubernetes
    assert pinned is not None
    volumes = {v["name"]: v for v in m.deployment(pinned, release)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["emptyDir"]["sizeLimit"] == "40Gi"


def test_an_lm_with_a_pickle_is_refused_before_anything_is_applied(tmp_path: Path) -> None:
    from model_delivery.deploy import Candidate
    from model_delivery.deploy.kubernetes.target import KubernetesTarget
    from model_delivery.exceptions import TamperedArtifact
    from model_delivery.store import ArtifactStore

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        (model / name).write_text("{}")
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    stored = store.put_directory("code_lm", model)

    class NoCluster:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the cluster was called ({name}) for a refused artifact")

    target = KubernetesTarget(k8s_spec(GPU_LM, "code_lm"), get_settings(), store, NoCluster())  # type: ignore[arg-type]
    with pytest.raises(TamperedArtifact, match=r"pickle files \['pytorch_model.bin'\]"):
        target.stage(Candidate("code_lm", "3", stored.digest), "run-1")


# -- signatures: what the init container verifies with -------------------------------------------------------

SIGNING_CONN = "AIRFLOW_CONN_MODEL_DELIVERY_SIGNING"


def signed_objects(signing: Any, section: dict[str, Any] = CPU) -> dict[str, dict[str, Any]]:
    raw = k8s_raw(section)
    raw["signing"] = signing
    return kinds(render(ModelSpec.model_validate(raw), get_settings(), VERSION, DIGEST, parts="workload"))


def init_args(rendered: dict[str, dict[str, Any]]) -> list[str]:
    args: list[str] = rendered["Deployment/breast-cancer"]["spec"]["template"]["spec"]["initContainers"][0]["args"]
    return args


@pytest.mark.parametrize(("signing", "extra", "flag", "file_name"), [
    pytest.param("required", "public_key", "--public-key", "signing-public-key.pem", id="key"),
    pytest.param({"mode": "optional", "method": "certificate"}, "certificate_chain", "--ca", "signing-ca.pem",
                 id="certificate"),
])
def test_the_init_container_verifies_the_signature_with_the_pem_its_config_map_carries(
        monkeypatch: pytest.MonkeyPatch, signing: Any, extra: str, flag: str, file_name: str) -> None:
    pem = ec_key_pair()[1].decode()  # a certificate's PEM would be carried the same way
    monkeypatch.setenv(SIGNING_CONN, json.dumps({"conn_type": "generic", "extra": {extra: pem}}))
    rendered = signed_objects(signing)
    mode = signing if isinstance(signing, str) else signing["mode"]
    args = init_args(rendered)
    assert args[args.index("--signing"):args.index("--signing") + 4] == ["--signing", mode, flag,
                                                                        f"/opt/model-delivery/{file_name}"]
    data = rendered["ConfigMap/breast-cancer-fetch"]["data"]
    assert data[file_name] == pem.strip() + "\n"
    assert "PRIVATE KEY" not in m.to_yaml(list(rendered.values()))
    for obj in rendered.values():
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


def test_without_signing_the_init_container_checks_no_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_CONN, json.dumps({"conn_type": "generic", "extra": {"public_key": "x"}}))
    rendered = signed_objects("off")
    assert not {"--signing", "--public-key", "--ca"} & set(init_args(rendered))
    assert list(rendered["ConfigMap/breast-cancer-fetch"]["data"]) == ["fetch_artifact.py"]


def test_signing_with_nothing_to_verify_with_renders_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNING_CONN, raising=False)
    with pytest.raises(SignatureRefused, match="nothing to verify with") as refused:
        signed_objects("required")
    assert refused.value.reason == "no-trust"


def test_the_pod_stand_in_runs_the_rendered_init_container_and_it_refuses_another_keys_signature(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered command and ConfigMap, run as tests/helpers/k8s_pods.py runs them, against a real signed store."""
    private, public = ec_key_pair()
    monkeypatch.setenv(SIGNING_CONN, json.dumps({"conn_type": "generic", "extra": {"public_key": public.decode()}}))
    store = tmp_path / "store"
    directory, digest = store_artifact(store, "breast_cancer", {"model.joblib": b"weights", "serving.json": b"{}"})
    sign_stored(directory, private)
    raw = k8s_raw({**CPU, "artifact_fetch": {"store_uri": f"file://{store}"}})
    raw["signing"] = "required"
    rendered = kinds(render(ModelSpec.model_validate(raw), get_settings(), VERSION, digest, parts="workload"))
    runner = PodRunner(tmp_path / "pods", {})

    def run_init(pod: str) -> subprocess.CompletedProcess[str]:
        pod_dir = tmp_path / "pods" / pod
        (pod_dir / "opt" / "model-delivery").mkdir(parents=True)
        (pod_dir / "models").mkdir()
        for name, text in rendered["ConfigMap/breast-cancer-fetch"]["data"].items():
            (pod_dir / "opt" / "model-delivery" / name).write_text(text)
        init = rendered["Deployment/breast-cancer"]["spec"]["template"]["spec"]["initContainers"][0]
        command = [runner._map(v, pod_dir) for v in [*init["command"], *init["args"]]]
        return subprocess.run(command, capture_output=True, text=True, env=serving_env(), timeout=60)

    done = run_init("signed")
    assert done.returncode == 0 and "signature verified" in done.stderr, done.stderr
    sign_stored(directory, ec_key_pair()[0])  # now signed by someone else
    refused = run_init("resigned")
    assert refused.returncode == 3 and "signature wrong-key" in refused.stderr, refused.stderr
    assert not list((tmp_path / "pods" / "resigned" / "models").iterdir())


@pytest.mark.parametrize(("model", "variable"), [("breast_cancer", "MODEL_SERVER_TOKEN"), ("code_lm", "VLLM_API_KEY")])
def test_the_serving_token_reaches_the_server_by_reference_to_its_secret_only(model: str, variable: str) -> None:
    raw = k8s_raw({**(GPU_LM if model == "code_lm" else CPU), "token_secret": "serving-token"}, model)
    raw["serving"] = {**raw.get("serving", {}), "token_conn_id": "model_delivery_serving_token"}
    rendered = render(ModelSpec.model_validate(raw), get_settings(), VERSION, DIGEST)

    container = server(kinds(rendered)[f"Deployment/{m.deployment_name(model, m.STABLE)}"])
    token = [e for e in container["env"] if e["name"] == variable]
    assert token == [{"name": variable, "valueFrom": {"secretKeyRef": {"name": "serving-token", "key": "token"}}}]
    init = kinds(rendered)[f"Deployment/{m.deployment_name(model, m.STABLE)}"]["spec"]["template"]["spec"]
    assert all(variable not in json.dumps(c.get("env", [])) for c in init.get("initContainers", []))
    # probes send no token: they use paths the server leaves open
    assert container["readinessProbe"]["httpGet"]["path"] in ("/v2/health/ready", "/health")


@pytest.mark.parametrize(("serving", "section", "field"), [
    pytest.param({"token_conn_id": "tok"}, CPU, "deploy.kubernetes.token_secret", id="token-without-secret"),
    pytest.param({}, {**CPU, "token_secret": "serving-token"}, "serving.token_conn_id", id="secret-without-token"),
])
def test_a_half_configured_serving_token_is_refused_naming_the_field(serving: dict[str, Any], section: dict[str, Any],
                                                                     field: str) -> None:
    from pydantic import ValidationError

    raw = k8s_raw(section)
    raw["serving"] = {**raw.get("serving", {}), **serving}
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        ModelSpec.model_validate(raw)


def test_required_signing_with_baked_weights_is_refused_naming_the_field() -> None:
    """Nothing in a pod of a model_image checks a signature: refused at parse, not served unchecked."""
    from pydantic import ValidationError

    raw = k8s_raw({**CPU, "image": None, "model_image": "registry.example/breast-cancer:7"})
    raw["signing"] = {"mode": "required", "public_key": "signing.pub"}
    with pytest.raises(ValidationError, match="signing is required, but an image with the weights baked in"):
        ModelSpec.model_validate(raw)
    raw["signing"] = {"mode": "off"}
    assert ModelSpec.model_validate(raw).deploy.kubernetes.model_image  # the same image without signing is fine
