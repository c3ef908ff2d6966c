"""Spec section of the ``kubernetes`` deploy target (``deploy.kubernetes`` in model.yaml).

``ResourcesSpec`` and ``Toleration`` are also those of a container build (``build.container``,
``model_delivery.spec.BuildContainerSpec``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Strict):
    """A pod toleration (Kubernetes `tolerations[]`), so pods may run on tainted nodes, e.g. GPU nodes."""

    key: str | None = Field(None, description="Taint key to tolerate, e.g. `nvidia.com/gpu`; empty with Exists: all.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="`Equal` (key and value) or `Exists` (key).")
    value: str | None = Field(None, description="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty: all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="With NoExecute: how long the pod stays bound after the taint appears."
    )

    @model_validator(mode="after")
    def _value_with_equal(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value; remove value or use Equal")
        return self


class ResourcesSpec(_Strict):
    """CPU, memory and GPUs of one container (Kubernetes quantities, e.g. `500m`, `2Gi`)."""

    cpu_request: str = Field("250m", pattern=QUANTITY, description="CPU the scheduler reserves, e.g. `250m`, `2`.")
    cpu_limit: str | None = Field(
        None, pattern=QUANTITY, description="CPU ceiling; empty: no CPU limit (no throttling), the usual choice."
    )
    memory_request: str = Field("512Mi", pattern=QUANTITY, description="Memory the scheduler reserves, e.g. `2Gi`.")
    memory_limit: str | None = Field(
        "1Gi", pattern=QUANTITY, description="Memory ceiling (the container is OOM-killed above it)."
    )
    gpus: int = Field(
        0, ge=0, le=16, description="Whole GPUs per pod, requested as the extended resource `gpu_resource`."
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
        description="Extended resource name of a GPU: `nvidia.com/gpu` (NVIDIA device plugin), `amd.com/gpu`, ...",
    )


class ArtifactFetchSpec(_Strict):
    """The init container that fetches the artifact into the pod and verifies it before the server starts."""

    image: str | None = Field(
        None,
        description="Image of the init container; it runs `include/kubernetes/fetch_artifact.py` with Python and "
        "the `model_server` package (fsspec too for s3:// or gs://; model-signing and pyOpenSSL when `signing` is "
        "not off: `include/serving/signing-requirements.txt`). Empty: the serving `image`.",
    )
    store_uri: str | None = Field(
        None,
        description="The artifact store root as the pods see it (`s3://bucket/prefix`, `https://...`, "
        "`file:///mnt/artifacts`). Empty: MODEL_DELIVERY_ARTIFACT_ROOT as Airflow sees it.",
    )
    credentials_secret: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="Secret in the namespace whose keys become the init container's environment "
        "(e.g. AWS_ACCESS_KEY_ID) to read the store; never mounted into the serving container.",
    )
    store_pvc: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="PersistentVolumeClaim holding a file:// store, mounted read-only at the store_uri path.",
    )
    registry: str | None = Field(
        None,
        pattern=r"^oci://[^/\s]+/[^\s@]+$",
        description="An OCI registry repository, `oci://host[:port]/repository`: staging pushes the artifact there "
        "(one layer per file, ModelPack media types; blobs the registry has are not sent again) and the pods pull "
        "it by its OCI manifest digest and verify it. Empty: the pods read the store (store_uri).",
    )
    registry_insecure: bool = Field(False, description="Speak plain HTTP to the registry (a registry on a "
                                    "trusted network only).")
    registry_conn_id: str | None = Field(
        None, description="Airflow connection whose login and password push to the registry (the pods read it "
        "with OCI_USERNAME and OCI_PASSWORD from credentials_secret). Empty: no credentials.",
    )
    volume_size_limit: str | None = Field(
        None, pattern=QUANTITY, description="Size limit of the emptyDir the artifact is fetched into. Default: the "
        "artifact's size plus 10% and 256Mi (2Gi when the store does not know the artifact)."
    )
    resources: ResourcesSpec = Field(
        default_factory=lambda: ResourcesSpec.model_validate(
            {"cpu_request": "100m", "memory_request": "128Mi", "memory_limit": "256Mi"}),
        description="Resources of the init container (its gpus must be 0). Default: 100m CPU and 128Mi memory "
        "requested, 256Mi memory limit.",
    )

    @field_validator("resources")
    @classmethod
    def _no_gpu(cls, value: ResourcesSpec) -> ResourcesSpec:
        if value.gpus:
            raise ValueError("the fetch init container needs no GPU; set its gpus to 0")
        return value


class CanarySpec(_Strict):
    """A canary: the candidate runs as a second Deployment behind the production Service."""

    replicas: int = Field(
        1, ge=1, le=100,
        description="Canary pods. The share of traffic they get is replicas / (replicas + deploy.kubernetes.replicas).",
    )
    bake_seconds: float = Field(
        0.0, ge=0, le=86400,
        description="How long the canary takes live traffic before it may be promoted (the wait is deferred).",
    )
    max_error_ratio: float = Field(
        0.01, ge=0, le=1,
        description="Promotion is refused when 5xx answers / requests on the canary's /metrics exceed this.",
    )
    min_requests: int = Field(
        1, ge=0, description="The error ratio is judged only after the canary has answered this many requests."
    )


class RolloutSpec(_Strict):
    """How the deployer waits for a rollout."""

    poll_interval_seconds: float = Field(5.0, gt=0, le=300, description="Time between two rollout status reads.")
    timeout_seconds: float = Field(
        1800.0, gt=0, le=86400,
        description="A rollout still progressing this long after its apply fails the step (the Deployment's own "
        "progress deadline usually decides first).",
    )
    wait_in_task_seconds: float = Field(
        15.0, ge=0, le=600,
        description="How long a task polls before it defers the rest of the wait to the triggerer, freeing its "
        "worker slot. Rollback waits this long and then leaves the controller to finish.",
    )
    max_restarts: int = Field(
        2, ge=1, le=100, description="A new pod whose containers restarted this often is crash-looping: fail now."
    )


class ServiceSpec(_Strict):
    """The Services in front of the pods."""

    port: int = Field(80, ge=1, le=65535, description="Port of the Services (production and candidate).")
    grpc_port: int = Field(
        9000, ge=1, le=65535,
        description="With `serving.grpc: true`: the Services' port `grpc` (to the pods' `grpc` port; appProtocol "
        "kubernetes.io/h2c).",
    )
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Production Service type.")


class KubernetesTargetSpec(_Strict):
    """A Deployment with a RollingUpdate strategy in one namespace."""

    namespace: str = Field(
        "default", pattern=DNS_LABEL, max_length=63, description="Namespace the model is deployed to."
    )
    conn_id: str = Field(
        "kubernetes_default", description="Airflow Kubernetes connection (kubeconfig or in-cluster)."
    )
    image: str | None = Field(
        None,
        description="Serving image: runs `python -m model_server` (include/serving) for runtime model_server, "
        "vLLM for runtime vllm (default: the runtime's pinned image, `vllm/vllm-openai`). The artifact is fetched "
        "by an init container. Required for runtime model_server unless model_image is set.",
    )
    model_image: str | None = Field(
        None,
        description="Image with the artifact baked in at model_image_artifact_path: used as it is, with no init "
        "container. The server still verifies the digest before it serves.",
    )
    model_image_artifact_path: str = Field(
        "/model", pattern=r"^/", description="Where model_image holds the artifact (with MANIFEST.json)."
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of every container."
    )
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull the images with.")
    token_secret: str | None = Field(
        None,
        pattern=DNS_LABEL,
        description="With serving.token_conn_id: a Secret in the namespace whose key `token` holds the same bearer "
        "token as that Airflow connection. The serving container reads it from the runtime's token variable "
        "(secretKeyRef: never in the manifest, the records or a command line); its health probes stay open.",
    )
    replicas: int = Field(2, ge=1, le=1000, description="Pods of the production Deployment.")
    max_surge: int | str = Field(
        1, description="RollingUpdate maxSurge: extra pods during a rollout (a number or a percentage like `25%`). "
        "maxUnavailable is always 0, so capacity never drops."
    )
    progress_deadline_seconds: int = Field(
        600, ge=30, le=86400,
        description="The Deployment's progressDeadlineSeconds: a rollout making no progress this long fails.",
    )
    startup_timeout_seconds: int = Field(
        300, ge=10, le=3600, description="How long a server may take to load its model (the startup probe's budget)."
    )
    resources: ResourcesSpec = Field(
        default_factory=lambda: ResourcesSpec.model_validate({}),
        description="Resources of the serving container, GPUs included.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on, e.g. `{nvidia.com/gpu.present: 'true'}`."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Taints the pods tolerate. With gpus and none given: `{key: <gpu_resource>, operator: Exists, "
        "effect: NoSchedule}`.",
    )
    pdb_max_unavailable: int = Field(
        1, ge=1, description="PodDisruptionBudget maxUnavailable for the production pods (voluntary evictions)."
    )
    service: ServiceSpec = Field(
        default_factory=lambda: ServiceSpec.model_validate({}), description="The Services."
    )
    container_port: int = Field(8080, ge=1024, le=65535, description="Port the model server listens on in the pod.")
    container_grpc_port: int = Field(
        9000, ge=1024, le=65535,
        description="With `serving.grpc: true`: port the model server's gRPC listens on in the pod (container port "
        "`grpc`, probed for readiness by a TCP connect).",
    )
    run_as_user: int = Field(10001, ge=1, description="Non-root user id the containers run as.")
    artifact_fetch: ArtifactFetchSpec = Field(
        default_factory=lambda: ArtifactFetchSpec.model_validate({}),
        description="The init container that fetches and verifies the artifact.",
    )
    canary: CanarySpec | None = Field(
        None,
        description="When set, deploy_staging starts the candidate as a canary that takes live traffic through "
        "the production Service; otherwise as a staging Deployment with no live traffic.",
    )
    field_manager: str = Field(
        "model-delivery", min_length=1, max_length=128, description="Server-side apply field manager."
    )
    force_conflicts: bool = Field(
        False,
        description="Server-side apply with force: take over fields another manager owns instead of failing "
        "with a conflict.",
    )
    rollout: RolloutSpec = Field(
        default_factory=lambda: RolloutSpec.model_validate({}), description="How rollouts are awaited."
    )
    staging_url: str = Field(
        "http://{name}-candidate.{namespace}.svc.cluster.local:{port}",
        description="URL the smoke test reaches the candidate at; `{name}`, `{namespace}`, `{port}` are filled in. "
        "Airflow must reach it (in-cluster, or through an ingress or port-forward).",
    )
    production_url: str = Field(
        "http://{name}.{namespace}.svc.cluster.local:{port}",
        description="URL of the production Service for the verify stage; placeholders as staging_url.",
    )
    staging_grpc: str = Field(
        "{name}-candidate.{namespace}.svc.cluster.local:{grpc_port}",
        description="With `serving.grpc: true`: `host:port` the smoke test reaches the candidate's gRPC port at "
        "(`smoke.protocol: grpc`); placeholders as staging_url, and `{grpc_port}` (service.grpc_port).",
    )
    production_grpc: str = Field(
        "{name}.{namespace}.svc.cluster.local:{grpc_port}",
        description="With `serving.grpc: true`: `host:port` of the production Service's gRPC port for the verify "
        "stage; placeholders as staging_grpc.",
    )

    @field_validator("max_surge")
    @classmethod
    def _surge(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("max_surge must be at least 1 (maxUnavailable is 0, so a rollout needs a surge)")
            return value
        if not value.endswith("%") or not value[:-1].isdigit() or not 1 <= int(value[:-1]) <= 100:
            raise ValueError("max_surge must be a whole number >= 1 or a percentage from 1% to 100%, e.g. '25%'")
        return value

    @model_validator(mode="after")
    def _an_image(self) -> KubernetesTargetSpec:
        for url in (self.staging_url, self.production_url):
            try:
                url.format(name="n", namespace="ns", port=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{url!r}: only {{name}}, {{namespace}} and {{port}} may be used ({exc})") from None
        for address in (self.staging_grpc, self.production_grpc):
            try:
                address.format(name="n", namespace="ns", port=1, grpc_port=2)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{address!r}: only {{name}}, {{namespace}}, {{port}} and {{grpc_port}} may be used "
                                 f"({exc})") from None
        if self.container_grpc_port == self.container_port:
            raise ValueError(f"container_grpc_port and container_port are both {self.container_port}: give gRPC "
                             "its own port")
        return self

