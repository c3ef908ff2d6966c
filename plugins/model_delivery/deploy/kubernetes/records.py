"""What the kubernetes target applied, kept outside the cluster so rollback never depends on it.

The state is the model's ``kubernetes`` serving state in the deployment ledger
(:mod:`model_delivery.ledger`, shared by every worker): ``serving``, the version the
production Deployment was last applied with, and where its manifests are recorded;
``previous``, the one it replaced at the last promotion; ``runs``, per release run, what it
staged and shifted (with the version it replaced) and how it was rolled back.

Under ``<store>/<model>/kubernetes/``:

``versions/v<version>-<hex12>.json``
    The exact objects applied for that version's production Deployment (and the shared
    objects), re-applied as they are by a rollback.

Each run's applied objects are also copied beside its release record
(``releases/<run>/kubernetes/<step>.json``) for review. The store is shared by every worker,
so a task resumed on another machine, or a rollback, reads the same records.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from model_delivery.records import now

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from model_delivery.deploy.kubernetes.manifests import Release
    from model_delivery.ledger import Ledger
    from model_delivery.store import ArtifactStore


class DeployRecords:
    """Read and write one model's kubernetes deploy records in the store."""

    def __init__(self, store: ArtifactStore, model: str, ledger: Ledger) -> None:
        self.store = store
        self.model = model
        self.ledger = ledger
        self.root = store.layout.kubernetes(model)

    def load(self) -> dict[str, Any]:
        state = self.ledger.state(self.model, "kubernetes")
        state.setdefault("serving", None)
        state.setdefault("previous", None)
        state.setdefault("runs", {})
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.ledger.save_state(self.model, "kubernetes", state)

    @staticmethod
    def version_ref(release: Release) -> str:
        """Where a version's objects are recorded, relative to the records root."""
        return f"versions/v{release.version}-{release.hex[:12]}.json"

    def path(self, ref: str) -> ObjectStoragePath:
        return self.root / ref

    def save_version(self, release: Release, objects: list[dict[str, Any]]) -> str:
        """Record the objects of a version's production rollout; return their ref."""
        ref = self.version_ref(release)
        self.store.write_json(self.root / ref, {
            "model": self.model, "version": release.version, "digest": release.digest,
            "artifact_uri": release.artifact_uri, "recorded_at": now(), "objects": objects,
        })
        return ref

    def load_version(self, ref: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = json.loads((self.root / ref).read_text())["objects"]
        return objects

    def save_run_copy(self, run_id: str, step: str, objects: list[dict[str, Any]]) -> str:
        path = self.store.layout.run_objects(self.model, run_id, step)
        self.store.write_json(path, objects)
        return str(path)
