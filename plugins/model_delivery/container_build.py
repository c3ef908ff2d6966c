"""Builds in a container: ``build.container`` in model.yaml runs the entrypoint in an image.

``runner: kubernetes`` runs a pod through the cncf.kubernetes provider's KubernetesPodOperator
(resources, GPUs, node selector and tolerations from the spec); the pod uploads its outputs to
a staging directory of the artifact store, and the task imports them. ``runner: docker`` runs
a container through the docker provider's DockerOperator (GPUs as a device request) with the
outputs bind-mounted on the worker. Either way the outputs then go through the same steps as a
local build (``release.build``): stored by digest, registered, recorded. Without
``build.container`` the build runs locally as before (``BuildModelOperator``).

The container runs the same launcher as a process build, ``include/build/launch.py``
(``python -c``), with the same declared environment (``model_delivery.build_env``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from typing import TYPE_CHECKING, Any

from model_delivery.build_env import LAUNCHER, declare
from model_delivery.deploy.kubernetes.manifests import (
    base_name,
    container_security,
    resources,
    tolerations,
)
from model_delivery.operators.build import BuildModelOperator

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context, ObjectStoragePath

    from model_delivery.build import BuildOutputs
    from model_delivery.release import ReleaseContext
    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec

MARKER = "_OUTPUTS.json"
OUT = "/out"
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes (``2Gi`` -> 2147483648), for Docker's mem_limit."""
    found = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity)
    if not found or found[2] not in _UNITS:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(found[1]) * _UNITS[found[2]])


def quantity_cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity as a number of CPUs (``500m`` -> 0.5), for Docker's cpus."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def container_args(spec: ModelSpec, upload_to: str | None) -> list[str]:
    """Arguments of the build script: the entrypoint contract, and where to hand the outputs back."""
    assert spec.build.container is not None
    args = ["--model-dir", spec.build.container.model_dir, "--entrypoint", spec.build.entrypoint,
            "--params", json.dumps(spec.build.params, sort_keys=True),
            "--env", json.dumps(declare(spec.name, spec.build), sort_keys=True), "--output-dir", OUT]
    return [*args, "--upload-to", upload_to] if upload_to else args


def staging_uris(spec: ModelSpec, settings: Settings, run_id: str, try_number: int) -> tuple[str, str, str | None]:
    """The build's staging directory: as Airflow reads it, as the build container writes it, and the connection
    Airflow reads it with.

    Under the artifact root, or under the records root when the artifact root is an OCI registry (a registry
    holds artifacts only; the container cannot upload loose files to it).
    """
    from model_delivery.store import safe_segment
    from model_delivery.store.layout import is_registry, records_location

    assert spec.build.container is not None
    root, conn_id = settings.artifact_root, settings.artifact_conn_id
    if is_registry(root):
        root, conn_id = records_location(root, conn_id, settings.home, settings.records_root)
    rel = f"{spec.name}/.builds/{safe_segment(run_id)}-try{try_number}"
    inside = (spec.build.container.store_uri or root).rstrip("/")
    return f"{root.rstrip('/')}/{rel}", f"{inside}/{rel}", conn_id


def pod_operator(spec: ModelSpec, task_id: str, upload_to: str) -> Any:
    """The KubernetesPodOperator that runs the build pod."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    container = spec.build.container
    assert container is not None
    requested = resources(container.resources)
    security = container_security_for_build()
    return KubernetesPodOperator(
        task_id=f"{task_id}_pod",
        name=f"build-{base_name(spec.name)}",
        namespace=container.namespace,
        kubernetes_conn_id=container.conn_id or "kubernetes_default",
        image=container.image,
        cmds=["python", "-c", LAUNCHER.read_text()],
        arguments=container_args(spec, upload_to),
        container_resources=k8s.V1ResourceRequirements(requests=requested["requests"], limits=requested.get("limits")),
        node_selector=dict(container.node_selector) or None,
        tolerations=[k8s.V1Toleration(key=t.get("key"), operator=t["operator"], value=t.get("value"),
                                      effect=t.get("effect"), toleration_seconds=t.get("tolerationSeconds"))
                     for t in tolerations(container.tolerations, container.resources)] or None,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=container.credentials_secret))]
        if container.credentials_secret else None,
        env_vars=[k8s.V1EnvVar(name="HOME", value="/tmp"), k8s.V1EnvVar(name="TMPDIR", value="/tmp")],
        volumes=[k8s.V1Volume(name="out", empty_dir=k8s.V1EmptyDirVolumeSource()),
                 k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
        volume_mounts=[k8s.V1VolumeMount(name="out", mount_path=OUT), k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                                  fs_group=10001, seccomp_profile=k8s.V1SeccompProfile(
                                                      type="RuntimeDefault")),
        container_security_context=security,
        automount_service_account_token=False,
        labels={"app.kubernetes.io/name": f"build-{base_name(spec.name)}", "app.kubernetes.io/part-of": "model-delivery",
                "model-delivery.io/model": spec.name},
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=600,
        active_deadline_seconds=spec.build.timeout_seconds,
    )


def container_security_for_build() -> dict[str, Any]:
    """The build container's security context: non-root, no privilege escalation, read-only root (/out, /tmp)."""
    from model_delivery.deploy.kubernetes.spec import KubernetesTargetSpec

    return container_security(KubernetesTargetSpec.model_validate({"image": "unused"}))


