"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF distribution 2.8) on 127.0.0.1.

:func:`oci_registry` installs the package when the binary is missing (one ``apt-get`` at a time,
its service not started), writes a config (filesystem storage under the test's directory, plain
HTTP on a free 127.0.0.1 port, no auth), starts it, waits for ``/v2/`` and stops it after.
:class:`OciRegistry` reads its access log (which requests reached it) and finds a blob's data
file in its storage (to damage it).

:func:`auth_front` puts an auth gate in front of it. ``bearer``, as registries with a token
service do (Docker Hub, Harbor, GHCR): ``401`` with a ``Bearer realm=...,scope=repository:<repo>:pull``
challenge (``pull,push`` for writes), a token endpoint that wants the right Basic credentials,
and tokens that only cover the scope they were asked for. ``basic``, as an htpasswd registry
does: ``401`` with a ``Basic realm=...`` challenge, and the credentials on every request.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import secrets
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.helpers.ansible_fleet import ensure_debian_packages
from tests.helpers.models import free_port
from tests.helpers.processes import stop_processes

BINARY = "/usr/bin/docker-registry"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')

CONFIG = """\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
health:
  storagedriver:
    enabled: false
"""


@dataclass(frozen=True)
class OciRegistry:
    host: str  # 127.0.0.1:<port>
    root: Path  # the filesystem storage
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def uri(self, repository: str) -> str:
        return f"oci://{self.host}/{repository}"

    def blob_data(self, digest: str) -> Path:
        """The file the registry serves a blob from."""
        hex_part = digest.removeprefix("sha256:")
        return self.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_part[:2] / hex_part / "data"

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the registry answered so far, in order."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _ACCESS.search(line)
            if match:
                found.append((match["method"], match["path"], int(match["status"])))
        return found


@contextlib.contextmanager
def oci_registry(base: Path) -> Iterator[OciRegistry]:
    """A throwaway registry under ``base``; stopped (and waited for) when the block ends."""
    ensure_debian_packages({"docker-registry": "docker-registry"})
    assert Path(BINARY).exists(), f"the docker-registry package installed no {BINARY}"
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = base / "registry.yml"
    config.write_text(CONFIG.format(root=base / "storage", port=port, secret=secrets.token_hex(16)))
    registry = OciRegistry(f"127.0.0.1:{port}", base / "storage", base / "registry.log")
    with open(registry.log, "wb") as out:
        proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"docker-registry exited {proc.returncode}: {registry.log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{registry.url}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"docker-registry did not answer /v2/: {registry.log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield registry
    finally:
        stop_processes([proc])


@dataclass
class AuthFront:
    url: str  # http://127.0.0.1:<port>: the registry, behind the gate
    tokens_issued: list[str]  # the scopes asked for, in order

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


class _Gate(ThreadingHTTPServer):
    def __init__(self, registry: OciRegistry, basic: str, scheme: str) -> None:
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.registry, self.basic, self.scheme = registry, basic, scheme
        self.front = AuthFront(f"http://127.0.0.1:{self.server_address[1]}", [])
        self.issued: dict[str, set[str]] = {}  # token -> the actions it allows


class _GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Gate

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _token(self) -> None:
        if self.headers.get("Authorization") != self.server.basic:
            self._reply(401, b'{"details":"bad credentials"}')
            return
        scope = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("scope", [""])[0]
        token = secrets.token_hex(16)
        self.server.issued[token] = set(scope.rsplit(":", 1)[-1].split(",")) if scope else set()
        self.server.front.tokens_issued.append(scope)
        self._reply(200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"})

    def _handle(self) -> None:
        if self.path.startswith("/token"):
            self._token()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        need = "pull" if self.command in ("GET", "HEAD") else "push"
        if self.server.scheme == "basic" and self.headers.get("Authorization") != self.server.basic:
            self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="test"'})
            return
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if self.server.scheme == "bearer" and self.path != "/v2/" and need not in self.server.issued.get(token, set()):
            parts = self.path.split("?")[0].split("/")
            repo = "/".join(parts[2:-2])
            scope = f"repository:{repo}:{'pull' if need == 'pull' else 'pull,push'}"
            challenge = f'Bearer realm="{self.server.front.url}/token",service="test-registry",scope="{scope}"'
            self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
            return
        upstream = http.client.HTTPConnection(self.server.registry.host, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "connection")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        out = {k: v for k, v in answer.getheaders() if k.lower() not in ("content-length", "connection",
                                                                          "transfer-encoding")}
        if "Location" in out:  # the registry names itself: send the client back through the gate
            out["Location"] = out["Location"].replace(self.server.registry.host, self.server.front.host)
        self._reply(answer.status, data, out)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@contextlib.contextmanager
def auth_front(registry: OciRegistry, username: str, password: str, *, scheme: str = "bearer") -> Iterator[AuthFront]:
    """The registry behind an auth gate (``bearer`` or ``basic``) on another 127.0.0.1 port (a proxy)."""
    assert scheme in ("bearer", "basic")
    server = _Gate(registry, "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode(), scheme)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.front
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    """A registry for one test module; a failure, not a skip, when docker-registry is missing and not installable."""
    try:
        with oci_registry(tmp_path_factory.mktemp("oci-registry")) as started:
            yield started
    except RuntimeError as exc:
        pytest.fail(str(exc))
