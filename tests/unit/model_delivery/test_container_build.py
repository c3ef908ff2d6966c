"""Builds in a container: the pod or container the providers would start, and the hand-back of the outputs.

There is no Docker engine and no cluster here, so the operators are checked up to the point
where they would call out (the pod request KubernetesPodOperator builds, validated against the
OpenAPI schemas; the DockerOperator's settings), and the build script the container runs is run
here for real, uploading to a file:// store that the task then imports.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from model_delivery.container_build import (
    ContainerBuildOperator,
    build_operator,
    container_args,
    docker_operator,
    import_outputs,
    pod_operator,
    quantity_bytes,
    quantity_cpus,
    staging_uris,
)
from model_delivery.dag_factory import release_dag
from model_delivery.exceptions import BuildFailed
from model_delivery.operators import BuildModelOperator
from model_delivery.release import ReleaseContext, build
from model_delivery.settings import Settings
from model_delivery.spec import ModelSpec
from tests.helpers.k8s_apiserver import connection_env, running
from tests.helpers.k8s_specs import CPU, k8s_raw
from tests.unit.model_delivery.conftest import Builds

SCRIPT = Path(__file__).resolve().parents[3] / "include" / "build" / "launch.py"
K8S_VERSIONS = ("1.29.0", "1.37.0")
GPU_BUILD = {"image": "registry.example/breast-cancer-build:3", "namespace": "ml-build",
             "store_uri": "s3://models-bucket/delivery", "credentials_secret": "model-store-credentials",
             "resources": {"cpu_request": "4", "memory_request": "16Gi", "memory_limit": "16Gi", "gpus": 2},
             "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}}


def spec_with(container: dict[str, Any] | None) -> ModelSpec:
    raw = k8s_raw(CPU)
    if container is not None:
        raw["build"]["container"] = container
    return ModelSpec.model_validate(raw)


def test_the_dag_builds_in_a_container_only_when_the_spec_names_an_image() -> None:
    assert build_operator(spec_with(None)) is BuildModelOperator
    assert build_operator(spec_with(GPU_BUILD)) is ContainerBuildOperator
    assert type(release_dag(spec_with(GPU_BUILD)).get_task("build")) is ContainerBuildOperator
    assert type(release_dag(spec_with(None)).get_task("build")) is BuildModelOperator


@pytest.fixture
def kube_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The build connection (kubernetes_default) as a kubeconfig for a replay server; building a pod calls nothing."""
    with running() as api:
        for key, value in connection_env(api.kubeconfig(tmp_path / "kubeconfig", "ml-build")).items():
            monkeypatch.setenv(key, value)
        yield api
    assert api.requests == []


