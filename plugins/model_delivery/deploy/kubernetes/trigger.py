"""RolloutTrigger: wait for a Deployment's rollout in the triggerer, not in a worker slot.

It reads the Deployment and the pods of its new template every ``poll_interval`` seconds
through the provider's ``AsyncKubernetesHook`` (same connection as the task), judges them
with :func:`~model_delivery.deploy.kubernetes.rollout.rollout_state`, and fires once the rollout is
complete (and ``not_before`` has passed: a canary's bake time), has failed, or ``deadline``
(epoch seconds) has passed. The task then runs its step again and decides.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from model_delivery.deploy.kubernetes.client import KubernetesUnavailable, aget, object_path
from model_delivery.deploy.kubernetes.rollout import COMPLETE, TIMEOUT, label_selector, rollout_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class RolloutTrigger(BaseTrigger):
    """Fire when a rollout is over: complete, failed, or past its deadline.

    :param conn_id: Airflow Kubernetes connection.
    :param namespace: the Deployment's namespace.
    :param deployment: the Deployment's name.
    :param pod_selector: labels of the new template's pods.
    :param deadline: epoch seconds after which the wait ends as ``timeout``.
    :param poll_interval: seconds between two reads.
    :param max_restarts: restarts after which a new pod counts as crash-looping.
    :param not_before: epoch seconds before which a complete rollout does not fire (canary bake).
    """

    def __init__(self, conn_id: str, namespace: str, deployment: str, pod_selector: dict[str, str], deadline: float,
                 poll_interval: float, max_restarts: int, not_before: float | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.namespace = namespace
        self.deployment = deployment
        self.pod_selector = dict(pod_selector)
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)
        self.max_restarts = int(max_restarts)
        self.not_before = None if not_before is None else float(not_before)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "conn_id": self.conn_id, "namespace": self.namespace, "deployment": self.deployment,
            "pod_selector": self.pod_selector, "deadline": self.deadline, "poll_interval": self.poll_interval,
            "max_restarts": self.max_restarts, "not_before": self.not_before,
        })

    async def _read(self, hook: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        where: dict[str, Any] = {"namespace": self.namespace, "model": self.deployment}
        async with hook.get_conn() as api:
            deployment = await aget(api, object_path("apps/v1", "Deployment", self.namespace, self.deployment),
                                    verb="get", resource="deployments.apps", name=self.deployment, **where)
            pods = await aget(api, object_path("v1", "Pod", self.namespace), verb="list", resource="pods", name=None,
                              query=[("labelSelector", label_selector(self.pod_selector))], **where)
        return deployment, pods.get("items") or []

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from aiohttp import ClientError
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        hook = AsyncKubernetesHook(conn_id=self.conn_id)
        while True:
            try:
                deployment, pods = await self._read(hook)
            except (KubernetesUnavailable, ClientError, asyncio.TimeoutError) as exc:
                self.log.warning("reading the rollout of %s failed, trying again: %s", self.deployment, exc)
            except Exception as exc:  # noqa: BLE001 - a 403 or 404 will not heal: let the task report it
                yield TriggerEvent({"state": "error", "message": str(exc)})
                return
            else:
                status = rollout_state(deployment, pods, max_restarts=self.max_restarts)
                self.log.info("%s", status.message)
                baked = self.not_before is None or time.time() >= self.not_before
                if status.failed or (status.state == COMPLETE and baked):
                    yield TriggerEvent(status.to_dict())
                    return
            if time.time() >= self.deadline:
                yield TriggerEvent({"state": TIMEOUT, "message": f"deployment {self.deployment!r} did not finish "
                                    "its rollout before the deadline"})
                return
            await asyncio.sleep(self.poll_interval)
