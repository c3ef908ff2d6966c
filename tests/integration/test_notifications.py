"""A rejected release is posted to a webhook (an Airflow http connection) by the release notifier."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.models import edit_spec
from tests.helpers.release import check_outcome, load_record, release_env, run_release

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
TOKEN = "s3cret-webhook-token"


@pytest.fixture
def receiver():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "json": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


def test_a_rejected_release_reaches_the_webhook(tmp_path: Path, airflow_db: Path, receiver) -> None:
    port, received = receiver
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "password": TOKEN,
            "extra": {"endpoint": "/hooks/releases"}}
    os.environ["AIRFLOW_CONN_RELEASE_WEBHOOK"] = json.dumps(conn)
    try:
        with release_env(tmp_path, (MODEL,)) as models:
            edit_spec(models / MODEL, lambda spec: spec.update(notify_conn_id="release_webhook"))
            edit_spec(models / MODEL, lambda spec: spec["gate"]["thresholds"].update(accuracy={"min": 0.999}))
            dag_run = run_release(MODEL, {"reason": "too strict"})
            record = load_record(MODEL, dag_run.run_id)
    finally:
        del os.environ["AIRFLOW_CONN_RELEASE_WEBHOOK"]

    assert dag_run.state == "failed"
    assert check_outcome(dag_run, "rejected") is not None  # the outcome task failed (once) and notified
    assert len(received) == 1
    message = received[0]
    assert message["path"] == "/hooks/releases"
    assert message["auth"] == f"Bearer {TOKEN}"
    assert message["json"]["outcome"] == "rejected"
    assert message["json"]["run_id"] == dag_run.run_id
    assert any("accuracy" in reason for reason in message["json"]["reasons"])
    assert record["notified"] == {"conn_id": "release_webhook", "status": 204}
    assert TOKEN not in json.dumps(record)


def test_a_released_run_sends_nothing(tmp_path: Path, airflow_db: Path, receiver) -> None:
    port, received = receiver
    os.environ["MODEL_DELIVERY_NOTIFY_CONN_ID"] = "release_webhook"
    os.environ["AIRFLOW_CONN_RELEASE_WEBHOOK"] = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port,
                                                             "schema": "http"})
    try:
        with release_env(tmp_path, (MODEL,)):
            dag_run = run_release(MODEL, {"reason": "fine"})
    finally:
        del os.environ["AIRFLOW_CONN_RELEASE_WEBHOOK"], os.environ["MODEL_DELIVERY_NOTIFY_CONN_ID"]

    assert dag_run.state == "success"
    assert received == []