def pod_dict(spec: ModelSpec) -> dict[str, Any]:
    operator = pod_operator(spec, "build", "s3://models-bucket/delivery/breast_cancer/.builds/run-try1")
    pod: dict[str, Any] = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj())
    return pod


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_build_pod_is_valid_and_gets_the_gpus_of_the_spec(version: str, kube_connection: Any) -> None:
    pod = pod_dict(spec_with(GPU_BUILD))
    kubernetes_validate.validate(pod, version, strict=True)
    assert pod["metadata"]["namespace"] == "ml-build"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example/breast-cancer-build:3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["command"][:2] == ["python", "-c"] and container["command"][2] == SCRIPT.read_text()
    assert container["args"][-2:] == ["--upload-to", "s3://models-bucket/delivery/breast_cancer/.builds/run-try1"]
    assert container["envFrom"] == [{"secretRef": {"name": "model-store-credentials"}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["activeDeadlineSeconds"] == 600  # build.timeout_seconds of breast_cancer


def test_the_docker_build_requests_the_gpus_and_mounts_the_outputs(tmp_path: Path) -> None:
    operator = docker_operator(spec_with({**GPU_BUILD, "runner": "docker"}), "build", tmp_path)
    (request,) = operator.device_requests
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]
    (mount,) = operator.mounts
    assert mount["Target"] == "/out" and mount["Source"] == str(tmp_path) and mount["Type"] == "bind"
    assert operator.mem_limit == 16 * 2**30
    assert operator.cpus == 4.0
    assert operator.command[3:] == container_args(spec_with(GPU_BUILD), None)
    cpu_only = docker_operator(spec_with({"image": "registry.example/b:1", "runner": "docker"}), "build", tmp_path)
    assert cpu_only.device_requests is None


@pytest.mark.parametrize(("quantity", "bytes_", "cpus"), [
    pytest.param("512Mi", 512 * 2**20, None, id="Mi"),
    pytest.param("2G", 2 * 10**9, None, id="G"),
    pytest.param("1500m", None, 1.5, id="millicores"),
    pytest.param("2", 2, 2.0, id="plain"),
])
def test_quantities(quantity: str, bytes_: int | None, cpus: float | None) -> None:
    if bytes_ is not None:
        assert quantity_bytes(quantity) == bytes_
    if cpus is not None:
        assert quantity_cpus(quantity) == cpus


@pytest.mark.parametrize("kernel", [
    pytest.param(None, id="machine-default"),
    # Not this machine's default kernel: the process build used to drop OPENBLAS_* while the container
    # inherited them, so the two builds ran different kernels and gave different bytes.
    pytest.param("Prescott", id="OPENBLAS_CORETYPE-set", marks=pytest.mark.skipif(
        platform.machine() != "x86_64", reason="Prescott is an x86_64 OpenBLAS kernel")),
])
def test_outputs_handed_back_by_the_build_container_become_the_same_artifact(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str | None
) -> None:
    """The same declared environment on the same machine gives the same digest, whichever runner built it."""
    from model_delivery.build import run_build
    from model_server.manifest import build_manifest, manifest_digest

    if kernel:
        monkeypatch.setenv("OPENBLAS_CORETYPE", kernel)
    model_dir = Path(__file__).resolve().parents[3] / "include" / "models" / "breast_cancer"
    spec = spec_with({"image": "registry.example/b:1", "model_dir": str(model_dir)})
    settings = Settings(home=tmp_path / "home", models_dir=model_dir.parent,
                        artifact_root=builds.store_root, artifact_conn_id=None,
                        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    ours, theirs, _ = staging_uris(spec, settings, "manual__2026-11-26T10:00:00+00:00", 1)
    assert ours == theirs == f"{builds.store_root}/breast_cancer/.builds/manual__2026-11-26T10_00_00_00_00-try1"
    process = builds.v1.digest if kernel is None else manifest_digest(
        build_manifest(run_build(spec, model_dir, tmp_path / "process", log=lambda line: None).model_dir))

    # what the container runs (its python, its model folder, its environment), uploading to the store
    done = subprocess.run([sys.executable, "-c", SCRIPT.read_text(), *container_args(spec, theirs)[:-4],
                           "--output-dir", str(tmp_path / "container-out"), "--upload-to", theirs],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "uploaded" in done.stdout

    from airflow.sdk import ObjectStoragePath

    outputs = import_outputs(spec, ObjectStoragePath(ours), tmp_path / "work")
    assert {b["architecture"] for b in outputs.environment["blas"]} != {None}  # the container's probe came back
    rc = ReleaseContext(model="breast_cancer", run_id="container-build", dag_id="release__breast_cancer",
                        log=lambda *a: None, settings=settings)
    rc.__dict__["spec"] = spec
    result = build(rc, outputs=outputs)
    assert result["digest"] == process  # the same training in the same environment: the same artifact
    assert result["version"] == "1"
    assert result["build_env"]["env"].get("OPENBLAS_CORETYPE") == (kernel or os.environ.get("OPENBLAS_CORETYPE"))


def test_store_credentials_of_the_build_pod_never_reach_the_entrypoint(tmp_path: Path) -> None:
    """The pod's env_from secret is for the launcher's upload; the entrypoint gets only the declared environment."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "train.py").write_text(
        "import json, os, sys\nfrom pathlib import Path\nout = Path(sys.argv[sys.argv.index('--output-dir') + 1])\n"
        "(out / 'model').mkdir(parents=True)\n(out / 'model' / 'env.json').write_text(json.dumps(dict(os.environ)))\n")
    spec = spec_with({"image": "b:1", "model_dir": str(model)})
    args = container_args(spec, None)
    declared = json.loads(args[args.index("--env") + 1])
    assert declared["set"]["OMP_NUM_THREADS"] == "1" and declared["set"]["PYTHONHASHSEED"] == "0"
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "TMPDIR": str(tmp_path), "AWS_SECRET_ACCESS_KEY": "hunter2",
           "AWS_ACCESS_KEY_ID": "key"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.read_text(), *args[:-2], "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads((tmp_path / "out" / "model" / "env.json").read_text())
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "AWS_ACCESS_KEY_ID" not in seen
    assert seen["OMP_NUM_THREADS"] == "1" and seen["MODEL_DELIVERY_MODEL"] == spec.name
    assert json.loads((tmp_path / "out" / "build_env.json").read_text())["python"]["version"] == platform.python_version()


def test_a_build_container_that_uploaded_nothing_fails_with_the_fix(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    (tmp_path / "staging").mkdir()
    with pytest.raises(BuildFailed, match="_OUTPUTS.json is missing"):
        import_outputs(spec_with({"image": "b:1"}), ObjectStoragePath(f"file://{tmp_path}/staging"), tmp_path / "w")


def test_a_failing_entrypoint_fails_the_container(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "train.py").write_text("import sys; sys.exit(7)\n")
    done = subprocess.run([sys.executable, "-c", SCRIPT.read_text(), "--model-dir", str(model), "--entrypoint",
                           "train.py", "--params", json.dumps({}), "--output-dir", str(tmp_path / "out"),
                           "--upload-to", f"file://{tmp_path}/staging"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7
    assert not (tmp_path / "staging").exists()


@pytest.mark.parametrize(("records_root", "expected_root", "expected_conn"), [
    (None, "file://{home}/records", None),
    ("s3://team-records/md", "s3://team-records/md", None),
])
def test_with_a_registry_as_the_store_the_build_stages_under_the_records_root(
    tmp_path: Path, records_root: str | None, expected_root: str, expected_conn: str | None
) -> None:
    """An OCI registry holds artifacts only: the build container hands its outputs back through the records root."""
    spec = spec_with({"image": "registry.example/b:1"})
    settings = Settings(home=tmp_path / "home", models_dir=tmp_path, artifact_root="oci://127.0.0.1:5000/models",
                        artifact_conn_id="registry", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        records_root=records_root)

    ours, theirs, conn_id = staging_uris(spec, settings, "manual__1", 2)

    root = expected_root.format(home=tmp_path / "home")
    assert ours == theirs == f"{root}/breast_cancer/.builds/manual__1-try2"
    assert conn_id == expected_conn  # the registry's connection is not the records store's
    with_store_uri = spec_with({"image": "registry.example/b:1", "store_uri": "s3://mounted/records"})
    assert staging_uris(with_store_uri, settings, "manual__1", 2)[1] == "s3://mounted/records/breast_cancer/.builds/manual__1-try2"
