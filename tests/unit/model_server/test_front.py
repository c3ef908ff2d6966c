"""The real front proxy process in front of small real HTTP servers (the proxy is protocol-agnostic)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from model_server.front import StateWatcher, Upstream, read_state, write_state
from tests.unit.model_server.conftest import serving_threads

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import Processes

SWITCH_REQUESTS = 200


class _Handler(BaseHTTPRequestHandler):
    server: _NamedServer

    def _answer(self, doc: dict[str, Any]) -> None:
        body = json.dumps({"upstream": self.server.name, **doc}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer({"path": self.path})

    def do_POST(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _NamedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def upstreams() -> Iterator[dict[str, _NamedServer]]:
    """Three real HTTP servers, A, B and C, each answering with its own name."""
    servers = {name: _NamedServer(name) for name in "ABC"}
    with serving_threads(servers):
        yield servers


@pytest.fixture
def front(
    processes: Processes, new_port: Callable[[], int], tmp_path: Path
) -> Callable[[], tuple[str, Path, Any]]:
    """Start the real front process on a free port; return (base URL, state file, process)."""

    def start() -> tuple[str, Path, Any]:
        state, port = tmp_path / "state" / "front.json", new_port()
        state.parent.mkdir(exist_ok=True)
        proc = processes.start(
            "model_server.front", "--host", "127.0.0.1", "--port", str(port), "--state", str(state)
        )
        processes.wait_listening(proc, port)
        return f"http://127.0.0.1:{port}", state, proc

    return start


def _client() -> httpx.Client:
    # No keep-alive: every request is a new connection, which is what the front routes.
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10.0)


def _point(state: Path, server: _NamedServer, **extra: Any) -> None:
    write_state(state, "127.0.0.1", server.port, **extra)


def test_requests_reach_the_current_upstream_and_follow_switches(
    front: Callable[[], tuple[str, Path, Any]], upstreams: dict[str, _NamedServer], processes: Processes
) -> None:
    base, state, proc = front()
    a, b = upstreams["A"], upstreams["B"]
    with _client() as client:
        _point(state, a, color="blue")
        assert client.get(f"{base}/x").json() == {"upstream": "A", "path": "/x"}
        _point(state, b, color="green")
        assert client.get(f"{base}/y").json() == {"upstream": "B", "path": "/y"}
        payload = os.urandom(3 * 1024 * 1024)  # larger than any socket buffer: both directions stream
        posted = client.post(f"{base}/upload", content=payload).json()
        assert posted == {
            "upstream": "B",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
        }
        _point(state, a, color="blue")
        assert client.get(f"{base}/z").json()["upstream"] == "A"
    log = processes.output(proc)
    assert f"upstream switched from 127.0.0.1:{a.port} to 127.0.0.1:{b.port}" in log
    assert f"upstream switched from 127.0.0.1:{b.port} to 127.0.0.1:{a.port}" in log


def test_no_request_fails_across_switches(
    front: Callable[[], tuple[str, Path, Any]], upstreams: dict[str, _NamedServer]
) -> None:
    base, state, _ = front()
    order = [upstreams["A"], upstreams["B"], upstreams["C"]]
    _point(state, order[0])
    generation = 0  # index in ``order`` of the state written last; only the main thread changes it
    switch_points = {50: threading.Event(), 120: threading.Event()}
    switched = {50: threading.Event(), 120: threading.Event()}
    results: list[tuple[int, str]] = []  # (generation when the request started, upstream or error)

    def send() -> None:
        with _client() as client:
            for i in range(SWITCH_REQUESTS):
                if i in switch_points:
                    switch_points[i].set()
                if i - 50 in switched:  # keep each switch inside the loop: wait 50 requests later at most
                    switched[i - 50].wait(timeout=60)
                started = generation
                try:
                    response = client.get(f"{base}/r{i}")
                    response.raise_for_status()
                    results.append((started, response.json()["upstream"]))
                except httpx.HTTPError as exc:
                    results.append((started, f"error: {exc!r}"))

    client_thread = threading.Thread(target=send)
    client_thread.start()
    for at in (50, 120):
        assert switch_points[at].wait(timeout=60)
        _point(state, order[generation + 1])
        generation += 1
        switched[at].set()
    client_thread.join(timeout=120)
    assert not client_thread.is_alive()

    failed = [answer for _, answer in results if answer.startswith("error")]
    print(f"failed requests: {len(failed)} of {len(results)}")
    assert len(results) == SWITCH_REQUESTS
    assert failed == []
    for started, answer in results:  # a request may see a newer state, never an older one
        assert answer in {s.name for s in order[started:]}, (started, answer)
    seen = [answer for _, answer in results]
    assert {"A", "B", "C"} <= set(seen)
    assert seen[-1] == "C"


def test_without_a_ready_upstream_the_answer_is_503_json(
    front: Callable[[], tuple[str, Path, Any]],
    upstreams: dict[str, _NamedServer],
    new_port: Callable[[], int],
) -> None:
    base, state, _ = front()
    cases = [
        (lambda: None, "does not exist"),
        (lambda: write_state(state, None, None, color="none"), "names no upstream"),
        (lambda: write_state(state, "127.0.0.1", new_port()), "refused the connection"),
    ]
    with _client() as client:
        for prepare, needle in cases:
            prepare()
            for response in (
                client.get(f"{base}/v2/health/ready"),
                client.post(f"{base}/p", content=b"x" * 200_000),
            ):
                assert response.status_code == 503
                assert response.headers["content-type"] == "application/json"
                error = response.json()["error"]
                assert error.startswith("no ready upstream") and needle in error, error
        _point(state, upstreams["A"])
        assert client.get(f"{base}/back").json()["upstream"] == "A"


def test_half_written_state_keeps_the_previous_upstream(
    front: Callable[[], tuple[str, Path, Any]], upstreams: dict[str, _NamedServer], processes: Processes
) -> None:
    base, state, proc = front()
    _point(state, upstreams["A"])
    with _client() as client:
        assert client.get(base).json()["upstream"] == "A"
        state.write_text('{"upstream": {"host": "127.0.0.1", "po')  # in place, as a careless writer would
        assert client.get(base).json()["upstream"] == "A"
        _point(state, upstreams["B"])
        assert client.get(base).json()["upstream"] == "B"
    assert "ignoring unreadable state" in processes.output(proc)


# --- in process: the state file ------------------------------------------------------------


def test_write_state_is_atomic_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "front.json"
    write_state(path, "127.0.0.1", 8081, color="green", digest="sha256:abc")
    assert json.loads(path.read_text()) == {
        "upstream": {"host": "127.0.0.1", "port": 8081},
        "color": "green",
        "digest": "sha256:abc",
    }
    assert read_state(path) == Upstream("127.0.0.1", 8081)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_state(path, None, None)
    assert read_state(path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["front.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        pytest.param(("127.0.0.1", None), {}, id="host-without-port"),
        pytest.param((None, 80), {}, id="port-without-host"),
        pytest.param(("127.0.0.1", 70000), {}, id="port-out-of-range"),
        pytest.param(("127.0.0.1", "80"), {}, id="port-as-string"),
        pytest.param(("", 80), {}, id="empty-host"),
        pytest.param(("127.0.0.1", 80), {"upstream": "x"}, id="upstream-in-extra"),
    ],
)
def test_write_state_refuses_invalid_state(
    tmp_path: Path, args: tuple[Any, Any], extra: dict[str, Any]
) -> None:
    path = tmp_path / "front.json"
    with pytest.raises(ValueError):
        write_state(path, *args, **extra)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_state_watcher_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "front.json"
    watcher = StateWatcher(path)
    assert watcher.current() is None and "does not exist" in watcher.problem
    write_state(path, "127.0.0.1", 1001)
    assert watcher.current() == Upstream("127.0.0.1", 1001)
    write_state(path, "127.0.0.1", 1002)
    assert watcher.current() == Upstream("127.0.0.1", 1002)
    path.write_text("{not json")
    assert watcher.current() == Upstream("127.0.0.1", 1002)
    path.write_text('{"upstream": {"host": "h", "port": "x"}}')
    assert watcher.current() == Upstream("127.0.0.1", 1002)
    write_state(path, None, None)
    assert watcher.current() is None and "names no upstream" in watcher.problem
    path.unlink()
    assert watcher.current() is None and "does not exist" in watcher.problem
