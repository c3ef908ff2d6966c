"""The ``kubernetes`` deploy target: a rolling Deployment, staged or canaried first, rolled back from records.

=================  ==========================================================================
``stage``          server-side apply of the shared objects and the candidate Deployment
                   (``<name>-candidate``: a staging Deployment with no live traffic, or a canary
                   behind the production Service); waits for its rollout. Returns the candidate
                   Service's URL for the smoke test.
``shift``          (canary: bake time, then the canary's health and error ratio) server-side
                   apply of the production Deployment with the candidate; waits for the rolling
                   update; removes the candidate Deployment. Returns the production URL.
``retire``         the old ReplicaSet is already scaled to 0 by the controller; the replaced
                   version stays recorded for a later manual rollback.
``rollback``       re-applies the previous version's recorded objects (never ``rollout undo``),
                   removes the candidate; nothing when the run changed nothing.
=================  ==========================================================================

Waiting: a step polls for ``rollout.wait_in_task_seconds`` and then raises
:class:`~model_delivery.deploy.kubernetes.rollout.RolloutPending`; ``DeployModelOperator`` defers to
:class:`~model_delivery.deploy.kubernetes.trigger.RolloutTrigger` and, when it fires, runs the step
again: every step is idempotent, so the second run re-applies nothing new and finds the rollout
over. State is kept in the deployment ledger and manifests in the artifact store
(:mod:`model_delivery.deploy.kubernetes.records`).
"""

from __future__ import annotations

import contextlib
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from model_delivery.deploy.kubernetes import manifests as m
from model_delivery.deploy.kubernetes.records import DeployRecords
from model_delivery.deploy.kubernetes.rollout import (
    COMPLETE,
    INVALID,
    RolloutPending,
    RolloutStatus,
    label_selector,
    rollout_state,
)
from model_delivery.exceptions import DeployFailed, ReleaseFailed, TamperedArtifact
from model_delivery.records import now
from model_delivery.store.layout import artifact_uri

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from model_delivery.deploy import Candidate
    from model_delivery.deploy.kubernetes.client import Cluster
    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec
    from model_delivery.store import ArtifactStore


class RolloutFailed(ReleaseFailed):
    """A rollout failed for a reason a retry will not change (deadline exceeded, crash loop, canary errors)."""