def docker_operator(spec: ModelSpec, task_id: str, host_out: Path) -> Any:
    """The DockerOperator that runs the build container with the outputs bind-mounted at /out."""
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    container = spec.build.container
    assert container is not None
    limits = container.resources
    return DockerOperator(
        task_id=f"{task_id}_container",
        image=container.image,
        command=["python", "-c", LAUNCHER.read_text(), *container_args(spec, None)],
        docker_conn_id=container.conn_id,
        mounts=[Mount(target=OUT, source=str(host_out), type="bind")],
        device_requests=[DeviceRequest(count=limits.gpus, capabilities=[["gpu"]])] if limits.gpus else None,
        mem_limit=quantity_bytes(limits.memory_limit) if limits.memory_limit else None,
        cpus=quantity_cpus(limits.cpu_limit or limits.cpu_request),
        user=f"{os.getuid()}:{os.getgid()}",
        environment={"HOME": "/tmp", "TMPDIR": "/tmp"},
        mount_tmp_dir=False,
        auto_remove="success",
        execution_timeout=None,
    )


def import_outputs(spec: ModelSpec, staging: ObjectStoragePath, work_dir: Path) -> BuildOutputs:
    """Copy a container build's uploaded outputs to ``work_dir/out`` and check them like a local build's."""
    from model_delivery.build import _check_outputs
    from model_delivery.exceptions import BuildFailed

    marker = staging / MARKER
    if not marker.exists():
        raise BuildFailed(f"the build container of {spec.name!r} finished but uploaded no outputs to {staging} "
                          f"({MARKER} is missing). Fix: give the build image fsspec for the store, and "
                          "build.container.store_uri / credentials_secret so the pod can write to it.")
    out = work_dir / "out"
    for rel in json.loads(marker.read_text())["files"]:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with (staging / rel).open("rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    return _check_outputs(spec, work_dir, out)


class ContainerBuildOperator(BuildModelOperator):
    """Build the model in its build image (KubernetesPodOperator or DockerOperator), then store and register it.

    :param model: the model (its spec has ``build.container``).
    """

    ui_color = "#aed6f1"

    def execute(self, context: Context) -> dict[str, Any]:
        self._airflow_context = context
        return super().execute(context)

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import build, check_before_build

        check_before_build(rc)
        spec = rc.spec
        assert spec.build.container is not None
        work_dir = rc.settings.scratch_dir / spec.name / uuid.uuid4().hex
        if spec.build.container.runner == "docker":
            out = work_dir / "out"
            out.mkdir(parents=True)
            docker_operator(spec, self.task_id, out).execute(self._airflow_context)
            from model_delivery.build import _check_outputs

            outputs = _check_outputs(spec, work_dir, out)
        else:
            from airflow.sdk import ObjectStoragePath

            try_number = int(self._airflow_context["ti"].try_number)
            ours, theirs, conn_id = staging_uris(spec, rc.settings, rc.run_id, try_number)
            pod_operator(spec, self.task_id, theirs).execute(self._airflow_context)
            staging = ObjectStoragePath(ours, conn_id=conn_id)
            try:
                outputs = import_outputs(spec, staging, work_dir)
            finally:
                if staging.exists():
                    staging.fs.rm(staging.path, recursive=True)
        return build(rc, outputs=outputs)


def build_operator(spec: ModelSpec) -> type[BuildModelOperator]:
    """The build stage's operator: in a container when the spec names an image, locally otherwise."""
    return ContainerBuildOperator if spec.build.container is not None else BuildModelOperator
