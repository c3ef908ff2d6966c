"""A Kubernetes API server stand-in on 127.0.0.1 that replays recorded responses (tests/fixtures/k8s/).

It speaks plain HTTP to real clients: the ``kubernetes`` client behind the provider's
``KubernetesHook``, ``kubernetes_asyncio`` behind ``AsyncKubernetesHook`` and ``kubectl``. It

- records every request (method, path, query, headers, body) for the tests to assert on;
- answers a server-side apply (PATCH ``application/apply-patch+yaml``) by storing the object
  with the fields an API server adds (uid, resourceVersion, generation bumped when the spec
  changes, managedFields), 201 when created and 200 when updated;
- answers the rollout status of a Deployment from a script of recorded moments
  (``fixtures/k8s/rollout/*.json``) that restarts at each new generation, and the pods of its
  template from the same moment;
- answers discovery and the OpenAPI v3 documents kubectl reads, and recorded errors
  (403, 409, ...) on the requests a test names.

It is not an API server: it does not validate objects, run controllers or schedule pods.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
APPLY = "application/apply-patch+yaml"
_OBJECT = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
_DISCOVERY = {
    "/api": "api.json", "/apis": "apis.json", "/api/v1": "api-v1.json", "/apis/apps/v1": "apis-apps-v1.json",
    "/apis/policy/v1": "apis-policy-v1.json", "/apis/rbac.authorization.k8s.io/v1": "apis-rbac.authorization.k8s.io-v1.json",
    "/openapi/v3": "openapi-v3.json",
}


def fixture(*parts: str) -> Any:
    return json.loads((FIXTURES.joinpath(*parts)).read_text())


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    raw_query: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def is_apply(self) -> bool:
        return self.method == "PATCH" and self.content_type == APPLY


@dataclass
class Failure:
    method: str
    path: re.Pattern[str]
    status: int
    body: dict[str, Any]
    times: int


@dataclass
class Stored:
    obj: dict[str, Any]
    generation: int
    reads: int = 0


@dataclass
class ApiServer:
    """The stand-in; use :func:`api_server` to run one."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    objects: dict[str, Stored] = field(default_factory=dict)
    scripts: dict[str, list[list[str]]] = field(default_factory=dict)
    script_base: dict[str, int] = field(default_factory=dict)
    default_script: list[str] = field(default_factory=lambda: ["complete"])
    failures: list[Failure] = field(default_factory=list)
    on_apply: Callable[[dict[str, Any], bool], None] | None = None
    on_delete: Callable[[dict[str, Any]], None] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    _resource_version: int = 1000

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests set up ---------------------------------------------------------------------

    def script(self, deployment: str, *phases: list[str]) -> None:
        """Rollout moments for ``deployment``: phase i is used by its i-th new generation from now (the last repeats).

        Within a phase, each read of the Deployment moves to the next moment (the last repeats).
        """
        with self.lock:
            self.scripts[deployment] = [list(p) for p in phases]
            current = next((s.generation for k, s in self.objects.items() if k.endswith(f"/deployments/{deployment}")), 0)
            self.script_base[deployment] = current

    def fail(self, method: str, path: str, status: int, body_fixture: str, times: int = 1) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path`` (a regex) with a recorded error."""
        self.failures.append(Failure(method, re.compile(path), status, fixture("errors", body_fixture), times))

    def kubeconfig(self, path: Path, namespace: str = "default", token: str = "test-token") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "replay", "cluster": {"server": self.url}}],
            "users": [{"name": "deployer", "user": {"token": token}}],
            "contexts": [{"name": "replay", "context": {"cluster": "replay", "user": "deployer", "namespace": namespace}}],
            "current-context": "replay",
        }))
        return path

    def applies(self, kind: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.is_apply and (kind is None or r.json.get("kind") == kind)]

    def stored(self, plural: str, name: str, namespace: str) -> dict[str, Any] | None:
        found = self.objects.get(f"{namespace}/{plural}/{name}")
        return found.obj if found else None

    # -- answering -------------------------------------------------------------------------------

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def handle(self, req: Request) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(req)
            for failure in self.failures:
                if failure.times and failure.method == req.method and failure.path.search(req.path):
                    failure.times -= 1
                    return failure.status, failure.body
            if req.path in _DISCOVERY:
                return 200, fixture("discovery", _DISCOVERY[req.path])
            if req.path.startswith("/openapi/v3/"):
                name = "openapi-v3-" + req.path.removeprefix("/openapi/v3/").replace("/", "-") + ".json"
                return (200, fixture("discovery", name)) if (FIXTURES / "discovery" / name).exists() else (404, {})
            match = _OBJECT.match(req.path)
            if not match:
                return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
            group, ns, plural, name = match["group"] or "", match["ns"], match["plural"], match["name"]
            if req.is_apply and name:
                return self._apply(req, ns, plural, name)
            if req.method == "GET" and name:
                return self._get(ns, plural, name, group)
            if req.method == "GET" and plural == "pods":
                return 200, self._pods(ns, (req.query.get("labelSelector") or [""])[0])
            if req.method == "DELETE" and name:
                return self._delete(ns, plural, name, group)
            return 405, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "MethodNotAllowed", "code": 405}

    def _apply(self, req: Request, ns: str, plural: str, name: str) -> tuple[int, Any]:
        if not req.query.get("fieldManager"):
            return 400, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400,
                         "message": "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"}
        body = yaml.safe_load(req.body)
        key = f"{ns}/{plural}/{name}"
        before = self.objects.get(key)
        meta = body.setdefault("metadata", {})
        if before is None:
            generation = 1
            meta.update(uid=str(uuid.uuid4()), creationTimestamp="2026-11-26T10:00:00Z")
        else:
            changed = before.obj.get("spec") != body.get("spec")
            generation = before.generation + (1 if changed else 0)
            meta.update(uid=before.obj["metadata"]["uid"], creationTimestamp=before.obj["metadata"]["creationTimestamp"])
        meta.update(resourceVersion=self._next_version(), generation=generation, managedFields=[{
            "manager": req.query["fieldManager"][0], "operation": "Apply", "apiVersion": body.get("apiVersion"),
            "time": "2026-11-26T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {f"f:{k}": {} for k in body if k not in (
                "apiVersion", "kind")}}])
        stored = Stored(body, generation)
        if before is not None and generation == before.generation:
            stored.reads = before.reads
        if req.query.get("dryRun") == ["All"]:  # validated and merged, never persisted
            return (201 if before is None else 200), json.loads(json.dumps(body))
        self.objects[key] = stored
        if self.on_apply is not None:
            self.on_apply(body, before is None or generation != before.generation)
        return (201 if before is None else 200), self._with_status(stored, plural)

    def _moment(self, stored: Stored) -> dict[str, Any]:
        """The recorded moment of the latest read of this generation (the first before any read)."""
        name = stored.obj["metadata"]["name"]
        phases = self.scripts.get(name) or [self.default_script]
        phase = stored.generation - self.script_base.get(name, 0) - 1
        steps = phases[min(max(phase, 0), len(phases) - 1)]
        return fixture("rollout", f"{steps[min(max(stored.reads - 1, 0), len(steps) - 1)]}.json")

    def _with_status(self, stored: Stored, plural: str) -> dict[str, Any]:
        obj = json.loads(json.dumps(stored.obj))
        if plural == "deployments":
            moment = self._moment(stored)
            status = dict(moment["deployment_status"])
            status["observedGeneration"] = stored.generation if moment["observed"] else stored.generation - 1
            status["conditions"] = json.loads(json.dumps(status.get("conditions", [])).replace(
                "{rs}", f"{stored.obj['metadata']['name']}-7d9f8b6c5d"))
            obj["status"] = status
        return obj

    def _get(self, ns: str, plural: str, name: str, group: str) -> tuple[int, Any]:
        stored = self.objects.get(f"{ns}/{plural}/{name}")
        if stored is None:
            return 404, self._status("not-found.json", plural, name, group)
        stored.reads += 1
        return 200, self._with_status(stored, plural)

    def _status(self, template: str, plural: str, name: str, group: str, uid: str = "") -> dict[str, Any]:
        text = (FIXTURES / "errors" / template).read_text()
        resource = f"{plural}.{group}" if group else plural
        for key, value in {"{resource}": resource, "{name}": name, "{group}": group, "{plural}": plural,
                           "{uid}": uid}.items():
            text = text.replace(key, value)
        return json.loads(text)

    def _pods(self, ns: str, selector: str) -> dict[str, Any]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        items = []
        for key, stored in self.objects.items():
            if not key.startswith(f"{ns}/deployments/"):
                continue
            template = stored.obj["spec"]["template"]["metadata"]["labels"]
            if any(template.get(k) != v for k, v in wanted.items()):
                continue
            deployment = stored.obj["metadata"]["name"]
            digest = stored.obj["metadata"].get("annotations", {}).get("model-delivery.io/digest", "sha256:")
            for number, pod in enumerate(self._moment(stored)["pods"], start=1):
                pod_name = f"{deployment}-7d9f8b6c5d-{number:05d}"
                text = json.dumps(pod)
                for key_, value in {"{pod}": pod_name, "{digest}": digest, "{hex}": digest.split(":")[-1],
                                    "{uri}": stored.obj["metadata"].get("annotations", {}).get(
                                        "model-delivery.io/artifact-uri", "")}.items():
                    text = text.replace(key_, value)
                item = json.loads(text)
                item["metadata"].update(name=pod_name, generateName=f"{deployment}-7d9f8b6c5d-", namespace=ns,
                                        labels={**template, "pod-template-hash": "7d9f8b6c5d"})
                items.append(item)
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": self._next_version()},
                "items": items}

    def _delete(self, ns: str, plural: str, name: str, group: str) -> tuple[int, Any]:
        stored = self.objects.pop(f"{ns}/{plural}/{name}", None)
        if stored is None:
            return 404, self._status("not-found.json", plural, name, group)
        if self.on_delete is not None:
            self.on_delete(stored.obj)
        return 200, self._status("deleted.json", plural, name, group, stored.obj["metadata"]["uid"])


def _handler(server: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            req = Request(self.command, parts.path, parse_qs(parts.query),
                          {k.lower(): v for k, v in self.headers.items()}, body, parts.query)
            status, answer = server.handle(req)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
            pass

    return Handler


class running:  # noqa: N801 - used as a context manager
    """Run an :class:`ApiServer` on a free port of 127.0.0.1 for the ``with`` block."""

    def __init__(self, server: ApiServer | None = None) -> None:
        self.server = server or ApiServer()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.server))
        self._http.daemon_threads = True
        self.server.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> ApiServer:
        self._thread.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


def connection_env(kubeconfig: Path, conn_id: str = "kubernetes_default") -> dict[str, str]:
    """The Airflow connection, as an environment variable, pointing the provider's hooks at a kubeconfig."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({"conn_type": "kubernetes",
                                                            "extra": {"kube_config_path": str(kubeconfig)}})}
