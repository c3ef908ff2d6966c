"""An OCI registry as the artifact store root: ``MODEL_DELIVERY_ARTIFACT_ROOT=oci://host[:port]/repository``.

:class:`OciArtifactStore` has the public methods of :class:`~model_delivery.store.artifacts.ArtifactStore`
(``open_store`` picks it for an ``oci://`` root), with the artifacts in one repository of the registry,
as :mod:`model_delivery.store.oci` writes them (one OCI manifest per artifact, one layer per file plus
our ``MANIFEST.json``, tagged ``sha256-<hex of the artifact digest>``):

- **put** hashes the build output in place into the same manifest a file store makes (the same
  artifact digest), uploads only the blobs the registry lacks (HEAD first), and pushes the OCI
  manifest last: the artifact exists (its tag resolves) only once all of it is there.
- **exists**, **files_of**, **read_manifest**, **verify** and **fetch** go by the artifact digest's
  tag; our manifest must hash to the digest and the OCI manifest's layers must be exactly its files;
  verify streams every blob through sha256; fetch pulls into a temporary directory beside ``dest``,
  renamed into place only when every file matched (and stamped, as a file store's fetch is).
- the **signature** bundle is a referrer of the artifact's OCI manifest, as cosign attaches Sigstore
  bundles; ``layout.signature()`` gives the signing code a handle on it (``exists``, ``read_bytes``,
  and the store's ``write_text`` attaches it).
- **records** (release records, reports, kubernetes records, delivery metrics) are files, under the
  records root (:func:`~model_delivery.store.layout.records_location`: ``file://<home>/records`` by default).
- **migrate** has nothing to do (a registry has one layout) and **collect_garbage** is not done here:
  both are refused with what to do instead (see :data:`GC_FIX`).

Credentials come from the store's Airflow connection (``MODEL_DELIVERY_ARTIFACT_CONN_ID``: login and
password; extra ``{"insecure": true}`` for plain HTTP). A registry on a loopback address
(``127.0.0.1``, ``localhost``) is spoken to over plain HTTP unless the connection's extra says
``"insecure": false``, as Docker does.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import urllib.parse
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from model_delivery.exceptions import TamperedArtifact
from model_delivery.store.artifacts import (
    GC_GRACE_SECONDS,
    ArtifactStore,
    GarbageReport,
     StoredArtifact,
    _changed,
    _stamp,
    _stamp_holds,
)
from model_delivery.store.layout import RegistryLayout, UnsupportedByStore, model_segment
from model_delivery.store.oci import (
    BUNDLE_MEDIA_TYPE,
    OciArtifactMissing,
    OciRepository,
    parse_oci_uri,
    tag_for,
)
from model_server.manifest import (
    MANIFEST_NAME,
    PART_SIZE,
    ArtifactIntegrityError,
    canonical_manifest,
    hash_entries,
    list_files,
    manifest_bytes,
    manifest_digest,
    parse_digest,
    parse_manifest,
    verify_directory,
)
from model_server.transfer import Progress

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

GC_FIX = ("Fix: delete the manifests of the artifacts you no longer need with the registry's own tools (e.g. `regctl "
          "manifest rm`, or DELETE /v2/<repository>/manifests/<digest> with deletion enabled), then run the "
          "registry's garbage collection (`registry garbage-collect <config.yml>` for CNCF distribution), which "
          "removes the blobs no manifest references.")


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistrySignature:
    """Where the signing code finds an artifact's bundle in a registry: a referrer of its OCI manifest.

    Path-like as far as :mod:`model_delivery.signing` needs: ``exists()``, ``read_bytes()``, ``read_text()``;
    written by :meth:`OciArtifactStore.write_text` (which attaches it). When several bundles are attached,
    the last one listed (the newest, in a referrers tag) is read.
    """

    name = "model.sig"

    def __init__(self, store: OciArtifactStore, digest: str) -> None:
        self.store, self.digest = store, digest

    def __str__(self) -> str:
        return f"{self.store.uri}:{tag_for(self.digest)} (referrer of type {BUNDLE_MEDIA_TYPE})"

    def __repr__(self) -> str:
        return f"RegistrySignature({self})"

    def exists(self) -> bool:
        return bool(self.store.repository.signatures(self.digest))

    def read_bytes(self) -> bytes:
        bundles = self.store.repository.signatures(self.digest)
        if not bundles:
            raise FileNotFoundError(f"{self}: the artifact has no signature bundle attached")
        return bundles[-1]

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Attach ``data`` (a model-signing bundle) to the artifact's OCI manifest (idempotent)."""
        repository = self.store.repository
        oci_digest = repository.oci_digest(self.digest)
        if oci_digest is None:
            raise OciArtifactMissing(f"{self.store.uri} has no artifact {tag_for(self.digest)} to attach a signature "
                                     "to. Fix: store the artifact first (put_directory), then sign it.")
        repository.attach_signature(self.digest, oci_digest, data)


