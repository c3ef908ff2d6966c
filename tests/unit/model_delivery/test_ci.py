"""The CLI's REST calls against a real HTTP server on 127.0.0.1 that answers as a busy api-server does.

Airflow's api-server on SQLite answers 500 ("Database error") while another writer holds the
database lock. The CLI retries a 5xx with backoff, says so on stderr, and never creates a
run twice: it chooses the run id itself, so a retried trigger that finds the run is done.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from model_delivery import ci

DB_ERROR = {"detail": "Database error occurred, look for ID abc123 in the logs"}


class BusyApi:
    """Answers each (method, path) with its scripted (status, body) list, in order; the last one repeats."""

    def __init__(self, script: dict[tuple[str, str], list[tuple[int, Any]]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.calls.append((self.command, self.path, body))
                answers = api.script.get((self.command, self.path)) or [(404, {"detail": "not found"})]
                status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                data = json.dumps(payload(body) if callable(payload) else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def posts(self) -> list[Any]:
        return [body for method, _, body in self.calls if method == "POST"]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(ci, "BACKOFF", 0.01)
    servers: list[BusyApi] = []

    def start(script: dict[tuple[str, str], list[tuple[int, Any]]]) -> BusyApi:
        api = BusyApi(script)
        threading.Thread(target=api.server.serve_forever, daemon=True).start()
        servers.append(api)
        return api

    yield start
    for api in servers:
        api.server.shutdown()


DAG = ("GET", "/api/v2/dags/release__wine")
RUNS = ("POST", "/api/v2/dags/release__wine/dagRuns")


def created(body: dict[str, Any]) -> dict[str, Any]:
    return {"dag_run_id": body["dag_run_id"], "state": "queued"}


def test_a_trigger_that_meets_a_locked_database_is_retried_and_says_so(serve: Any, capsys: Any) -> None:
    api = serve({DAG: [(200, {"is_paused": False})], RUNS: [(500, DB_ERROR), (500, DB_ERROR), (200, created)]})
    with httpx.Client(base_url=api.url) as client:
        run_id = ci.trigger(client, "release__wine", {"reason": "r"}, unpause=False)

    posts = api.posts()
    assert len(posts) == 3
    assert {p["dag_run_id"] for p in posts} == {run_id}  # one run id for every attempt: no second run
    assert run_id.startswith("manual__") and posts[0]["conf"] == {"reason": "r"}
    err = capsys.readouterr().err
    assert "answered HTTP 500 (" in err and "look for ID abc123" in err
    assert "retry 1 of 5" in err and "retry 2 of 5" in err and "retry 3 of 5" not in err


def test_a_trigger_whose_answer_was_lost_finds_its_run(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt created the run and its answer was lost: the retry's 409 is that very run."""
    run_id = ci.new_run_id()
    monkeypatch.setattr(ci, "new_run_id", lambda: run_id)
    api = serve({DAG: [(200, {"is_paused": False})],
                 RUNS: [(502, {"detail": "bad gateway"}), (409, {"detail": "already exists"})],
                 ("GET", f"/api/v2/dags/release__wine/dagRuns/{run_id}"): [(200, {"dag_run_id": run_id})]})
    with httpx.Client(base_url=api.url) as client:
        assert ci.trigger(client, "release__wine", {}, unpause=False) == run_id
    assert [p["dag_run_id"] for p in api.posts()] == [run_id, run_id]


def test_a_409_for_a_run_that_is_not_ours_is_refused(serve: Any) -> None:
    api = serve({DAG: [(200, {"is_paused": False})], RUNS: [(409, {"detail": "already exists"})]})
    with httpx.Client(base_url=api.url) as client, pytest.raises(ci.UsageError, match="refused the run .HTTP 409"):
        ci.trigger(client, "release__wine", {}, unpause=False)


def test_an_api_that_keeps_failing_ends_with_the_fix(serve: Any, capsys: Any) -> None:
    api = serve({DAG: [(503, {"detail": "unavailable"})]})
    with httpx.Client(base_url=api.url) as client, pytest.raises(ci.UsageError) as caught:
        ci.trigger(client, "release__wine", {}, unpause=False)
    assert len(api.calls) == ci.RETRIES + 1
    assert "answered HTTP 503" in str(caught.value) and "6 times" in str(caught.value)
    assert "concurrent triggers need the PostgreSQL stack (docs/operations.md)" in str(caught.value)
    assert capsys.readouterr().err.count("warning: the Airflow API answered HTTP 503") == ci.RETRIES


def test_a_client_error_is_not_retried(serve: Any) -> None:
    api = serve({DAG: [(200, {"is_paused": False})], RUNS: [(400, {"detail": "conf refused"})]})
    with httpx.Client(base_url=api.url) as client, pytest.raises(ci.UsageError, match="HTTP 400"):
        ci.trigger(client, "release__wine", {}, unpause=False)
    assert len(api.posts()) == 1


LONG_REASON = "x" * 10_000
PARAM_REFUSAL = {"detail": f"Invalid input for param reason: '{LONG_REASON}' is too long\n\nFailed validating "
                           f"'maxLength' in schema:\n    {{'maxLength': 500, 'type': 'string'}}\n\nOn instance:\n"
                           f"    '{LONG_REASON}'"}


@pytest.mark.parametrize(("args", "field"), [
    pytest.param(["--conf", "[]"], "--conf must be a JSON object", id="conf-a-list"),
    pytest.param(["--conf", '"force"'], "--conf must be a JSON object", id="conf-a-string"),
    pytest.param(["--conf", "{"], "--conf is not JSON", id="conf-not-json"),
    pytest.param(["--force"], "conf 'force' is true but 'reason' is empty", id="force-without-reason"),
    pytest.param(["--conf", '{"reasn": "typo"}'], "conf has unknown key(s) ['reasn']", id="unknown-key"),
    pytest.param(["--conf", '{"force": "yes"}', "--reason", "r"], "conf 'force' must be true or false",
                 id="force-not-boolean"),
    pytest.param(["--reason", LONG_REASON], "conf 'reason' has 10000 characters, more than 500", id="long-reason"),
])
def test_release_refuses_a_bad_conf_in_one_line_before_triggering(serve: Any, capsys: Any, args: list[str],
                                                                   field: str) -> None:
    from model_delivery.cli import main

    api = serve({DAG: [(200, {"is_paused": False})], RUNS: [(200, created)]})
    code = main(["release", "wine", "--api-url", api.url, "--token", "t", *args])

    captured = capsys.readouterr()
    assert code == ci.EXIT_USAGE
    assert captured.err.startswith("error: ") and field in captured.err
    assert captured.err.count("\n") == 1 and len(captured.err) < 500  # one line, the long reason not echoed
    assert "Traceback" not in captured.err and captured.out == ""
    assert api.posts() == []  # no run was created


def test_an_api_refusal_is_one_bounded_line(serve: Any, capsys: Any) -> None:
    """What Airflow answers when a param fails its schema quotes the value twice; the CLI prints its first line."""
    from model_delivery.cli import main

    api = serve({DAG: [(200, {"is_paused": False})], RUNS: [(400, PARAM_REFUSAL)]})
    code = main(["release", "wine", "--api-url", api.url, "--token", "t", "--reason", "ok"])

    err = capsys.readouterr().err
    assert code == ci.EXIT_USAGE
    assert err.startswith("error: Airflow refused the run (HTTP 400): Invalid input for param reason: 'xxx")
    assert err.count("\n") == 1 and len(err) < 500 and f"... ({len(LONG_REASON) + 46} characters)" in err
