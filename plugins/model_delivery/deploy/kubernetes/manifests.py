"""The Kubernetes objects of one model, as plain dicts built from the spec (never string templates).

Pure functions: the same spec, version and digest always give the same objects, so a
re-applied release changes nothing and golden files can pin the output.

Objects and their roles:

=====================================  =========================================================
``Deployment <name>``                  production pods (``track: stable``), RollingUpdate with
                                       maxUnavailable 0
``Deployment <name>-candidate``        the staged candidate (``track: candidate``); a canary when it
                                       also carries ``serving: "true"``
``Service <name>``                     production traffic: every pod with ``serving: "true"``
                                       (ports ``http``, and ``grpc`` with ``serving.grpc``)
``Service <name>-candidate``           the candidate's pods only (smoke tests)
``PodDisruptionBudget <name>``         keeps production pods through voluntary evictions
``ConfigMap <name>-fetch``             the init container's fetch-and-verify script, and the public
                                       key (or CA certificates) it verifies signatures with
``ServiceAccount/Role/RoleBinding``    the deployer's least privilege (``model-delivery-deployer``)
=====================================  =========================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from model_delivery.runtimes import get_runtime
from model_delivery.settings import PROJECT_ROOT
from model_delivery.store.layout import blobs_uri, store_root_of

if TYPE_CHECKING:
    from model_delivery.deploy.kubernetes.spec import KubernetesTargetSpec, ResourcesSpec, Toleration

STATIC_DIR = PROJECT_ROOT / "include" / "kubernetes"
FETCH_SCRIPT = "fetch_artifact.py"
ROLE_RULES_FILE = "deployer-role.yaml"
DEPLOYER = "model-delivery-deployer"
MANAGED_BY = "model-delivery"
PREFIX = "model-delivery.io/"
STABLE, CANDIDATE = "stable", "candidate"
MODELS_MOUNT = "/models"
SCRIPTS_MOUNT = "/opt/model-delivery"
PROBE_PERIOD = 5
MAX_BASE_LENGTH = 52  # "<base>-candidate" must stay a valid 63-character DNS label
SIGNING_FILES = {"key": ("--public-key", "signing-public-key.pem"), "certificate": ("--ca", "signing-ca.pem")}


@dataclass(frozen=True)
class PodSigning:
    """What the init container verifies the artifact's signature against: the spec's ``signing`` (not ``off``).

    :param mode: ``required`` (no signature: refused) or ``optional`` (a signature present must hold).
    :param method: ``key`` (``pem`` is the EC public key) or ``certificate`` (``pem`` is the trusted CAs).
    :param pem: the public key or CA certificates, shipped in the ConfigMap (never a private key).
    """

    mode: str
    method: str
    pem: str

    @property
    def flag(self) -> str:
        return SIGNING_FILES[self.method][0]

    @property
    def file_name(self) -> str:
        return SIGNING_FILES[self.method][1]


@dataclass(frozen=True)
class Release:
    """One version of a model, as the cluster gets it."""

    model: str
    version: str
    digest: str
    artifact_uri: str
    runtime: str = "model_server"
    """The serving runtime (``model_delivery.runtimes``): it gives the command and the probe paths."""
    runtime_args: tuple[tuple[str, Any], ...] = ()
    size_bytes: int | None = None
    """The artifact's size when the store knows it: it sizes the weights volume and the startup probe."""
    signing: PodSigning | None = None
    """The signature check of the init container (None: signing is off)."""
    grpc: bool = False
    """``serving.grpc``: the server also speaks gRPC, on the container port named ``grpc``."""

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


def base_name(model: str) -> str:
    """The model's object name: a DNS label (``breast_cancer`` -> ``breast-cancer``)."""
    return model.replace("_", "-")[:MAX_BASE_LENGTH].strip("-")


def deployment_name(model: str, track: str) -> str:
    return base_name(model) if track == STABLE else f"{base_name(model)}-candidate"


def config_map_name(model: str) -> str:
    return f"{base_name(model)}-fetch"


def common_labels(model: str) -> dict[str, str]:
    """Labels on every object of the model."""
    return {
        "app.kubernetes.io/name": base_name(model),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "model-delivery",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{PREFIX}model": model,
    }


def version_labels(release: Release) -> dict[str, str]:
    """The version and digest as labels (a label value holds at most 63 of the digest's 64 hex digits)."""
    return {
        "app.kubernetes.io/version": release.version,
        f"{PREFIX}version": release.version,
        f"{PREFIX}digest": release.hex[:63],
    }


