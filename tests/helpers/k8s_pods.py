"""Run the pods of applied Deployments as local processes, so a release through the replay API server can be smoke-tested.

When the replay server stores a Deployment with a new generation, :class:`PodRunner` runs its
pod template the way a kubelet would, on this machine: the init container's command (the
fetch-and-verify script, taken from the ConfigMap that was applied) and then the server
container's command (``python -m model_server`` with the template's arguments). Paths inside
the pod (``/models``, ``/opt/model-delivery``) are mapped to a directory per pod, ``python`` to
this interpreter, and ``--host 0.0.0.0 --port 8080`` to a free port on 127.0.0.1.

Each Service gets a ``model_server.front`` proxy on a fixed local port, routed to the newest
running pod its selector matches: that is what the spec's ``staging_url`` and
``production_url`` point at. This stands in for the kubelet, the Service proxy and DNS: it is
not Kubernetes, but the commands, arguments and script it runs are exactly the applied ones.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from model_server.front import write_state
from tests.helpers.models import free_port
from tests.helpers.processes import serving_env

READY_SECONDS = 90


@dataclass
class Pod:
    deployment: str
    labels: dict[str, str]
    port: int
    process: subprocess.Popen[bytes]
    digest: str
    version: str


@dataclass
class PodRunner:
    """Runs applied pod templates; routes one front per Service."""

    root: Path
    service_ports: dict[str, int]  # Service name -> local front port
    pods: dict[str, Pod] = field(default_factory=dict)
    services: dict[str, dict[str, str]] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    fronts: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def start_fronts(self) -> None:
        for name, port in self.service_ports.items():
            state = self.root / f"front-{name}.json"
            write_state(state, None, None)
            with open(self.root / f"front-{name}.log", "wb") as out:
                self.fronts.append(subprocess.Popen(
                    [sys.executable, "-m", "model_server.front", "--host", "127.0.0.1", "--port", str(port),
                     "--state", str(state)], stdout=out, stderr=subprocess.STDOUT, env=serving_env()))
        for port in self.service_ports.values():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), __import__("socket").create_connection(("127.0.0.1", port), 1):
                    break
                time.sleep(0.05)

    # -- called by the replay server ---------------------------------------------------------------

    def on_apply(self, obj: dict[str, Any], new_generation: bool) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "ConfigMap":
            self.scripts.update(obj["data"])
        elif kind == "Service":
            self.services[name] = obj["spec"]["selector"]
            self._route()
        elif kind == "Deployment" and new_generation:
            self._stop(name)
            self._run(obj)
            self._route()

    def on_delete(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Deployment":
            self._stop(obj["metadata"]["name"])
            self._route()

    # -- the "kubelet" -----------------------------------------------------------------------------

    def _map(self, value: str, pod_dir: Path) -> str:
        if value == "python":
            return sys.executable
        for inside in ("/models", "/opt/model-delivery"):
            if value == inside or value.startswith(inside + "/"):
                return str(pod_dir / inside.strip("/")) + value[len(inside):]
        return value

    def _run(self, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        pod_dir = self.root / f"{name}-{deployment['metadata']['generation']}"
        (pod_dir / "opt" / "model-delivery").mkdir(parents=True, exist_ok=True)
        (pod_dir / "models").mkdir(exist_ok=True)
        for file_name, text in self.scripts.items():
            (pod_dir / "opt" / "model-delivery" / file_name).write_text(text)
        for init in template["spec"].get("initContainers", []):
            cmd = [self._map(v, pod_dir) for v in [*init["command"], *init["args"]]]
            done = subprocess.run(cmd, capture_output=True, text=True, env=serving_env(), timeout=120)
            self.log.append(f"{name} init {init['name']}: exit {done.returncode}: {done.stderr.strip()}")
            if done.returncode != 0:
                return
        server = template["spec"]["containers"][0]
        port = free_port()
        args = [self._map(v, pod_dir) for v in server["args"]]
        args[args.index("--host") + 1] = "127.0.0.1"
        args[args.index("--port") + 1] = str(port)
        cmd = [self._map(v, pod_dir) for v in server["command"]] + args
        with open(pod_dir / "server.log", "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=serving_env())
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        labels = template["metadata"]["labels"]
        self.pods[name] = Pod(name, labels, port, process, template["metadata"]["annotations"]["model-delivery.io/digest"],
                              labels["model-delivery.io/version"])
        self.log.append(f"{name}: serving version {labels['model-delivery.io/version']} on port {port}")

    def _stop(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None and pod.process.poll() is None:
            pod.process.terminate()
            pod.process.wait(timeout=30)

    def _route(self) -> None:
        for service, selector in self.services.items():
            if service not in self.service_ports:
                continue
            matching = [p for p in self.pods.values() if all(p.labels.get(k) == v for k, v in selector.items())]
            state = self.root / f"front-{service}.json"
            if matching:
                pod = matching[-1]
                write_state(state, "127.0.0.1", pod.port, version=pod.version, digest=pod.digest)
            else:
                write_state(state, None, None)

    def close(self) -> None:
        for name in list(self.pods):
            self._stop(name)
        for front in self.fronts:
            front.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                front.wait(timeout=15)