class OciArtifactStore(ArtifactStore):
    """The artifact store in one repository of an OCI registry; records under ``records``.

    :param root: ``oci://host[:port]/repository``.
    :param conn_id: the Airflow connection with the registry's login and password (extra ``insecure``).
    :param records: the records root (a ``file://``, ``s3://`` or ``gs://`` URI).
    :param records_conn_id: the connection of the records root, if any.
    :raises ValueError: ``root`` is not a valid ``oci://`` URI; names the setting and the fix.
    """

    def __init__(self, root: str, conn_id: str | None = None, *, records: str, records_conn_id: str | None = None,
                 link: str | None = None) -> None:
        try:
            parse_oci_uri(root)
        except ValueError as exc:
            raise ValueError(f"the artifact store root (MODEL_DELIVERY_ARTIFACT_ROOT) is not usable: {exc}") from None
        self.uri = root.rstrip("/")
        self.root = self.uri
        self.conn_id = conn_id
        self.is_local = False
        self.link = "copy"  # a fetch always copies (streams) from the registry
        self.records_root = ObjectStoragePath(records, conn_id=records_conn_id)
        self.layout = RegistryLayout(self.uri, self.records_root,
                                     lambda model, digest: RegistrySignature(self, digest))

    def __repr__(self) -> str:
        return f"OciArtifactStore({self.uri!r}, records={str(self.records_root)!r})"

    @cached_property
    def repository(self) -> OciRepository:
        """The registry client, with the connection's credentials (looked up once, never logged)."""
        registry, _ = parse_oci_uri(self.uri)
        insecure, login, password = _loopback(registry), None, None
        if self.conn_id:
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(self.conn_id)
            login, password = conn.login or None, conn.password or None
            extra = conn.extra_dejson or {}
            if "insecure" in extra:
                insecure = _truthy(extra["insecure"])
        return OciRepository(self.uri, insecure=insecure, username=login, password=password)

    # -- paths ---------------------------------------------------------------------------------------
    def artifact_path(self, model: str, digest: str) -> Any:
        """Where the artifact is: its tag in the repository (a URI, not a path)."""
        model_segment(model)
        return f"{self.uri}:{tag_for(digest)}"

    def locate(self, model: str, digest: str, entry: dict[str, Any]) -> Any:
        raise UnsupportedByStore(f"{entry.get('path')} of {digest} is a blob of {self.uri}, not a file. Fix: fetch "
                                 "the artifact (OciArtifactStore.fetch) and read it there.")

    def write_text(self, dest: Any, text: str) -> None:
        """Write a small text file of the records atomically; a signature bundle is attached in the registry."""
        if isinstance(dest, RegistrySignature):
            dest.write_bytes(text.encode())
            return
        super().write_text(dest, text)

    # -- put -----------------------------------------------------------------------------------------
    def put_directory(self, model: str, local_dir: Path, log: Callable[..., Any] | None = None) -> StoredArtifact:
        """Store a local directory as an artifact: hash it in place, push the blobs the registry lacks, then the
        OCI manifest (the commit: nothing is an artifact before it). Storing the same content again finds the
        artifact, verifies it, and reports ``reused=True``."""
        model_segment(model)
        files = [(rel, local_dir / rel) for rel in list_files(local_dir)]
        hashing = Progress(f"hash {model}", sum(path.stat().st_size for _, path in files), log)
        manifest = canonical_manifest(hash_entries(files, done=hashing), PART_SIZE)
        hashing.finish()
        digest = manifest_digest(manifest)
        size = sum(e["size"] for e in manifest["files"])
        if self.exists(model, digest):
            self._check_existing(model, digest)
            oci_digest = self.repository.oci_digest(digest)
            return StoredArtifact(f"{self.uri}@{oci_digest}", digest, size, len(manifest["files"]), True)
        try:
            pushed = self.repository.push(model, digest, manifest_bytes(manifest), lambda rel: local_dir / rel)
        except TamperedArtifact as exc:  # a file's bytes or size changed after it was hashed
            raise _changed(local_dir, [str(exc)]) from None
        if log:
            log("pushed %s of %s to %s: %d file blob(s) uploaded (%d bytes), %d blob(s) already there",
                digest, model, pushed["uri"], pushed["uploaded_files"], pushed["uploaded_bytes"], pushed["reused"])
        return StoredArtifact(pushed["uri"], digest, size, len(manifest["files"]), False,
                              uploaded_bytes=pushed["uploaded_bytes"], uploaded_files=pushed["uploaded_files"])

    # -- read and verify -----------------------------------------------------------------------------
    def _missing(self, model: str, digest: str) -> TamperedArtifact:
        return TamperedArtifact(f"artifact {digest} of model {model!r} is not in the store at {self.uri} (no tag "
                                f"{tag_for(digest)}): build it first, or check MODEL_DELIVERY_ARTIFACT_ROOT.")

    def exists(self, model: str, digest: str) -> bool:
        """True when the artifact's OCI manifest is tagged in the repository (pushed last: the commit marker)."""
        model_segment(model)
        parse_digest(digest)
        return self.repository.exists(digest)

    def files_of(self, model: str, digest: str) -> dict[str, int] | None:
        """A stored artifact's files and their sizes, from its manifest; None when it is not in the registry."""
        model_segment(model)
        try:
            _, files = self.repository.read_manifest(digest)
        except OciArtifactMissing:
            return None
        return {str(e["path"]): int(e["size"]) for e in files["files"]}

    def read_manifest(self, model: str, digest: str) -> dict[str, Any]:
        """Read the stored manifest, checked to hash to ``digest`` and to be what the OCI manifest's layers hold."""
        model_segment(model)
        try:
            document, _ = self.repository.read_manifest(digest)
        except OciArtifactMissing:
            raise self._missing(model, digest) from None
        try:
            manifest = parse_manifest(document)
        except (ValueError, ArtifactIntegrityError) as exc:
            raise TamperedArtifact(f"{self.artifact_path(model, digest)}: not a valid manifest ({exc}); the store "
                                   "entry is corrupt.") from None
        if manifest_digest(manifest) != digest:
            raise TamperedArtifact(f"{self.artifact_path(model, digest)}: manifest hashes to "
                                   f"{manifest_digest(manifest)}, not {digest}. Do not deploy it; rebuild the model.")
        return manifest

    def verify(self, model: str, digest: str, log: Callable[..., Any] | None = None) -> dict[str, Any]:
        """Stream every blob of the artifact through sha256; raise ``TamperedArtifact`` on any difference."""
        manifest = self.read_manifest(model, digest)
        progress = Progress(f"verify {model}", sum(e["size"] for e in manifest["files"]), log)
        problems = self.repository.blob_problems(manifest, done=progress)
        progress.finish()
        if problems:
            raise self._refuse(model, digest, problems)
        return manifest

    # -- fetch ---------------------------------------------------------------------------------------
    def fetch(self, model: str, digest: str, dest: Path, log: Callable[..., Any] | None = None) -> Path:
        """Give a local directory the artifact's files, verified; return ``dest``.

        A directory fetched and stamped here before is reused while unchanged; another existing one is
        verified, and replaced if damaged. The pull streams into ``.<dest>.<random>.tmp`` beside it,
        hashing every file as it is written, and is renamed into place only when all matched: a refused
        or interrupted fetch leaves nothing at ``dest``.
        """
        model_segment(model)
        if dest.exists():
            if _stamp_holds(dest, digest):
                return dest
            try:
                _stamp(dest, verify_directory(dest, digest), digest)
                return dest
            except ArtifactIntegrityError:
                shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.repository.pull(digest, dest)
        except OciArtifactMissing:
            raise self._missing(model, digest) from None
        manifest = parse_manifest(json.loads((dest / MANIFEST_NAME).read_text()))
        _stamp(dest, manifest, digest)
        if log:
            log("fetched %s of %s from %s into %s (%d file(s), verified)", digest, model, self.uri, dest,
                len(manifest["files"]))
        return dest

    # -- not here ------------------------------------------------------------------------------------
    def migrate(self, log: Callable[..., Any] | None = None) -> dict[str, int]:
        raise UnsupportedByStore(f"store migrate moves a file store's legacy layout into blobs; the artifact store "
                                 f"{self.uri} is an OCI registry, which has one layout: there is nothing to migrate. "
                                 "Fix: run it against the file://, s3:// or gs:// store that has the legacy "
                                 "artifacts (MODEL_DELIVERY_ARTIFACT_ROOT).")

    def collect_garbage(self, keep: dict[str, set[str]], *, keep_last: int = 5, grace_seconds: float = GC_GRACE_SECONDS,
                        dry_run: bool = False) -> GarbageReport:
        raise UnsupportedByStore(f"store gc does not delete from the OCI registry {self.uri}: an OCI manifest has no "
                                 "time to apply keep_last or the grace period to, and blobs are shared and counted by "
                                 f"the registry itself. {GC_FIX}")


__all__ = ["GC_FIX", "OciArtifactStore", "RegistrySignature"]