def selector(model: str, track: str) -> dict[str, str]:
    """The immutable selector of a track's Deployment."""
    return {"app.kubernetes.io/name": base_name(model), f"{PREFIX}track": track}


def pod_labels(release: Release, track: str, serving: bool) -> dict[str, str]:
    """Labels of a version's pods: the selector, the version and digest, and whether they take traffic."""
    return {
        **common_labels(release.model),
        **version_labels(release),
        **selector(release.model, track),
        f"{PREFIX}serving": "true" if serving else "false",
    }


def rollout_pod_selector(release: Release, track: str) -> dict[str, str]:
    """Selects exactly the pods of ``release`` in ``track`` (the new ReplicaSet of a rollout)."""
    return {**selector(release.model, track), f"{PREFIX}version": release.version,
            f"{PREFIX}digest": release.hex[:63]}


def _metadata(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None
              ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def resources(spec: ResourcesSpec) -> dict[str, dict[str, str]]:
    """Requests and limits; GPUs are an extended resource, so request and limit are the same."""
    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request}
    limits: dict[str, str] = {}
    if spec.cpu_limit:
        limits["cpu"] = spec.cpu_limit
    if spec.memory_limit:
        limits["memory"] = spec.memory_limit
    if spec.gpus:
        requests[spec.gpu_resource] = limits[spec.gpu_resource] = str(spec.gpus)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def tolerations(given: list[Toleration], gpu: ResourcesSpec | None) -> list[dict[str, Any]]:
    """The spec's tolerations; a GPU pod with none tolerates the usual GPU-node taint."""
    out = []
    for item in given:
        toleration: dict[str, Any] = {"operator": item.operator}
        if item.key:
            toleration["key"] = item.key
        if item.value is not None:
            toleration["value"] = item.value
        if item.effect:
            toleration["effect"] = item.effect
        if item.toleration_seconds is not None:
            toleration["tolerationSeconds"] = item.toleration_seconds
        out.append(toleration)
    if not out and gpu is not None and gpu.gpus:
        out.append({"key": gpu.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return out


def container_security(spec: KubernetesTargetSpec) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": spec.run_as_user,
        "runAsGroup": spec.run_as_user,
        "capabilities": {"drop": ["ALL"]},
    }


def _fetch_args(spec: KubernetesTargetSpec, release: Release) -> list[str]:
    """Where the init container reads the artifact (the registry by digest, or the store's manifest and blobs),
    and what it verifies the signature with."""
    where = ["--uri", release.artifact_uri]
    if release.artifact_uri.startswith("oci://"):
        where += ["--insecure"] if spec.artifact_fetch.registry_insecure else []
    else:
        where += ["--blobs", blobs_uri(store_root_of(release.artifact_uri, release.model))]
    if release.signing is not None:
        where += ["--signing", release.signing.mode, release.signing.flag,
                  f"{SCRIPTS_MOUNT}/{release.signing.file_name}"]
    return [*where, "--digest", release.digest, "--dest", f"{MODELS_MOUNT}/{release.hex}"]


def _fetch_container(spec: KubernetesTargetSpec, release: Release) -> dict[str, Any]:
    fetch = spec.artifact_fetch
    runtime = get_runtime(release.runtime)
    container: dict[str, Any] = {
        "name": "fetch-artifact",
        "image": fetch.image or spec.image or runtime.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python" if fetch.image else runtime.container_python, f"{SCRIPTS_MOUNT}/{FETCH_SCRIPT}"],
        "args": _fetch_args(spec, release),
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "resources": resources(fetch.resources),
        "securityContext": container_security(spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT},
            {"name": "scripts", "mountPath": SCRIPTS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if fetch.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": fetch.credentials_secret}}]
    if fetch.store_pvc and not release.artifact_uri.startswith("oci://"):
        store_path = store_root_of(release.artifact_uri, release.model).removeprefix("file://")
        container["volumeMounts"].append({"name": "store", "mountPath": store_path, "readOnly": True})
    return container


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2,
            "failureThreshold": failures}


def _grpc_probe(period: int, failures: int) -> dict[str, Any]:
    """Readiness of the gRPC port: a TCP connect. Kubernetes' native ``grpc`` probe calls grpc.health.v1.Health,
    which the model server does not implement (it serves inference.GRPCInferenceService only), so that probe would
    never pass; a container has one readiness probe, and HTTP keeps the startup and liveness probes (both ports are
    served by one process, on one event loop)."""
    return {"tcpSocket": {"port": "grpc"}, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": failures}


def _server_container(spec: KubernetesTargetSpec, release: Release) -> dict[str, Any]:
    baked = spec.model_image is not None
    artifact = spec.model_image_artifact_path if baked else f"{MODELS_MOUNT}/{release.hex}"
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if not baked:
        mounts.insert(0, {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
    runtime = get_runtime(release.runtime)
    if runtime.shared_memory:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    args = dict(release.runtime_args)
    ports = [{"name": "http", "containerPort": spec.container_port, "protocol": "TCP"}]
    if release.grpc:
        args["grpc_port"] = spec.container_grpc_port
        ports.append({"name": "grpc", "containerPort": spec.container_grpc_port, "protocol": "TCP"})
    command = runtime.command(python=runtime.container_python, artifact=artifact, digest=release.digest,
                              model=release.model, version=release.version, host="0.0.0.0",
                              port=spec.container_port, args=args)
    env = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", **runtime.container_env("/tmp")}
    env_list: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in env.items()]
    if spec.token_secret and runtime.token_env:  # the bearer token, by reference to the Secret only
        env_list.append({"name": runtime.token_env,
                         "valueFrom": {"secretKeyRef": {"name": spec.token_secret, "key": TOKEN_KEY}}})
    return {
        "name": "model-server",
        "image": spec.model_image or spec.image or runtime.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": command[:3],
        "args": command[3:],
        "ports": ports,
        "env": env_list,
        "resources": resources(spec.resources),
        # The server answers its live path only once it has loaded the model (ours after verifying the
        # digest): the startup probe's budget grows with the weights to load.
        "startupProbe": _probe(runtime.live_path, PROBE_PERIOD,
                               math.ceil(startup_seconds(spec, release) / PROBE_PERIOD)),
        # a probe sends no token: with one, a runtime whose ready path needs it is probed on its live path
        "readinessProbe": _grpc_probe(PROBE_PERIOD, 3) if release.grpc else _probe(
            runtime.ready_path if not (spec.token_secret and runtime.ready_needs_token) else runtime.live_path,
            PROBE_PERIOD, 3),
        "livenessProbe": _probe(runtime.live_path, 10, 3),
        "securityContext": container_security(spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


TOKEN_KEY = "token"
"""The key of ``deploy.kubernetes.token_secret`` that holds the servers' bearer token."""

GIB = 1024**3
LOAD_SECONDS_PER_GIB = 30
"""Startup budget added per GiB of weights (read from the volume, loaded to the device)."""
DEFAULT_VOLUME = "2Gi"


def startup_seconds(spec: KubernetesTargetSpec, release: Release) -> int:
    """The startup probe's budget: the spec's, plus ``LOAD_SECONDS_PER_GIB`` per GiB of a known artifact."""
    extra = math.ceil(release.size_bytes / GIB * LOAD_SECONDS_PER_GIB) if release.size_bytes else 0
    return spec.startup_timeout_seconds + extra


def weights_volume_size(spec: KubernetesTargetSpec, release: Release) -> str:
    """The spec's ``volume_size_limit``, else the artifact's size plus 10 % and 256 MiB (2Gi when unknown)."""
    if spec.artifact_fetch.volume_size_limit:
        return spec.artifact_fetch.volume_size_limit
    if not release.size_bytes:
        return DEFAULT_VOLUME
    return f"{math.ceil(release.size_bytes * 1.1 / 1024**2) + 256}Mi"


def _volumes(spec: KubernetesTargetSpec, release: Release) -> list[dict[str, Any]]:
    runtime = get_runtime(release.runtime)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": runtime.scratch_size}}]
    if runtime.shared_memory:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": runtime.shared_memory}})
    if spec.model_image is not None:
        return volumes
    volumes += [
        {"name": "models", "emptyDir": {"sizeLimit": weights_volume_size(spec, release)}},
        {"name": "scripts", "configMap": {"name": config_map_name(release.model), "defaultMode": 0o444}},
    ]
    if spec.artifact_fetch.store_pvc:
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": spec.artifact_fetch.store_pvc,
                                                                   "readOnly": True}})
    return volumes


def pod_spec(spec: KubernetesTargetSpec, release: Release, track: str) -> dict[str, Any]:
    """The pod of one version: non-root, read-only root, verified weights, probes on the OIP health paths."""
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.run_as_user,
            "runAsGroup": spec.run_as_user,
            "fsGroup": spec.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 45,  # the server drains for up to 30 s after SIGTERM
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    tolerated = tolerations(spec.tolerations, spec.resources)
    if tolerated:
        pod["tolerations"] = tolerated
    pod["topologySpreadConstraints"] = [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector(release.model, track)},
    }]
    if spec.model_image is None:
        pod["initContainers"] = [_fetch_container(spec, release)]
    pod["containers"] = [_server_container(spec, release)]
    pod["volumes"] = _volumes(spec, release)
    return pod


def deployment(spec: KubernetesTargetSpec, release: Release, track: str = STABLE) -> dict[str, Any]:
    """The production Deployment (``stable``) or the candidate's (``candidate``: staging, or canary)."""
    name = deployment_name(release.model, track)
    canary = track == CANDIDATE and spec.canary is not None
    serving = track == STABLE or canary
    if track == STABLE:
        replicas = spec.replicas
    else:
        replicas = spec.canary.replicas if spec.canary is not None else 1
    annotations = {f"{PREFIX}digest": release.digest, f"{PREFIX}artifact-uri": release.artifact_uri}
    labels = {**common_labels(release.model), **version_labels(release), f"{PREFIX}track": track}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, spec.namespace, labels, annotations),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": spec.progress_deadline_seconds,
            "selector": {"matchLabels": selector(release.model, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": spec.max_surge, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels(release, track, serving), "annotations": annotations},
                "spec": pod_spec(spec, release, track),
            },
        },
    }


