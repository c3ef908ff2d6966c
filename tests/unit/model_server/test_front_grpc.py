"""The front's gRPC port (``--grpc-port``): its upstream in the state file (``grpc_upstream``), raw TCP forwarded
to it and switched with the HTTP upstream in one rewrite, and a closed connection (no HTTP/1.1 503) when there is
none. With real model servers and a gRPC client: tests/unit/model_delivery/test_local_grpc.py."""

from __future__ import annotations

import json
import socket
import socketserver
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from model_server.front import GRPC_KEY, parse_state, read_state, write_state
from tests.unit.model_server.conftest import serving_threads

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import Processes


class _Tagged(socketserver.ThreadingTCPServer):
    """A TCP server answering every connection with its tag, then the bytes it received."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tag: bytes) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = self.request.recv(1024)
                self.request.sendall(tag + b":" + data)

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def tagged() -> Iterator[dict[str, _Tagged]]:
    servers = {name: _Tagged(name.encode()) for name in ("http-a", "grpc-a", "http-b", "grpc-b")}
    with serving_threads(servers):
        yield servers


def _exchange(port: int, data: bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # the front closed first (no upstream): nothing was answered
            return b""
        chunks = []
        try:
            while chunk := conn.recv(4096):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our bytes unread: no answer either
            assert not chunks
    return b"".join(chunks)


def test_write_state_names_the_grpc_upstream_on_the_same_host(tmp_path: Path) -> None:
    path = tmp_path / "front.json"
    write_state(path, "127.0.0.1", 8001, grpc_port=9001, version="3")
    doc = json.loads(path.read_text())
    assert doc == {"upstream": {"host": "127.0.0.1", "port": 8001}, GRPC_KEY: {"host": "127.0.0.1", "port": 9001},
                   "version": "3"}
    assert read_state(path, GRPC_KEY) is not None and read_state(path, GRPC_KEY).port == 9001  # type: ignore[union-attr]
    write_state(path, "127.0.0.1", 8001)
    assert read_state(path, GRPC_KEY) is None and GRPC_KEY not in json.loads(path.read_text())


@pytest.mark.parametrize(("call", "message"), [
    pytest.param(lambda p: write_state(p, None, None, grpc_port=9001), "needs an upstream_host", id="no-host"),
    pytest.param(lambda p: write_state(p, "127.0.0.1", 1, grpc_port=70000), "is not a TCP port", id="bad-port"),
    pytest.param(lambda p: write_state(p, "127.0.0.1", 1, **{GRPC_KEY: {}}), "not as an extra key", id="extra-key"),
])
def test_write_state_refuses_a_grpc_upstream_the_front_would_not_accept(
    tmp_path: Path, call: Callable[[Path], None], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "front.json")
    assert not (tmp_path / "front.json").exists()
    with pytest.raises(ValueError, match="grpc_upstream"):
        parse_state({GRPC_KEY: {"host": "", "port": 1}}, GRPC_KEY)


def test_the_grpc_port_forwards_to_the_grpc_upstream_and_switches_with_http(
    processes: Processes, new_port: Callable[[], int], tmp_path: Path, tagged: dict[str, Any]
) -> None:
    state = tmp_path / "front.json"
    write_state(state, None, None)
    port, grpc_port = new_port(), new_port()
    proc = processes.start("model_server.front", "--host", "127.0.0.1", "--port", str(port), "--state", str(state),
                           "--grpc-port", str(grpc_port))
    processes.wait_listening(proc, port)
    processes.wait_listening(proc, grpc_port)

    # no upstream: HTTP gets the 503, gRPC a closed connection (an HTTP/1.1 answer would be garbage to HTTP/2)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 503
    assert _exchange(grpc_port) == b""

    write_state(state, "127.0.0.1", tagged["http-a"].port, grpc_port=tagged["grpc-a"].port)
    assert _exchange(port, b"x") == b"http-a:x"
    assert _exchange(grpc_port).startswith(b"grpc-a:PRI * HTTP/2.0")

    write_state(state, "127.0.0.1", tagged["http-b"].port, grpc_port=tagged["grpc-b"].port)
    assert _exchange(port, b"y") == b"http-b:y" and _exchange(grpc_port).startswith(b"grpc-b:")

    write_state(state, "127.0.0.1", tagged["http-a"].port)  # a server without gRPC: the gRPC port refuses
    assert _exchange(port, b"z") == b"http-a:z" and _exchange(grpc_port) == b""
