"""Where everything lives in the artifact store: the only code that knows the store's paths.

Under the store root (``file://.local/artifacts`` by default; ``s3://`` or ``gs://`` with the
matching provider and connection; an OCI registry, ``oci://host[:port]/repository``, is the one
root that is not a filesystem: see below)::

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

**Records** (``releases/``, ``kubernetes/``, ``_delivery_metrics/``) live under the *records
root*, which :func:`records_location` decides and nothing else does: ``MODEL_DELIVERY_RECORDS_ROOT``
when it is set, else the artifact root itself (so a ``file://``, ``s3://`` or ``gs://`` store keeps
everything where it always did), except that an ``oci://`` artifact root, which can hold only
artifacts, puts them under ``file://<MODEL_DELIVERY_HOME>/records``.

**An ``oci://`` artifact root** (:class:`RegistryLayout`) has no paths for artifacts: each is an OCI
manifest tagged ``sha256-<hex of the artifact digest>`` in the repository, one layer per file plus
our ``MANIFEST.json`` (:mod:`model_delivery.store.oci`), and its signature bundle is a referrer of
that manifest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from model_server.manifest import MANIFEST_NAME, parse_digest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

BLOBS = "blobs"
METRICS_DIR = "_delivery_metrics"
RELEASES = "releases"
ARTIFACTS = "sha256"
KUBERNETES = "kubernetes"
RESERVED = frozenset({BLOBS, METRICS_DIR})
OCI_SCHEME = "oci"
RECORDS_DIR = "records"  # under MODEL_DELIVERY_HOME: the records of an oci:// store, by default

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


def is_registry(root: str) -> bool:
    """Whether a store root is an OCI registry (``oci://host[:port]/repository``) rather than a filesystem."""
    return root.split("://", 1)[0].lower() == OCI_SCHEME if "://" in root else False


def records_location(artifact_root: str, artifact_conn_id: str | None, home: str | Path,
                     configured: str | None = None) -> tuple[str, str | None]:
    """The records root and the connection to open it with: the one rule of where records live.

    ``configured`` (``MODEL_DELIVERY_RECORDS_ROOT``) when given, else the artifact root, else, for
    an ``oci://`` artifact root, ``file://<home>/records``. The artifact store's connection is used
    for records on the same kind of store (``s3://`` records of an ``s3://`` store), none otherwise.

    :raises ValueError: the records root would be a registry (it holds artifacts only), naming the fix.
    """
    root = (configured or "").strip() or (f"file://{Path(home) / RECORDS_DIR}" if is_registry(artifact_root)
                                          else artifact_root)
    if is_registry(root):
        raise ValueError(f"MODEL_DELIVERY_RECORDS_ROOT={root!r}: release records, reports and metrics are files, and "
                         "an OCI registry holds artifacts only. Fix: set MODEL_DELIVERY_RECORDS_ROOT to a file://, "
                         "s3:// or gs:// URI, or unset it (default: file://<MODEL_DELIVERY_HOME>/records).")
    same_kind = root.split("://", 1)[0] == artifact_root.split("://", 1)[0]
    return root, artifact_conn_id if same_kind else None


def artifact_uri(root: str, model: str, digest: str) -> str:
    """The URI of an artifact on a root given as a URI: its directory (its manifest is ``MANIFEST.json`` in it).

    On an ``oci://`` root, the repository itself: the artifact is its tag ``sha256-<hex>``, which a reader
    resolves from the digest it is given (``include/kubernetes/fetch_artifact.py --uri ... --digest ...``).
    """
    if is_registry(root):
        model_segment(model)
        parse_digest(digest)
        return root.rstrip("/")
    return f"{root.rstrip('/')}/{model_segment(model)}/{ARTIFACTS}/{parse_digest(digest)}"


def blobs_uri(root: str) -> str:
    """The URI under which a blob is ``<hex>`` (its file's sha256), on a root given as a URI."""
    return f"{root.rstrip('/')}/{BLOBS}/sha256"


def store_root_of(artifact: str, model: str) -> str:
    """The store root of an artifact URI made by :func:`artifact_uri` (a pod mounts the root)."""
    return artifact.split(f"/{model_segment(model)}/{ARTIFACTS}/")[0]


class StoreLayout:
    """The paths of one store, under ``root`` (any path type with ``/``).

    :param records: the records root (:func:`records_location`), when it is not ``root``.
    """

    def __init__(self, root: Any, records: Any = None) -> None:
        self.root = root
        self.records = root if records is None else records

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
        return self.records / model_segment(model) / RELEASES

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
        return self.records / model_segment(model) / KUBERNETES

    def metrics(self) -> Any:
        return self.records / METRICS_DIR

    def models(self) -> list[str]:
        """Model names that have a folder in the store or its records (a retired model's history still counts)."""
        found: set[str] = set()
        for root in (self.root, self.records) if self.records is not self.root else (self.root,):
            if root is not None and root.exists():
                found.update(p.name for p in root.iterdir()
                             if p.is_dir() and p.name not in RESERVED and not p.name.startswith((".", "_")))
        return sorted(found)


class UnsupportedByStore(ValueError):
    """The operation has no meaning for this kind of store (e.g. a path into an OCI registry); the message says why."""


class RegistryLayout(StoreLayout):
    """The layout of a store whose artifacts are in an OCI registry (``uri``): only records have paths.

    :param records: the records root (:func:`records_location`).
    :param signature: gives the place of an artifact's signature bundle (a referrer in the registry),
        which the signing code reads with ``exists()``/``read_bytes()`` and writes with the store's ``write_text``.
    """

    def __init__(self, uri: str, records: Any, signature: Callable[[str, str], Any]) -> None:
        super().__init__(None, records=records)
        self.uri = uri
        self._signature = signature

    def _no_path(self, what: str) -> UnsupportedByStore:
        return UnsupportedByStore(f"the artifact store {self.uri} is an OCI registry: {what} has no path in it (an "
                                  "artifact is an OCI manifest and its blobs). Fix: use the store's methods (fetch, "
                                  "verify, files_of), or a file:// artifact root for what needs paths.")

    def blob(self, sha256_hex: str) -> Any:
        raise self._no_path(f"the blob {sha256_hex}")

    def blobs(self) -> Any:
        raise self._no_path("the blobs folder")

    def upload(self, sha256_hex: str) -> Any:
        raise self._no_path("an upload")

    def uploads(self) -> Any:
        raise self._no_path("the uploads folder")

    def artifact(self, model: str, digest: str) -> Any:
        raise self._no_path(f"the artifact {digest} of {model!r}")

    def legacy_file(self, model: str, digest: str, rel: str) -> Any:
        raise self._no_path(f"{rel} of {digest}")

    def artifacts(self, model: str) -> Iterator[tuple[str, Any]]:
        raise self._no_path(f"the artifacts of {model!r}")

    def signature(self, model: str, digest: str) -> Any:
        """The artifact's signature bundle: a referrer of its OCI manifest (cosign's way), not a path."""
        parse_digest(digest)
        return self._signature(model_segment(model), digest)