class KubernetesTarget:
    """Deliver one model to a Kubernetes namespace.

    :param spec: the model spec (its ``deploy.kubernetes`` section).
    :param settings: paths and the artifact store root.
    :param store: the artifact store: the pods fetch from it, and the records live in it.
    :param cluster: the API calls; by default through ``KubernetesHook(deploy.kubernetes.conn_id)``.
    """

    name = "kubernetes"

    def __init__(self, spec: ModelSpec, settings: Settings, store: ArtifactStore, cluster: Cluster | None = None,
                 log: Callable[..., None] | None = None) -> None:
        assert spec.deploy.kubernetes is not None  # guaranteed by DeploySpec validation
        self.spec = spec
        self.k8s = spec.deploy.kubernetes
        self.settings = settings
        self.store = store
        self.model = spec.name
        self.ledger = settings.open_ledger()
        self.records = DeployRecords(store, spec.name, self.ledger)
        self._cluster = cluster
        self._manifests: dict[str, dict[str, int]] = {}
        self.log = log or (lambda *args: None)

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: Settings, store: ArtifactStore,
                  log: Callable[..., None] | None = None) -> KubernetesTarget:
        """The target of ``spec``'s ``deploy.kubernetes`` section, through ``KubernetesHook(conn_id)``."""
        return cls(spec, settings, store, log=log)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            from model_delivery.deploy.kubernetes.client import Cluster

            self._cluster = Cluster.connect(self.k8s.conn_id, model=self.model, field_manager=self.k8s.field_manager,
                                            force=self.k8s.force_conflicts)
        return self._cluster

    def url(self, template: str) -> str:
        return template.format(name=m.base_name(self.model), namespace=self.k8s.namespace, port=self.k8s.service.port,
                               grpc_port=self.k8s.service.grpc_port)

    @property
    def staging_url(self) -> str:
        return self.url(self.k8s.staging_url)

    @property
    def production_url(self) -> str:
        return self.url(self.k8s.production_url)

    def release(self, version: str, digest: str) -> m.Release:
        """A version as the pods get it: the artifact URI is under the store root the pods see."""
        root = (self.k8s.artifact_fetch.store_uri or self.settings.artifact_root).rstrip("/")
        serving = self.spec.serving
        files = self._files(digest)
        return m.Release(self.model, version, digest, self._oci_ref(digest) or artifact_uri(root, self.model, digest),
                         serving.runtime, tuple(sorted(serving.args.items())),
                         None if files is None else sum(files.values()), self.pod_signing,
                         grpc=self.spec.serving.grpc)

    @cached_property
    def pod_signing(self) -> m.PodSigning | None:
        """The public key (or CA certificates) the pods verify signatures with: the spec's ``signing``, as the other
        targets read it (``signing.public_key`` in the model folder, else the signing connection); None when off.

        :raises SignatureRefused: signing is on and nothing to verify with is configured.
        """
        from model_delivery.signing import trust_of

        trust = trust_of(self.spec.signing, self.settings.models_dir / self.model)
        return None if trust is None else m.PodSigning(trust.mode, trust.method, trust.pem.decode())

    def _oci_ref(self, digest: str) -> str | None:
        """``oci://host/repo@<OCI manifest digest>`` once staging pushed the artifact (by tag before: render)."""
        fetch = self.k8s.artifact_fetch
        if fetch.registry is None:
            return None
        from model_delivery.store.oci import tag_for

        pushed = self.records.load().get("oci", {}).get(digest)
        return f"{fetch.registry}@{pushed}" if pushed else f"{fetch.registry}:{tag_for(digest)}"

    def _push_oci(self, digest: str) -> None:
        """Push the artifact to the spec's registry (blobs it has are not sent again); record its OCI digest."""
        fetch = self.k8s.artifact_fetch
        if fetch.registry is None:
            return
        from model_delivery.store.oci import OciRepository, push_stored

        login = password = None
        if fetch.registry_conn_id:
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(fetch.registry_conn_id)
            login, password = conn.login, conn.password
        repository = OciRepository(fetch.registry, insecure=fetch.registry_insecure, username=login, password=password)
        pushed = push_stored(self.store, self.model, digest, repository)
        self.log("pushed %s to %s: OCI digest %s (%d blob(s) uploaded, %d already there)", digest, fetch.registry,
                 pushed["oci_digest"], pushed["uploaded"], pushed["reused"])
        state = self.records.load()
        state.setdefault("oci", {})[digest] = pushed["oci_digest"]
        self.records.save(state)

    def _files(self, digest: str) -> dict[str, int] | None:
        """The stored artifact's files and sizes (its manifest, read once: a digest's content never changes)."""
        if digest not in self._manifests:
            files = self.store.files_of(self.model, digest)
            if files is None:
                return None  # not stored (yet): asked again next time
            self._manifests[digest] = files
        return self._manifests[digest]

    def objects(self, release: m.Release, track: str) -> list[dict[str, Any]]:
        """What a step applies, in order: the shared objects, then the track's Deployment."""
        return [*m.shared_objects(self.k8s, self.model, release.signing, release.grpc),
                m.deployment(self.k8s, release, track)]

    def _apply(self, objects: list[dict[str, Any]], run_id: str, step: str, release: m.Release) -> None:
        """Server-side apply of ``objects``, journaled (a kill half-way is settled by the next step)."""
        detail = {"step": step, "version": release.version, "digest": release.digest,
                  "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in objects]}
        with self.ledger.change(self.model, self.name, run_id, "apply", detail):
            for obj in objects:
                self.cluster.apply(obj)

    def _delete(self, track: str, run_id: str) -> bool:
        """Delete the track's Deployment, journaled; whether it existed."""
        name = m.deployment_name(self.model, track)
        with self.ledger.change(self.model, self.name, run_id, "delete", {"deployment": name}):
            return self.cluster.delete_deployment(self.k8s.namespace, name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the model's lock in the ledger for a step, and settle first what a killed step left."""
        with self.ledger.exclusive(self.model):
            for entry in self.ledger.pending(self.model, self.name):
                # Applies and deletes are declarative: what the state names is applied again by the step that
                # runs next (a retry re-applies the same objects; a rollback re-applies the recorded previous).
                self.ledger.undone(entry["id"], f"run {entry['run_id']} was killed during its {entry['action']} of "
                                                f"{entry['detail'].get('objects') or entry['detail'].get('deployment')};"
                                                " the next step applies what the state names")
            yield

    def read_rollout(self, release: m.Release, track: str) -> RolloutStatus:
        name = m.deployment_name(self.model, track)
        found = self.cluster.get_deployment(self.k8s.namespace, name)
        if found is None:
            return RolloutStatus(INVALID, f"deployment {name!r} does not exist in namespace {self.k8s.namespace}")
        pods = self.cluster.list_pods(self.k8s.namespace, label_selector(m.rollout_pod_selector(release, track)))
        return rollout_state(found, pods, max_restarts=self.k8s.rollout.max_restarts)

    def _failure(self, status: RolloutStatus, what: str, track: str) -> Exception:
        message = f"{what} failed: {status.message}"
        if status.tampered:
            return TamperedArtifact(f"{message}. The pod refused the artifact: its files do not match the digest, or "
                                    "(with signing on) its signature does not hold, as its log above says. Do not "
                                    "deploy it; rebuild the model.", result=status.to_dict())
        return RolloutFailed(f"{message}. See `kubectl -n {self.k8s.namespace} describe deployment "
                             f"{m.deployment_name(self.model, track)}` and the events of its pods.", result=status.to_dict())

    def _await(self, release: m.Release, track: str, *, what: str, deadline: float, not_before: float | None = None,
               defer: bool = True) -> RolloutStatus:
        """Poll the rollout within the in-task budget; then defer (raise RolloutPending) or return."""
        rollout = self.k8s.rollout
        budget_end = time.monotonic() + rollout.wait_in_task_seconds
        while True:
            status = self.read_rollout(release, track)
            if status.failed:
                raise self._failure(status, what, track)
            if status.state == COMPLETE and (not_before is None or time.time() >= not_before):
                return status
            if time.time() >= deadline:
                raise RolloutFailed(f"{what} did not finish within rollout.timeout_seconds="
                                    f"{rollout.timeout_seconds:g}: {status.message}", result=status.to_dict())
            if time.monotonic() >= budget_end:
                if not defer:
                    return status
                raise RolloutPending(
                    f"{what}: {status.message}; waiting in the triggerer", conn_id=self.k8s.conn_id,
                    namespace=self.k8s.namespace, deployment=m.deployment_name(self.model, track),
                    pod_selector=m.rollout_pod_selector(release, track), deadline=deadline,
                    poll_interval=rollout.poll_interval_seconds, max_restarts=rollout.max_restarts,
                    not_before=not_before,
                )
            time.sleep(max(0.0, min(rollout.poll_interval_seconds, budget_end - time.monotonic())))

    def _remove_candidate(self, run_id: str) -> bool:
        return self._delete(m.CANDIDATE, run_id)

    def _summary(self, release: m.Release, url: str, status: RolloutStatus | None, note: str) -> dict[str, Any]:
        summary = {"url": url, "version": release.version, "digest": release.digest, "namespace": self.k8s.namespace,
                   "rollout": status.message if status else None, "note": note}
        if release.grpc:  # the same Service's gRPC port (smoke.protocol: grpc)
            template = self.k8s.staging_grpc if url == self.staging_url else self.k8s.production_grpc
            summary["grpc_url"] = self.url(template)
        return summary

    # -- the protocol ---------------------------------------------------------------------------

    def plan(self, candidate: Candidate) -> dict[str, Any]:
        """Dry run: a server-side dry run (``dryRun=All``) of every object stage and shift would apply.

        The API server checks each one as for a real apply (schema, admission, RBAC, field ownership)
        and persists nothing; an error names the object and the fix, as a real apply's would.
        """
        release = self.release(candidate.version, candidate.digest)
        objects = [*self.objects(release, m.CANDIDATE), m.deployment(self.k8s, release, m.STABLE)]
        checked = []
        for obj in objects:
            answer = self.cluster.apply(obj, dry_run=True)
            live = (answer.get("metadata") or {}).get("generation")
            checked.append({"kind": obj["kind"], "name": obj["metadata"]["name"], "generation": live})
        serving = self.records.load()["serving"]
        note = (f"server-side dry run of {len(checked)} object(s) in namespace {self.k8s.namespace} accepted; "
                f"would roll {self.model} from version {serving['version'] if serving else 'none'} to "
                f"{release.version}")
        return {"version": release.version, "digest": release.digest, "url": self.production_url,
                "objects": checked, "note": note}

    def stage(self, candidate: Candidate, run_id: str) -> dict[str, Any]:
        """Apply the candidate Deployment (staging, or canary) beside production and wait for it.

        The runtime first judges the artifact by its manifest (vLLM refuses pickles), before
        anything is applied; the pods' init container then verifies every byte against the digest.
        """
        with self._locked():
            return self._stage(candidate, run_id)

    def _stage(self, candidate: Candidate, run_id: str) -> dict[str, Any]:
        from model_delivery.runtimes import get_runtime

        files = self._files(candidate.digest)
        if files is not None:
            get_runtime(self.spec.serving.runtime).check_files(sorted(files), candidate.digest)
        self._push_oci(candidate.digest)
        release = self.release(candidate.version, candidate.digest)
        state = self.records.load()
        run = state["runs"].setdefault(run_id, {})
        serving = state["serving"]
        if serving and serving["digest"] == release.digest and self.k8s.canary is None:
            run["staged"] = {"version": release.version, "digest": release.digest, "reused_production": True}
            self.records.save(state)
            return self._summary(release, self.production_url, None,
                                 f"version {release.version} with this digest is already serving")
        staged = run.get("staged")
        if not staged or staged.get("digest") != release.digest:
            staged = run["staged"] = {"version": release.version, "digest": release.digest, "applied_at": time.time(),
                                      "canary": self.k8s.canary is not None}
        self.records.save(state)  # before the apply: a rollback must know this run touched the cluster
        objects = self.objects(release, m.CANDIDATE)
        self._apply(objects, run_id, "staging", release)
        self.records.save_run_copy(run_id, "staging", objects)
        what = f"{'canary' if self.k8s.canary else 'staging'} rollout of {self.model} version {release.version}"
        status = self._await(release, m.CANDIDATE, what=what,
                             deadline=staged["applied_at"] + self.k8s.rollout.timeout_seconds)
        state = self.records.load()
        state["runs"][run_id]["staged"].setdefault("ready_at", time.time())
        self.records.save(state)
        result = self._summary(release, self.staging_url, status,
                               "canary takes live traffic" if self.k8s.canary else "staged, no live traffic")
        if self.k8s.canary is not None:
            result["traffic_share"] = round(self.k8s.canary.replicas / (self.k8s.canary.replicas + self.k8s.replicas), 4)
        return result

    def _check_canary(self, release: m.Release, staged: dict[str, Any]) -> dict[str, Any]:
        """Bake, then judge the canary: still healthy, and its error ratio within budget."""
        from model_delivery.deploy.kubernetes.canary import error_ratio

        canary = self.k8s.canary
        assert canary is not None
        not_before = float(staged.get("ready_at") or time.time()) + canary.bake_seconds
        self._await(release, m.CANDIDATE, what=f"canary of {self.model} version {release.version}",
                    deadline=not_before + self.k8s.rollout.timeout_seconds, not_before=not_before)
        verdict = error_ratio(self.staging_url, release.digest, min_requests=canary.min_requests)
        if verdict["ratio"] is not None and verdict["ratio"] > canary.max_error_ratio:
            raise RolloutFailed(
                f"canary of {self.model} version {release.version} aborted: {verdict['errors']} of "
                f"{verdict['requests']} requests failed (ratio {verdict['ratio']:.4f} > canary.max_error_ratio "
                f"{canary.max_error_ratio})", result=verdict)
        return verdict

    def shift(self, run_id: str) -> dict[str, Any]:
        """Roll the production Deployment to the staged candidate; remove the candidate Deployment."""
        with self._locked():
            return self._shift(run_id)

    def _shift(self, run_id: str) -> dict[str, Any]:
        state = self.records.load()
        run = state["runs"].get(run_id) or {}
        staged = run.get("staged")
        if not staged:
            raise DeployFailed(f"run {run_id} has no staged candidate of {self.model}: deploy_staging first")
        release = self.release(staged["version"], staged["digest"])
        canary = self._check_canary(release, staged) if staged.get("canary") else None
        if not run.get("shifted"):
            serving = state["serving"]
            changed = not (serving and serving["digest"] == release.digest)
            run["shifted"] = {"applied_at": time.time(), "changed": changed, "replaced": serving if changed else None}
        objects = self.objects(release, m.STABLE)
        ref = self.records.save_version(release, objects)
        state["serving"] = {"version": release.version, "digest": release.digest, "record": ref, "run_id": run_id,
                            "since": now()}
        state["runs"][run_id] = run
        self.records.save(state)
        self._apply(objects, run_id, "production", release)
        self.records.save_run_copy(run_id, "production", objects)
        status = self._await(release, m.STABLE, what=f"production rollout of {self.model} version {release.version}",
                             deadline=run["shifted"]["applied_at"] + self.k8s.rollout.timeout_seconds)
        removed = self._remove_candidate(run_id)
        replaced = run["shifted"]["replaced"]
        result = self._summary(release, self.production_url, status, "rolled out; candidate Deployment removed"
                               if removed else "rolled out")
        result["replaced"] = replaced["version"] if replaced else None
        if canary is not None:
            result["canary"] = canary
        return result

    def retire(self, run_id: str) -> dict[str, Any]:
        """After promotion: the controller already scaled the old ReplicaSet to 0; keep its record as previous."""
        with self._locked():
            return self._retire(run_id)

    def _retire(self, run_id: str) -> dict[str, Any]:
        state = self.records.load()
        replaced = ((state["runs"].get(run_id) or {}).get("shifted") or {}).get("replaced")
        self._remove_candidate(run_id)
        if replaced:
            state["previous"] = replaced
            self.records.save(state)
        return {"retired": replaced["version"] if replaced else None,
                "note": "old ReplicaSet scaled to 0 by the Deployment controller; its manifests stay recorded"}

    def rollback(self, run_id: str) -> dict[str, Any]:
        """Put back what served before this run, from the recorded manifests; remove the candidate."""
        with self._locked():
            return self._rollback(run_id)

    def _rollback(self, run_id: str) -> dict[str, Any]:
        state = self.records.load()
        run = state["runs"].get(run_id)
        serving = state["serving"]
        shifted, staged = (run or {}).get("shifted"), (run or {}).get("staged")
        rollout = None
        if shifted and shifted.get("changed"):
            replaced = shifted.get("replaced")
            if replaced:
                objects = self.records.load_version(replaced["record"])
                release = self.release(replaced["version"], replaced["digest"])
                self._apply(objects, run_id, "rollback", release)
                self.records.save_run_copy(run_id, "rollback", objects)
                state["serving"] = serving = replaced
                self.records.save(state)
                rollout = self._await(release, m.STABLE, what=f"rollback of {self.model} to version "
                                      f"{replaced['version']}", deadline=time.time() + self.k8s.rollout.timeout_seconds,
                                      defer=False).message
                action = "reapplied-previous"
            else:
                self._delete(m.STABLE, run_id)
                state["serving"] = serving = None
                action = "removed-no-previous"
            self._remove_candidate(run_id)
        elif staged and not staged.get("reused_production"):
            self._remove_candidate(run_id)
            action = "aborted-canary" if staged.get("canary") else "removed-candidate"
        else:
            return {"action": "none", "serving": serving["version"] if serving else None}
        assert run is not None
        run["rolled_back"] = {"action": action, "at": now()}
        self.records.save(state)
        return {"action": action, "serving": serving["version"] if serving else None, "rollout": rollout}

    def status(self) -> dict[str, Any]:
        """What the records say serves, and what the cluster says about its rollout."""
        state = self.records.load()
        serving = state["serving"]
        out: dict[str, Any] = {
            "target": self.name, "namespace": self.k8s.namespace, "deployment": m.base_name(self.model),
            "front_url": self.production_url, "active": serving, "standby": state["previous"],
            "candidates": {run: entry["staged"] for run, entry in state["runs"].items()
                           if entry.get("staged") and not entry.get("shifted") and not entry.get("rolled_back")},
            "active_alive": False,
        }
        if serving:
            try:
                rollout = self.read_rollout(self.release(serving["version"], serving["digest"]), m.STABLE)
                out["rollout"] = rollout.to_dict()
                out["active_alive"] = rollout.state == COMPLETE
            except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
                out["cluster_error"] = str(exc)
        return out


def render(spec: ModelSpec, settings: Settings, version: str, digest: str, *, parts: str = "all",
           track: str = m.STABLE) -> list[dict[str, Any]]:
    """The objects of ``version`` for review or GitOps (``model-delivery render-k8s``).

    :param parts: ``workload`` (what the deployer applies), ``rbac`` (what an admin grants it once) or ``all``.
    :param track: ``stable`` (the production Deployment) or ``candidate`` (the staging or canary Deployment).
    """
    from model_server.manifest import parse_digest

    if spec.deploy.kubernetes is None:
        raise ValueError(f"model {spec.name!r} has no deploy.kubernetes section; add one (docs/deploy-kubernetes.md)")
    parse_digest(digest)
    target = KubernetesTarget(spec, settings, settings.open_store())
    out: list[dict[str, Any]] = []
    if parts in ("rbac", "all"):
        out += m.rbac_objects(target.k8s.namespace)
    if parts in ("workload", "all"):
        out += target.objects(target.release(version, digest), track)
    return out
