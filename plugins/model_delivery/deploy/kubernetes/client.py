"""The deployer's few API calls, through the cncf.kubernetes provider's hooks.

Every write is a server-side apply, made as ``kubectl apply --server-side`` makes it:
``PATCH <object path>?fieldManager=<manager>&fieldValidation=Strict&force=<false|true>`` with
``Content-Type: application/apply-patch+yaml`` and the manifest as the body. Reads are the
Deployment (rollout status) and the pods of a rollout. API errors become messages that say
what to do: a 403 names the missing verb and resource, a 409 the other field manager.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import DeployFailed, ReleaseFailed

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
RESPONSE_TYPES = {200: "object", 201: "object", 202: "object"}

# (apiVersion, kind) -> (API path prefix, resource); the only kinds the deployer writes or reads.
RESOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
_FORBIDDEN = re.compile(r'cannot (?P<verb>\w+) resource "(?P<resource>[^"]+)" in API group "(?P<group>[^"]*)"')
_MANAGER = re.compile(r'conflicts? with "(?P<manager>[^"]+)"')


class KubernetesForbidden(ReleaseFailed):
    """The deployer lacks an RBAC permission (403); a retry will not grant it."""


class KubernetesConflict(ReleaseFailed):
    """Server-side apply found fields owned by another field manager (409)."""


class KubernetesRejected(ReleaseFailed):
    """The API server refused a manifest or a request for good (401, 404 namespace, 422)."""


class KubernetesUnavailable(DeployFailed):
    """The API server could not be reached or answered with a server error (retried)."""


def resource_of(api_version: str, kind: str) -> str:
    """``deployments.apps`` or ``services``: how RBAC and kubectl name a resource."""
    prefix, plural = RESOURCES[(api_version, kind)]
    group = api_version.split("/")[0] if "/" in api_version else ""
    return f"{plural}.{group}" if group else plural


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = RESOURCES[(api_version, kind)]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def apply_query(field_manager: str, force: bool, dry_run: bool = False) -> list[tuple[str, str]]:
    """The query of a server-side apply, in kubectl's order (its url.Values encoding sorts the keys).

    ``dry_run``: ``dryRun=All``, as ``kubectl apply --server-side --dry-run=server`` sends it: the API
    server validates, admits and merges the object, and persists nothing.
    """
    query = [("dryRun", "All")] if dry_run else []
    return [*query, ("fieldManager", field_manager), ("fieldValidation", "Strict"),
            ("force", "true" if force else "false")]


def _status_body(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if isinstance(body, str) and body else {}
    except ValueError:
        return {"message": str(body)[:500]}
    return parsed if isinstance(parsed, dict) else {}


def explain(status: int, body: Any, *, verb: str, resource: str, namespace: str, name: str | None, model: str,
            field_manager: str) -> Exception:
    """Turn an API error into an exception whose message says what failed and the fix (``http_status`` kept)."""
    exc = _explain(status, body, verb=verb, resource=resource, namespace=namespace, name=name, model=model,
                   field_manager=field_manager)
    exc.http_status = status  # type: ignore[attr-defined]
    return exc


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an explained API error came from."""
    return getattr(exc, "http_status", None)


def _explain(status: int, body: Any, *, verb: str, resource: str, namespace: str, name: str | None, model: str,
             field_manager: str) -> Exception:
    doc = _status_body(body)
    said = doc.get("message") or doc.get("reason") or f"HTTP {status}"
    target = f"{resource} {name!r}" if name else resource
    if status == 403:
        found = _FORBIDDEN.search(said)
        if found:
            verb = found["verb"]
            resource = f"{found['resource']}.{found['group']}" if found["group"] else found["resource"]
        return KubernetesForbidden(
            f"forbidden: the deployer needs `{verb}` on `{resource}` in namespace {namespace}; grant it with the "
            f"Role printed by `model-delivery render-k8s {model} --rbac` (its rules are "
            f"include/kubernetes/deployer-role.yaml), bound to the identity of the Airflow connection. "
            f"The API server said: {said}"
        )
    if status == 409:
        causes = (doc.get("details") or {}).get("causes") or []
        fields = [c.get("field") for c in causes if c.get("field")]
        managers = sorted({m["manager"] for text in [said, *(c.get("message", "") for c in causes)]
                           for m in _MANAGER.finditer(text)})
        return KubernetesConflict(
            f"server-side apply of {target} in namespace {namespace} conflicts with field manager(s) "
            f"{', '.join(managers) or '(unnamed)'} on {', '.join(fields) or 'some fields'}: someone changed them "
            f"after {field_manager!r} applied them. Fix: undo or release that change (for example `kubectl apply "
            f"--server-side --field-manager=<that manager>` without those fields), or set "
            f"deploy.kubernetes.force_conflicts: true in model.yaml to take the fields over. The API server said: {said}"
        )
    if status == 401:
        return KubernetesRejected(
            f"the API server refused the credentials (401) while trying to {verb} {target}: renew the token or "
            f"certificate in the Airflow connection's kubeconfig. The API server said: {said}"
        )
    if status == 404 and (doc.get("details") or {}).get("kind") == "namespaces":
        return KubernetesRejected(
            f"namespace {namespace} does not exist: create it (`kubectl create namespace {namespace}`) and apply "
            f"the deployer's RBAC there (`model-delivery render-k8s {model} --rbac`). The API server said: {said}"
        )
    if status in (400, 404, 422):
        return KubernetesRejected(f"the API server refused to {verb} {target} in namespace {namespace} "
                                  f"({status} {doc.get('reason', '')}): {said}")
    return KubernetesUnavailable(f"the API server failed to {verb} {target} in namespace {namespace} "
                                 f"({status}): {said}")


