"""Where everything lives in the artifact store: the only code that knows the store's paths.

Under the store root (``file://.local/artifacts`` by default; ``s3://`` or ``gs://`` with the
matching provider and connection)::

    blobs/sha256/<hex>                        every file once, by its sha256, shared by all models
    blobs/uploads/<hex>.part                  a blob upload in progress (resumed by the next put)
    <model>/sha256/<hex>/MANIFEST.json        an artifact: its manifest, written last (the commit marker)
    <model>/sha256/<hex>/<path>               the legacy layout: files beside their manifest (``store migrate``)
    <model>/sha256/<hex>/signature/model.sig  the artifact's OpenSSF model-signing bundle (``signing: required``)
    <model>/releases/<run>/                   a run's release record, report and the data its build used
    <model>/kubernetes/versions/<ref>.json    what the kubernetes target applied for a version
    _delivery_metrics/                        the delivery metrics DAG's output

Every other module asks this one (through :class:`StoreLayout`, or its functions on a root
given as a string, as a pod or a host sees the store), so moving a path is one change here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar

from model_server.manifest import MANIFEST_NAME, parse_digest

if TYPE_CHECKING:
    from collections.abc import Iterator

BLOBS = "blobs"
METRICS_DIR = "_delivery_metrics"
RELEASES = "releases"
ARTIFACTS = "sha256"
KUBERNETES = "kubernetes"
RESERVED = frozenset({BLOBS, METRICS_DIR})

P = TypeVar("P")  # an ObjectStoragePath, a pathlib.Path, or anything else with "/"


def safe_segment(value: str) -> str:
    """Make a run id or similar safe to use as one path segment on any store."""
    segment = re.sub(r"[^A-Za-z0-9._-]", "_", value)[:200]
    return (segment.replace(".", "_") or "_") if segment in ("", ".", "..") else segment


def model_segment(model: str) -> str:
    """A model's folder name; refuses names the store keeps for itself."""
    if model in RESERVED or model.startswith((".", "_")) or "/" in model or not model:
        raise ValueError(f"{model!r} cannot name a model in the store: it is reserved or not one path segment. "
                         "Fix: rename the model (name in model.yaml).")
    return model


def artifact_uri(root: str, model: str, digest: str) -> str:
    """The URI of an artifact's directory (its manifest is ``MANIFEST.json`` in it), on a root given as a URI."""
    return f"{root.rstrip('/')}/{model_segment(model)}/{ARTIFACTS}/{parse_digest(digest)}"


def blobs_uri(root: str) -> str:
    """The URI under which a blob is ``<hex>`` (its file's sha256), on a root given as a URI."""
    return f"{root.rstrip('/')}/{BLOBS}/sha256"


def store_root_of(artifact: str, model: str) -> str:
    """The store root of an artifact URI made by :func:`artifact_uri` (a pod mounts the root)."""
    return artifact.split(f"/{model_segment(model)}/{ARTIFACTS}/")[0]


class StoreLayout:
    """The paths of one store, under ``root`` (any path type with ``/``)."""

    def __init__(self, root: Any) -> None:
        self.root = root

    # -- artifacts and blobs --------------------------------------------------------------------------
    def blob(self, sha256_hex: str) -> Any:
        return self.root / BLOBS / "sha256" / sha256_hex

    def blobs(self) -> Any:
        return self.root / BLOBS / "sha256"

    def upload(self, sha256_hex: str) -> Any:
        """Where a blob is written until all of it is verified (a stable name: a killed upload resumes)."""
        return self.root / BLOBS / "uploads" / f"{sha256_hex}.part"

    def uploads(self) -> Any:
        return self.root / BLOBS / "uploads"

    def artifact(self, model: str, digest: str) -> Any:
        """An artifact's directory: its manifest, and in the legacy layout its files."""
        return self.root / model_segment(model) / ARTIFACTS / parse_digest(digest)

    def manifest(self, model: str, digest: str) -> Any:
        return self.artifact(model, digest) / MANIFEST_NAME

    def signature(self, model: str, digest: str) -> Any:
        """Where an artifact's signature (an OpenSSF model-signing bundle) is kept."""
        return self.artifact(model, digest) / "signature" / "model.sig"

    def legacy_file(self, model: str, digest: str, rel: str) -> Any:
        """Where the legacy layout kept an artifact's file (beside its manifest)."""
        return self.artifact(model, digest) / rel

    def artifacts(self, model: str) -> Iterator[tuple[str, Any]]:
        """(digest, directory) of every committed artifact of a model (those whose manifest is in place)."""
        base = self.root / model_segment(model) / ARTIFACTS
        if not base.exists():
            return
        for directory in base.iterdir():
            if len(directory.name) == 64 and (directory / MANIFEST_NAME).exists():
                yield f"sha256:{directory.name}", directory

    # -- records ---------------------------------------------------------------------------------------
    def releases(self, model: str) -> Any:
        return self.root / model_segment(model) / RELEASES

    def release_dir(self, model: str, run_id: str) -> Any:
        """Directory for one release's record, report and data."""
        return self.releases(model) / safe_segment(run_id)

    def release_file(self, model: str, segment: str, name: str) -> Any:
        """A file of a release directory named by its (already safe) segment, as the page links it."""
        return self.releases(model) / safe_segment(segment) / safe_segment(name)

    def run_objects(self, model: str, run_id: str, step: str) -> Any:
        """The Kubernetes objects one step of a run applied, kept beside its release record."""
        return self.release_dir(model, run_id) / KUBERNETES / f"{safe_segment(step)}.json"

    def kubernetes(self, model: str) -> Any:
        return self.root / model_segment(model) / KUBERNETES

    def metrics(self) -> Any:
        return self.root / METRICS_DIR

    def models(self) -> list[str]:
        """Model names that have a folder in the store (a retired model's history still counts)."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and p.name not in RESERVED and not p.name.startswith((".", "_")))
