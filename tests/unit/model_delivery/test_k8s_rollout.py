"""The rollout state machine on recorded moments of a 3-replica rollout (no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from model_delivery.deploy.kubernetes.rollout import (
    COMPLETE,
    CRASH_LOOPING,
    DEADLINE_EXCEEDED,
    INVALID,
    PROGRESSING,
    RolloutPending,
    label_selector,
    rollout_state,
)
from tests.helpers.k8s_apiserver import fixture


def moment(name: str, replicas: int = 3, generation: int = 4) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    recorded = fixture("rollout", f"{name}.json")
    status = dict(recorded["deployment_status"])
    status["observedGeneration"] = generation if recorded["observed"] else generation - 1
    deployment = {"metadata": {"name": "breast-cancer", "generation": generation}, "spec": {"replicas": replicas},
                  "status": status}
    pods = []
    for number, pod in enumerate(recorded["pods"], start=1):
        pods.append({**pod, "metadata": {**pod["metadata"], "name": f"breast-cancer-7d9f8b6c5d-{number:05d}"}})
    return deployment, pods


@pytest.mark.parametrize(("name", "state", "says"), [
    pytest.param("not-observed", PROGRESSING, "waiting for the spec update to be observed", id="not-observed"),
    pytest.param("progressing", PROGRESSING, "1 out of 3 new replicas have been updated", id="progressing"),
    pytest.param("old-pending-termination", PROGRESSING, "1 old replicas are pending termination", id="old-terminating"),
    pytest.param("updated-not-available", PROGRESSING, "2 of 3 updated replicas are available", id="not-available"),
    pytest.param("unschedulable", PROGRESSING, "Insufficient nvidia.com/gpu", id="waiting-for-a-gpu"),
    pytest.param("image-pull-backoff", PROGRESSING, "ImagePullBackOff", id="image-pull-backoff"),
    pytest.param("complete", COMPLETE, "successfully rolled out (3 available)", id="complete"),
    pytest.param("deadline-exceeded", DEADLINE_EXCEEDED, "exceeded its progress deadline: pod breast-cancer-7d9f8b6c5d"
                 "-00001 is not scheduled: Unschedulable: 0/4 nodes are available", id="deadline-exceeded"),
    pytest.param("crash-looping", CRASH_LOOPING, "model-server is crash-looping (CrashLoopBackOff, 3 restarts, last "
                 "exit code 4): model_server: refusing to start", id="crash-looping"),
    pytest.param("tampered", CRASH_LOOPING, "fetch-artifact refused the artifact (exit code 3): fetch_artifact: "
                 "refusing the artifact", id="tampered"),
    pytest.param("config-error", INVALID, "cannot start: CreateContainerConfigError: secret \"model-store-credentials\"",
                 id="config-error"),
])
def test_rollout_state_of_a_recorded_moment(name: str, state: str, says: str) -> None:
    deployment, pods = moment(name)
    status = rollout_state(deployment, pods, max_restarts=2)
    assert status.state == state
    assert says in status.message
    assert status.failed is (state not in (PROGRESSING, COMPLETE))


def test_an_integrity_refusal_is_marked_tampered_and_a_load_failure_is_not() -> None:
    assert rollout_state(*moment("tampered"), max_restarts=2).tampered
    crashing = rollout_state(*moment("crash-looping"), max_restarts=2)
    assert crashing.exit_code == 4 and not crashing.tampered


def test_restarts_below_the_threshold_are_still_progressing() -> None:
    status = rollout_state(*moment("crash-looping"), max_restarts=4)
    assert status.state == PROGRESSING
    assert any("CrashLoopBackOff" in note for note in status.pods)


def test_a_one_replica_candidate_waits_for_old_pods_like_kubectl() -> None:
    assert "3 old replicas are pending termination" in rollout_state(*moment("progressing", replicas=1),
                                                                     max_restarts=2).message
    assert rollout_state(*moment("complete", replicas=1), max_restarts=2).state == COMPLETE


def test_a_stale_generation_is_never_complete() -> None:
    deployment, pods = moment("complete")
    deployment["status"]["observedGeneration"] = deployment["metadata"]["generation"] - 1
    assert rollout_state(deployment, pods, max_restarts=2).state == PROGRESSING


def test_label_selector_is_sorted_and_the_pending_signal_builds_its_trigger() -> None:
    assert label_selector({"b": "2", "a": "1"}) == "a=1,b=2"
    pending = RolloutPending("waiting", conn_id="k", namespace="ns", deployment="d", pod_selector={"a": "1"},
                             deadline=2_000_000_000.0, poll_interval=5, max_restarts=2)
    classpath, kwargs = pending.trigger().serialize()
    assert classpath == "model_delivery.deploy.kubernetes.trigger.RolloutTrigger"
    assert kwargs == {"conn_id": "k", "namespace": "ns", "deployment": "d", "pod_selector": {"a": "1"},
                      "deadline": 2_000_000_000.0, "poll_interval": 5.0, "max_restarts": 2, "not_before": None}
    assert pending.timeout.total_seconds() > 0