class Cluster:
    """The deployer's calls against one cluster, with the ApiClient of a KubernetesHook.

    :param api: an ApiClient, from ``KubernetesHook(conn_id).get_conn()`` (see :meth:`connect`).
    :param model: the model, named in error messages.
    :param field_manager: server-side apply field manager.
    :param force: server-side apply with force (take over conflicting fields).
    """

    def __init__(self, api: ApiClient, *, model: str, field_manager: str, force: bool, conn_id: str = "") -> None:
        self.api = api
        self.model = model
        self.field_manager = field_manager
        self.force = force
        self.conn_id = conn_id

    @classmethod
    def connect(cls, conn_id: str, **kwargs: Any) -> Cluster:
        """Through the provider's hook: a kubeconfig file or content in the connection, or in-cluster."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return cls(KubernetesHook(conn_id=conn_id).get_conn(), conn_id=conn_id, **kwargs)

    def _call(self, method: str, path: str, *, verb: str, resource: str, namespace: str, name: str | None,
              query: list[tuple[str, str]] | None = None, body: Any = None, content_type: str | None = None) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return self.api.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                response_types_map=RESPONSE_TYPES, auth_settings=["BearerToken"], _return_http_data_only=True,
            )
        except ApiException as exc:
            raise explain(exc.status, exc.body, verb=verb, resource=resource, namespace=namespace, name=name,
                          model=self.model, field_manager=self.field_manager) from None
        except HTTPError as exc:
            raise KubernetesUnavailable(
                f"cannot reach the Kubernetes API at {self.api.configuration.host} (connection {self.conn_id!r}) to "
                f"{verb} {resource} in namespace {namespace}: {exc}. Check the connection's kubeconfig and that the "
                "API server is reachable from the Airflow worker."
            ) from None

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply one object, exactly as ``kubectl apply --server-side`` sends it (``dry_run``: persist nothing)."""
        api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
        path = object_path(api_version, kind, meta["namespace"], meta["name"])
        result: dict[str, Any] = self._call(
            "PATCH", path, verb="patch", resource=resource_of(api_version, kind), namespace=meta["namespace"],
            name=meta["name"], query=apply_query(self.field_manager, self.force, dry_run), body=obj,
            content_type=APPLY_CONTENT_TYPE,
        )
        return result

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment with its status, or None when it does not exist."""
        try:
            found: dict[str, Any] = self._call(
                "GET", object_path("apps/v1", "Deployment", namespace, name), verb="get",
                resource="deployments.apps", namespace=namespace, name=name,
            )
        except KubernetesRejected as exc:
            if http_status(exc) == 404:
                return None
            raise
        return found

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = self._call("GET", object_path("v1", "Pod", namespace), verb="list", resource="pods",
                           namespace=namespace, name=None, query=[("labelSelector", label_selector)])
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    def delete_deployment(self, namespace: str, name: str) -> bool:
        """Delete a Deployment (its pods go with it); False when it was not there."""
        try:
            self._call("DELETE", object_path("apps/v1", "Deployment", namespace, name), verb="delete",
                       resource="deployments.apps", namespace=namespace, name=name,
                       query=[("propagationPolicy", "Background")])
        except KubernetesRejected as exc:
            if http_status(exc) == 404:
                return False
            raise
        return True


async def aget(api: Any, path: str, *, verb: str, resource: str, namespace: str, name: str | None, model: str,
               query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """One GET with a kubernetes_asyncio ApiClient (the trigger's), errors explained as for the task."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        found: dict[str, Any] = await api.call_api(
            path, "GET", query_params=query or [], header_params={"Accept": "application/json"},
            response_types_map=RESPONSE_TYPES, auth_settings=["BearerToken"], _return_http_data_only=True,
        )
    except ApiException as exc:
        raise explain(exc.status, exc.body, verb=verb, resource=resource, namespace=namespace, name=name,
                      model=model, field_manager="") from None
    return found
