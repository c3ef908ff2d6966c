"""The rollout state machine: a Deployment's status and its new pods -> where the rollout is.

Pure functions over the API's JSON (dicts), so they are tested without HTTP and shared by the
task (sync client) and the trigger (async client). The Deployment part follows
``kubectl rollout status`` exactly (observedGeneration, updatedReplicas, replicas,
availableReplicas, and the ``Progressing`` condition's ``ProgressDeadlineExceeded``); the pod
part fails fast on what never heals by waiting: crash loops, a container refusing the artifact
(exit code 3), a configuration the kubelet cannot run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_delivery.deploy.kubernetes.trigger import RolloutTrigger

PROGRESSING = "progressing"
COMPLETE = "complete"
DEADLINE_EXCEEDED = "deadline-exceeded"
CRASH_LOOPING = "crash-looping"
INVALID = "invalid"
TIMEOUT = "timeout"
FAILED = (DEADLINE_EXCEEDED, CRASH_LOOPING, INVALID, TIMEOUT)

EXIT_INTEGRITY = 3  # model_server and fetch_artifact.py: the artifact does not match its digest
NEVER_HEALS = ("InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError")
PULL_TROUBLE = ("ErrImagePull", "ImagePullBackOff")


@dataclass(frozen=True)
class RolloutStatus:
    """Where one Deployment's rollout is.

    :param state: progressing, complete, deadline-exceeded, crash-looping, invalid (or timeout, set by the waiter).
    :param message: what a person should read.
    :param exit_code: the last exit code of a failing container, when one is known.
    :param container: that container's name.
    :param pods: short notes on the new pods that are not running well (pending, pulling, restarting).
    """

    state: str
    message: str
    exit_code: int | None = None
    container: str | None = None
    pods: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.state in FAILED

    @property
    def tampered(self) -> bool:
        return self.exit_code == EXIT_INTEGRITY

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_selector(labels: dict[str, str]) -> str:
    """``k=v,k2=v2`` for the API's labelSelector parameter (sorted, so requests are stable)."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _terminated(container: dict[str, Any]) -> dict[str, Any]:
    state, last = container.get("state") or {}, container.get("lastState") or {}
    return state.get("terminated") or last.get("terminated") or {}


def _container_problem(pod_name: str, container: dict[str, Any], max_restarts: int) -> RolloutStatus | None:
    name = container.get("name", "?")
    waiting = (container.get("state") or {}).get("waiting") or {}
    terminated = _terminated(container)
    code = terminated.get("exitCode")
    said = (terminated.get("message") or "").strip()
    tail = f": {said.splitlines()[-1]}" if said else ""
    if waiting.get("reason") in NEVER_HEALS:
        return RolloutStatus(INVALID, f"pod {pod_name}: container {name} cannot start: {waiting['reason']}: "
                             f"{waiting.get('message', '')}".rstrip(": "), container=name)
    if code == EXIT_INTEGRITY:
        return RolloutStatus(CRASH_LOOPING, f"pod {pod_name}: container {name} refused the artifact (exit code 3)"
                             f"{tail}", exit_code=code, container=name)
    restarts = int(container.get("restartCount") or 0)
    if restarts >= max_restarts:
        reason = waiting.get("reason") or "restarting"
        return RolloutStatus(CRASH_LOOPING, f"pod {pod_name}: container {name} is crash-looping ({reason}, "
                             f"{restarts} restarts, last exit code {code}){tail}", exit_code=code, container=name)
    return None


def _pod_note(pod: dict[str, Any]) -> str | None:
    """Why a new pod is not running yet, if the API says (unschedulable, pulling, restarting)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    scheduled = _condition(pod.get("status") or {}, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return f"pod {name} is not scheduled: {scheduled.get('reason')}: {scheduled.get('message', '')}"
    for container in _statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in PULL_TROUBLE or waiting.get("reason") == "CrashLoopBackOff":
            return f"pod {name}: {container.get('name')}: {waiting['reason']}: {waiting.get('message', '')}"
    return None


def pods_problem(pods: list[dict[str, Any]], max_restarts: int) -> RolloutStatus | None:
    """The first new pod that will not get better by waiting, if any."""
    for pod in pods:
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        for container in _statuses(pod):
            problem = _container_problem(pod_name, container, max_restarts)
            if problem:
                return problem
    return None


def rollout_state(deployment: dict[str, Any], pods: list[dict[str, Any]], *, max_restarts: int) -> RolloutStatus:
    """Judge a rollout from the Deployment (with status) and the pods of its new template."""
    name = (deployment.get("metadata") or {}).get("name", "?")
    notes = [note for note in map(_pod_note, pods) if note]
    problem = pods_problem(pods, max_restarts)
    if problem:
        return RolloutStatus(problem.state, f"deployment {name!r}: {problem.message}", problem.exit_code,
                             problem.container, notes)
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if generation > int(status.get("observedGeneration") or 0):
        return RolloutStatus(PROGRESSING, f"deployment {name!r}: waiting for the spec update to be observed", pods=notes)
    progressing = _condition(status, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        why = "; ".join(notes) if notes else progressing.get("message", "")
        return RolloutStatus(DEADLINE_EXCEEDED, f"deployment {name!r} exceeded its progress deadline: {why}", pods=notes)
    wanted = int((deployment.get("spec") or {}).get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    replicas = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        message = f"{updated} out of {wanted} new replicas have been updated"
    elif replicas > updated:
        message = f"{replicas - updated} old replicas are pending termination"
    elif available < updated:
        message = f"{available} of {updated} updated replicas are available"
    else:
        return RolloutStatus(COMPLETE, f"deployment {name!r} successfully rolled out ({available} available)")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return RolloutStatus(PROGRESSING, f"deployment {name!r}: waiting for rollout to finish: {message}{suffix}",
                         pods=notes)


class RolloutPending(Exception):  # noqa: N818 - a signal, not an error
    """A rollout is still progressing after the task's short in-task wait: wait in the triggerer.

    The operator defers with :meth:`trigger`; when the trigger fires, the step runs again. It is
    idempotent (the apply changes nothing the second time) and finds the rollout over.
    """

    def __init__(self, message: str, *, conn_id: str, namespace: str, deployment: str, pod_selector: dict[str, str],
                 deadline: float, poll_interval: float, max_restarts: int, not_before: float | None = None) -> None:
        super().__init__(message)
        self.trigger_kwargs: dict[str, Any] = {
            "conn_id": conn_id, "namespace": namespace, "deployment": deployment, "pod_selector": pod_selector,
            "deadline": deadline, "poll_interval": poll_interval, "max_restarts": max_restarts,
            "not_before": not_before,
        }

    def trigger(self) -> RolloutTrigger:
        from model_delivery.deploy.kubernetes.trigger import RolloutTrigger

        return RolloutTrigger(**self.trigger_kwargs)

    @property
    def timeout(self) -> timedelta:
        """A backstop for the deferral; the trigger itself reports the deadline first."""
        left = float(self.trigger_kwargs["deadline"]) - time.time()
        return timedelta(seconds=max(left, 0.0) + float(self.trigger_kwargs["poll_interval"]) + 120)
