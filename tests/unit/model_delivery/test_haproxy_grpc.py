"""The HAProxy configuration of the ansible target with ``serving.grpc`` (model_delivery.deploy.ansible.haproxy):
rendered, accepted by ``haproxy -c``, then run for real in front of real model servers with gRPC ports.

Two live servers and a staging one (the candidate, never in a backend): gRPC calls through HAProxy's h2 frontend
reach the live servers only, one call at a time (layer 7: a drained server gets no new call on an open
connection), the role's own module (md_haproxy) takes a server out of both backends and puts it back, and the
gRPC backend's health check takes a stopped server out of rotation.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_breast_cancer

from model_delivery.deploy.ansible.haproxy import LbServer, haproxy_config
from tests.helpers.ansible_module import load_ansible_module
from tests.helpers.models import PROJECT, free_port
from tests.helpers.processes import serving_env, stop_processes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"
DEADLINE = 60.0


def _md_haproxy() -> Any:
    path = PROJECT / "include" / "ansible" / "roles" / "model_server" / "library" / "md_haproxy.py"
    return load_ansible_module(path, "md_haproxy_under_test")


def _servers(tmp_path: Path) -> list[LbServer]:
    return [LbServer("host1", "127.0.0.1", 18080, 19080), LbServer("host2", "127.0.0.1", 18090, 19090)]


def _check(cfg: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    return subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False)


def test_the_rendered_config_has_a_grpc_frontend_and_haproxy_accepts_it(tmp_path: Path) -> None:
    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install haproxy)"
    cfg = haproxy_config(backend=MODEL, servers=_servers(tmp_path), bind="127.0.0.1:18000",
                         runtime_api=str(tmp_path / "admin.sock"), grpc_bind="127.0.0.1:19000")
    checked = _check(cfg, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = [line.strip() for line in cfg.splitlines()]
    grpc = lines[lines.index(f"backend {MODEL}_grpc"):]
    assert "bind 127.0.0.1:19000 proto h2" in lines and f"default_backend {MODEL}_grpc" in lines
    assert "option tcp-check" in grpc and "tcp-check connect" in grpc
    assert [line for line in grpc if line.startswith("server ")] == [
        "server host1 127.0.0.1:19080 check proto h2", "server host2 127.0.0.1:19090 check proto h2"]
    http = lines[lines.index(f"backend {MODEL}"):lines.index(f"frontend {MODEL}_grpc")]
    assert "option httpchk GET /v2/health/ready" in http
    assert [line for line in http if line.startswith("server ")] == [
        "server host1 127.0.0.1:18080 check", "server host2 127.0.0.1:18090 check"]

    plain = haproxy_config(backend=MODEL, servers=_servers(tmp_path), bind="127.0.0.1:18000",
                           runtime_api=str(tmp_path / "admin.sock"))
    assert "grpc" not in plain and _check(plain, tmp_path).returncode == 0
    # the check catches what haproxy refuses
    broken = _check(cfg.replace("proto h2", "proto h3"), tmp_path)
    assert broken.returncode != 0


def test_a_server_without_a_grpc_port_or_a_bad_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no gRPC port"):
        haproxy_config(backend=MODEL, servers=[LbServer("host1", "127.0.0.1", 1)], bind="127.0.0.1:2",
                       runtime_api="/s", grpc_bind="127.0.0.1:3")
    with pytest.raises(ValueError, match="is not an HAProxy name"):
        haproxy_config(backend="a b", servers=[], bind="127.0.0.1:2", runtime_api="/s")


# -- for real --------------------------------------------------------------------------------------------------------


class Fleet:
    """Real model servers with gRPC ports, and HAProxy in front (every process stopped at the end)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}

    def server(self, name: str, artifact: Path, digest: str, version: str) -> LbServer:
        port, grpc_port = free_port(), free_port()
        while grpc_port == port:
            grpc_port = free_port()
        with open(self.base / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "model_server", "--artifact", str(artifact), "--digest", digest,
                 "--model-name", MODEL, "--model-version", version, "--host", "127.0.0.1", "--port", str(port),
                 "--grpc-port", str(grpc_port), "--log-level", "warning", "--graceful-timeout", "2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=serving_env(),
            )  # fmt: skip
        self.procs.append(proc)
        self.by_name[name] = proc
        deadline = time.monotonic() + DEADLINE
        while True:
            assert proc.poll() is None, (self.base / f"{name}.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    return LbServer(name, "127.0.0.1", port, grpc_port)
            assert time.monotonic() < deadline, f"{name} not ready:\n{(self.base / f'{name}.log').read_text()}"
            time.sleep(0.1)

    def haproxy(self, cfg: str) -> None:
        path = self.base / "haproxy.cfg"
        path.write_text(cfg)
        log = open(self.base / "haproxy.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def stop(self) -> None:
        stop_processes(reversed(self.procs))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def _infer(client: grpcclient.InferenceServerClient) -> str:
    rows = load_breast_cancer().data[:2]
    inp = grpcclient.InferInput("features", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows)
    result = client.infer(MODEL, [inp], client_timeout=20)
    assert result.as_numpy("predict").shape == (2,) and np.isin(result.as_numpy("predict"), [0, 1]).all()
    return str(result.get_response().model_version)


def _wait_status(md: Any, socket: str, backend: str, server: str, wanted: str) -> None:
    deadline = time.monotonic() + 30
    status = ""
    while time.monotonic() < deadline:
        status = md.server_stat(socket, backend, server)["status"]
        if status.startswith(wanted):
            return
        time.sleep(0.1)
    pytest.fail(f"{backend}/{server} is {status}, not {wanted}, after 30 s")


def test_grpc_through_haproxy_reaches_the_live_servers_and_follows_drains_and_health(
    fleet: Fleet, builds: Builds, tmp_path: Path
) -> None:
    artifact_v1 = builds.store.fetch(MODEL, builds.v1.digest, tmp_path / "v1")
    artifact_v2 = builds.store.fetch(MODEL, builds.v2.digest, tmp_path / "v2")
    live = [fleet.server("host1", artifact_v1, builds.v1.digest, "1"),
            fleet.server("host2", artifact_v1, builds.v1.digest, "2")]
    staging = fleet.server("staging", artifact_v2, builds.v2.digest, "9")  # the candidate: in no backend
    front, grpc_front, socket = free_port(), free_port(), str(tmp_path / "admin.sock")
    cfg = haproxy_config(backend=MODEL, servers=live, bind=f"127.0.0.1:{front}", runtime_api=socket,
                         grpc_bind=f"127.0.0.1:{grpc_front}", check_interval="300ms")
    assert str(staging.grpc_port) not in cfg and str(staging.port) not in cfg
    fleet.haproxy(cfg)
    md = _md_haproxy()
    deadline = time.monotonic() + 20
    while not (tmp_path / "admin.sock").exists():
        assert time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
        time.sleep(0.05)
    for backend in (MODEL, f"{MODEL}_grpc"):
        for server in ("host1", "host2"):
            _wait_status(md, socket, backend, server, "UP")

    # one open connection; HAProxy balances each call (layer 7), never to the staging server
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_front}")
    assert {_infer(client) for _ in range(10)} == {"1", "2"}

    # the role's module drains host1 and puts it in maintenance in both backends: no new call reaches it,
    # not even on the connection already open
    for backend in (MODEL, f"{MODEL}_grpc"):
        status, _ = md._disable(socket, backend, "host1", 10)
        assert status.startswith("MAINT")
    assert {_infer(client) for _ in range(6)} == {"2"}
    assert httpx.post(f"http://127.0.0.1:{front}/v2/models/{MODEL}/infer", timeout=10, json={"inputs": [{
        "name": "features", "datatype": "FP64", "shape": [1, 30], "data": load_breast_cancer().data[0].tolist()}]},
    ).json()["model_version"] == "2"
    for backend in (MODEL, f"{MODEL}_grpc"):
        assert md._enable(socket, backend, "host1", 20).startswith("UP")
    assert {_infer(client) for _ in range(10)} == {"1", "2"}

    # the gRPC backend's health check: a stopped server leaves rotation, the calls go on on the other
    stop_processes([fleet.by_name["host2"]])
    _wait_status(md, socket, f"{MODEL}_grpc", "host2", "DOWN")
    assert {_infer(client) for _ in range(6)} == {"1"}
