"""Notifications: a failed, rejected or rolled-back release is posted to a webhook.

``ReleaseNotifier`` is an Airflow notifier, attached as the ``outcome`` task's
``on_failure_callback`` (that task fails exactly when a release did not go out, or was not
recorded, and is not retried: one message per failed release). The
webhook is an Airflow connection: the spec's ``notify_conn_id``, else
``MODEL_DELIVERY_NOTIFY_CONN_ID``; with neither, nothing is sent. Connection fields:
``host``, ``port``, ``schema`` (http or https), ``extra.endpoint`` (the path), and an
optional ``password`` sent as a bearer token. The token is never logged or recorded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

NOTIFY_ENV = "MODEL_DELIVERY_NOTIFY_CONN_ID"


def webhook_url(conn: Any) -> str:
    """The webhook URL of an http connection (the password is not part of it)."""
    extra = conn.extra_dejson or {}
    scheme = conn.schema or "https"
    port = f":{conn.port}" if conn.port else ""
    endpoint = str(extra.get("endpoint", "/")).lstrip("/")
    return f"{scheme}://{conn.host}{port}/{endpoint}"


def payload(record: dict[str, Any]) -> dict[str, Any]:
    """What is sent: enough to act on, nothing secret."""
    artifact = record.get("artifact") or {}
    return {
        "text": f"{record.get('dag_id')}: release of {record.get('model')} {record.get('outcome')}",
        "model": record.get("model"),
        "dag_id": record.get("dag_id"),
        "run_id": record.get("run_id"),
        "outcome": record.get("outcome"),
        "reasons": record.get("reasons") or [],
        "version": artifact.get("version"),
        "digest": artifact.get("digest"),
        "report": record.get("report"),
    }


class ReleaseNotifier(BaseNotifier):
    """Post the release outcome to the model's webhook connection.

    :param model: the model (templated).
    """

    template_fields = ("model",)

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self.model = model

    def notify(self, context: Context) -> None:
        import httpx
        from airflow.sdk import BaseHook

        from model_delivery.release import ReleaseContext

        rc = ReleaseContext(model=self.model, run_id=context["run_id"], dag_id=context["dag"].dag_id)
        conn_id = rc.spec.notify_conn_id or os.environ.get(NOTIFY_ENV)
        if not conn_id:
            return
        conn = BaseHook.get_connection(conn_id)
        headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
        record = rc.record.load()
        response = httpx.post(webhook_url(conn), json=payload(record), headers=headers, timeout=10)
        response.raise_for_status()
        rc.record.update(notified={"conn_id": conn_id, "status": response.status_code})
        self.log.info("notified %s of %s (HTTP %s)", conn_id, record.get("outcome"), response.status_code)