def services(spec: KubernetesTargetSpec, model: str, grpc: bool = False) -> list[dict[str, Any]]:
    """The production Service (every serving pod) and the candidate Service (the candidate only); with ``grpc``
    each also has the port ``grpc`` (HTTP/2 in clear text: ``appProtocol: kubernetes.io/h2c``)."""
    http = {"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}
    ports = [http]
    if grpc:
        ports.append({"name": "grpc", "port": spec.service.grpc_port, "targetPort": "grpc", "protocol": "TCP",
                      "appProtocol": "kubernetes.io/h2c"})
    production = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(base_name(model), spec.namespace, common_labels(model)),
        "spec": {"type": spec.service.type, "selector": {"app.kubernetes.io/name": base_name(model),
                                                         f"{PREFIX}serving": "true"}, "ports": ports},
    }
    candidate = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(f"{base_name(model)}-candidate", spec.namespace, common_labels(model)),
        "spec": {"type": "ClusterIP", "selector": selector(model, CANDIDATE), "ports": [dict(p) for p in ports]},
    }
    return [production, candidate]


def config_map(spec: KubernetesTargetSpec, model: str, signing: PodSigning | None = None) -> dict[str, Any]:
    """The init container's script (include/kubernetes/fetch_artifact.py), and the PEM it verifies signatures with."""
    data = {FETCH_SCRIPT: (STATIC_DIR / FETCH_SCRIPT).read_text()}
    if signing is not None:
        data[signing.file_name] = signing.pem
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(model), spec.namespace, common_labels(model)),
        "data": data,
    }


