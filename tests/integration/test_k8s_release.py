"""The full release DAG with the kubernetes target, in dag.test(), up to the API boundary.

Real: Airflow (dag.test with the deferrable rollout wait run by the inline triggerer), the
build, MLflow, the provider's KubernetesHook and AsyncKubernetesHook with the kubernetes
clients over HTTP, the server-side applies, the rollout state machine, the records and the
rollback. At the boundary: the replay API server (tests/helpers/k8s_apiserver.py) answers
with recorded responses and runs no controllers; its PodRunner (tests/helpers/k8s_pods.py)
runs each applied pod template's own commands on this machine (the ConfigMap's fetch script,
then ``python -m model_server``) behind a local front per Service, so smoke and verify send
real requests to a server started exactly as the manifest says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes.client import ApiClient

from model_delivery.store.oci import OciRepository, tag_for
from tests.helpers.k8s_apiserver import connection_env, running
from tests.helpers.k8s_pods import PodRunner
from tests.helpers.k8s_specs import use_kubernetes
from tests.helpers.models import edit_spec, free_port
from tests.helpers.oci_registry import oci_registry
from tests.helpers.release import check_outcome, environ, load_record, release_env, run_release, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
NAMESPACE = "ml-serving"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path) -> Any:
    base = tmp_path_factory.mktemp("k8s-release")
    with release_env(base, (MODEL,)) as models_dir, running() as api:
        ports = {"breast-cancer": free_port(), "breast-cancer-candidate": free_port()}
        runner = PodRunner(base / "pods", ports)
        runner.root.mkdir()
        runner.start_fronts()
        api.on_apply, api.on_delete = runner.on_apply, runner.on_delete
        use_kubernetes(models_dir / MODEL, {
            "namespace": NAMESPACE, "image": "registry.example/model-server:1.0", "replicas": 3,
            "staging_url": f"http://127.0.0.1:{ports['breast-cancer-candidate']}",
            "production_url": f"http://127.0.0.1:{ports['breast-cancer']}",
            "rollout": {"poll_interval_seconds": 0.05, "wait_in_task_seconds": 0},
        })
        try:
            with environ(connection_env(api.kubeconfig(base / "kubeconfig", NAMESPACE))):
                yield models_dir, api, runner
        finally:
            runner.close()


def production_digest(runner: PodRunner) -> str:
    case = json.loads((Path(__file__).resolve().parents[2] / "include" / "models" / MODEL / "golden.json").read_text())[0]
    response = httpx.post(f"http://127.0.0.1:{runner.service_ports['breast-cancer']}/v2/models/{MODEL}/infer",
                          json={"inputs": case["inputs"]}, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-model-digest"]


def test_a_release_rolls_out_through_the_api_and_serves_the_verified_artifact(cluster: Any) -> None:
    models_dir, api, runner = cluster
    api.script("breast-cancer-candidate", ["not-observed", "progressing", "complete"])
    api.script("breast-cancer", ["progressing", "old-pending-termination", "complete"])

    dag_run = run_release(MODEL, {"reason": "first kubernetes release"})

    states = task_states(dag_run)
    assert dag_run.state == "success", (states, runner.log)
    assert states.pop("rollback") == "skipped"
    assert set(states.values()) == {"success"}, states
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "released"
    digest = record["artifact"]["digest"]
    staging, production = record["stages"]["deploy_staging"], record["stages"]["deploy_production"]
    assert staging["result"]["target"] == production["result"]["target"] == "kubernetes"
    assert "successfully rolled out" in production["result"]["rollout"]
    # the rollout waits were deferred: the trigger read the API through kubernetes_asyncio (AsyncKubernetesHook)
    sync_agent = ApiClient().user_agent
    assert any(r.method == "GET" and r.headers["user-agent"] != sync_agent for r in api.requests)
    applied = api.stored("deployments", "breast-cancer", NAMESPACE)
    assert applied["spec"]["template"]["metadata"]["annotations"]["model-delivery.io/digest"] == digest
    assert api.stored("deployments", "breast-cancer-candidate", NAMESPACE) is None
    assert any("init fetch-artifact: exit 0: fetch_artifact: verified" in line for line in runner.log)
    assert production_digest(runner) == digest


def test_a_failed_production_rollout_is_rolled_back_to_the_recorded_previous_version(cluster: Any) -> None:
    models_dir, api, runner = cluster
    before = production_digest(runner)
    edit_spec(models_dir / MODEL, lambda spec: spec["build"]["params"].update(C=0.5))  # a new version
    api.script("breast-cancer-candidate", ["complete"])
    # production: this release's generation misses its progress deadline; the rollback's generation completes
    api.script("breast-cancer", ["progressing", "deadline-exceeded"], ["complete"])

    dag_run = run_release(MODEL, {"reason": "this rollout misses its deadline"})

    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["deploy_production"] == "failed" and states["rollback"] == "success", states
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rolled-back"
    check_outcome(dag_run, "rolled-back")
    assert any(r.startswith("deploy_production:") and "exceeded its progress deadline" in r for r in record["reasons"])
    assert record["stages"]["rollback"]["result"]["action"] == "reapplied-previous"
    assert record["artifact"]["digest"] != before
    applied = api.stored("deployments", "breast-cancer", NAMESPACE)
    assert applied["spec"]["template"]["metadata"]["annotations"]["model-delivery.io/digest"] == before
    assert production_digest(runner) == before


def test_the_pods_pull_the_artifact_from_an_oci_registry_by_digest(cluster: Any, tmp_path: Path) -> None:
    models_dir, api, runner = cluster
    with oci_registry(tmp_path / "registry") as registry:
        repository = registry.uri(f"models/{MODEL}")

        def through_the_registry(spec: dict[str, Any]) -> None:
            spec["deploy"]["kubernetes"]["artifact_fetch"] = {"registry": repository, "registry_insecure": True}
            spec["build"]["params"].update(C=0.5, max_iter=1001)  # a new version (the pickle holds max_iter)

        edit_spec(models_dir / MODEL, through_the_registry)
        api.script("breast-cancer-candidate", ["complete"])
        api.script("breast-cancer", ["progressing", "complete"])

        dag_run = run_release(MODEL, {"reason": "the pods pull from the registry"})

        assert dag_run.state == "success", (task_states(dag_run), runner.log[-20:])
        digest = load_record(MODEL, dag_run.run_id)["artifact"]["digest"]
        applied = api.stored("deployments", "breast-cancer", NAMESPACE)
        (init,) = applied["spec"]["template"]["spec"]["initContainers"]
        uri = init["args"][init["args"].index("--uri") + 1]
        assert uri.startswith(f"{repository}@sha256:") and "--insecure" in init["args"] and "--blobs" not in init["args"]
        pulled = [(m, p) for m, p, status in registry.requests() if m == "GET" and status == 200]
        assert ("GET", f"/v2/models/{MODEL}/manifests/{uri.split('@')[1]}") in pulled  # by its OCI digest
        assert OciRepository(repository, insecure=True).exists(digest)
        assert production_digest(runner) == digest


def test_with_an_oci_artifact_root_the_pods_pull_from_it_by_digest(cluster: Any, tmp_path: Path) -> None:
    """``MODEL_DELIVERY_ARTIFACT_ROOT=oci://…``: the build stores in the registry, nothing is pushed at staging, and
    each pod's init container resolves the artifact in that repository from its digest, pulls and verifies it."""
    models_dir, api, runner = cluster
    with oci_registry(tmp_path / "registry") as registry:
        root = registry.uri("store")

        def from_the_root(spec: dict[str, Any]) -> None:
            spec["deploy"]["kubernetes"]["artifact_fetch"] = {"registry_insecure": True}  # no registry to push to
            spec["build"]["params"].update(C=0.25, max_iter=1002)  # a new version

        edit_spec(models_dir / MODEL, from_the_root)
        api.script("breast-cancer-candidate", ["complete"])
        api.script("breast-cancer", ["progressing", "complete"])

        with environ({"MODEL_DELIVERY_ARTIFACT_ROOT": root}):
            dag_run = run_release(MODEL, {"reason": "the store is a registry"})
            assert dag_run.state == "success", (task_states(dag_run), runner.log[-20:])
            digest = load_record(MODEL, dag_run.run_id)["artifact"]["digest"]

        applied = api.stored("deployments", "breast-cancer", NAMESPACE)
        (init,) = applied["spec"]["template"]["spec"]["initContainers"]
        args = init["args"]
        assert args[args.index("--uri") + 1] == root and args[args.index("--digest") + 1] == digest
        assert "--insecure" in args and "--blobs" not in args
        requests = registry.requests()
        assert ("GET", f"/v2/store/manifests/{tag_for(digest)}", 200) in requests  # resolved from the digest
        assert any("init fetch-artifact: exit 0: fetch_artifact: verified" in line for line in runner.log[-40:])
        assert production_digest(runner) == digest