def disruption_budget(spec: KubernetesTargetSpec, model: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(base_name(model), spec.namespace, common_labels(model)),
        "spec": {"maxUnavailable": spec.pdb_max_unavailable, "selector": {"matchLabels": selector(model, STABLE)}},
    }


def shared_objects(spec: KubernetesTargetSpec, model: str, signing: PodSigning | None = None, grpc: bool = False
                   ) -> list[dict[str, Any]]:
    """Objects every version shares, applied before any Deployment (``grpc``: the Services' gRPC port)."""
    shared = [] if spec.model_image is not None else [config_map(spec, model, signing)]
    return [*shared, *services(spec, model, grpc), disruption_budget(spec, model)]


def role_rules() -> list[dict[str, Any]]:
    """The deployer's rules (include/kubernetes/deployer-role.yaml)."""
    rules: list[dict[str, Any]] = yaml.safe_load((STATIC_DIR / ROLE_RULES_FILE).read_text())
    return rules


def rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding for the deployer in one namespace: exactly the verbs it uses."""
    labels = {"app.kubernetes.io/name": DEPLOYER, "app.kubernetes.io/part-of": "model-delivery",
              "app.kubernetes.io/managed-by": MANAGED_BY}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(DEPLOYER, namespace, labels)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(DEPLOYER, namespace, labels),
         "rules": role_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _metadata(DEPLOYER, namespace, labels),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": DEPLOYER},
         "subjects": [{"kind": "ServiceAccount", "name": DEPLOYER, "namespace": namespace}]},
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the fetch script) as literal blocks, so a reviewer reads them as written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream, keys in the order they were built (for review and GitOps)."""
    return "".join("---\n" + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120) for obj in objects)
