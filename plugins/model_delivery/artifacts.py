"""Content-addressed artifact store over Airflow's ObjectStoragePath.

Layout under the store root (``file://.local/artifacts`` by default; ``s3://`` or
``gs://`` with the matching provider and connection)::

    <model>/sha256/<hex>/...files...       one immutable directory per artifact digest
    <model>/sha256/<hex>/MANIFEST.json     written last: an artifact exists once it is there
    <model>/releases/<run>/                release records and the data a build used
    <model>/.staging/<uuid>/               uploads in progress

Files are streamed in fixed chunks (``model_server.manifest.CHUNK_SIZE``) and hashed
in the same pass that copies them, so nothing is ever held whole in memory. Every
write goes to a temporary name and is renamed into place.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from model_delivery.exceptions import TamperedArtifact
from model_server.manifest import (
    MANIFEST_NAME,
    canonical_manifest,
    compare_manifests,
    hash_stream,
    list_files,
    manifest_bytes,
    manifest_digest,
    parse_digest,
    verify_directory,
)
from model_server.manifest import ArtifactIntegrityError as _IntegrityError

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class StoredArtifact:
    """What the store reports after a put: small and JSON-able, fit for XCom."""

    uri: str
    digest: str
    size_bytes: int
    files: int
    reused: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_segment(value: str) -> str:
    """Make a run id or similar safe to use as one path segment on any store."""
    segment = re.sub(r"[^A-Za-z0-9._-]", "_", value)[:200]
    return (segment.replace(".", "_") or "_") if segment in ("", ".", "..") else segment


def _copy(src_open: Any, dest: ObjectStoragePath) -> tuple[str, int]:
    """Stream ``src_open()`` into ``dest`` through a temporary name; return sha256 and size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        with src_open() as src, tmp.open("wb") as out:
            sha, size = hash_stream(src.read, out.write)
        tmp.rename(dest)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return sha, size


class ArtifactStore:
    """A content-addressed store of model artifacts.

    :param root: store root URI, e.g. ``file:///srv/artifacts`` or ``s3://bucket/models``.
    :param conn_id: Airflow connection for a remote store (credentials never live here).
    """

    def __init__(self, root: str, conn_id: str | None = None) -> None:
        self.root = ObjectStoragePath(root, conn_id=conn_id)

    def artifact_path(self, model: str, digest: str) -> ObjectStoragePath:
        """Where the artifact with ``digest`` lives (whether or not it exists)."""
        return self.root / model / "sha256" / parse_digest(digest)

    def release_dir(self, model: str, run_id: str) -> ObjectStoragePath:
        """Directory for one release's record, report and data."""
        return self.root / model / "releases" / safe_segment(run_id)

    def exists(self, model: str, digest: str) -> bool:
        """True when the artifact's manifest is in place (the commit marker)."""
        return (self.artifact_path(model, digest) / MANIFEST_NAME).exists()

    def files_of(self, model: str, digest: str) -> dict[str, int] | None:
        """A stored artifact's files and their sizes, from its manifest; None when it is not in the store."""
        manifest = self.artifact_path(model, digest) / MANIFEST_NAME
        if not manifest.exists():
            return None
        return {str(e["path"]): int(e["size"]) for e in json.loads(manifest.read_text()).get("files") or []}

    def put_file(self, src: Path, dest: ObjectStoragePath) -> tuple[str, int]:
        """Copy one local file into the store atomically; return its sha256 and size."""
        return _copy(lambda: open(src, "rb"), dest)

    def write_json(self, dest: ObjectStoragePath, document: Any) -> None:
        """Write a small JSON document atomically (temporary name, then rename)."""
        self.write_text(dest, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    def write_text(self, dest: ObjectStoragePath, text: str) -> None:
        """Write a small text file atomically."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(text)
        tmp.rename(dest)

    def put_directory(self, model: str, local_dir: Path) -> StoredArtifact:
        """Store a local directory as an artifact, streaming and hashing each file once.

        Idempotent: storing the same content again finds the existing artifact and
        reports ``reused=True``.
        """
        staging = self.root / model / ".staging" / uuid.uuid4().hex
        entries: list[dict[str, Any]] = []
        try:
            for rel in list_files(local_dir):
                sha, size = self.put_file(local_dir / rel, staging / rel)
                entries.append({"path": rel, "sha256": sha, "size": size})
            manifest = canonical_manifest(entries)
            digest = manifest_digest(manifest)
            final = self.artifact_path(model, digest)
            reused = self.exists(model, digest)
            if reused:
                self._check_existing(model, digest)
            else:
                for rel in (e["path"] for e in entries):
                    (final / rel).parent.mkdir(parents=True, exist_ok=True)
                    (staging / rel).rename(final / rel)
                self.write_text(final / MANIFEST_NAME, manifest_bytes(manifest).decode())
        finally:
            _remove_tree(staging)
        size = sum(e["size"] for e in entries)
        return StoredArtifact(str(final), digest, size, len(entries), reused)

    def _check_existing(self, model: str, digest: str) -> None:
        """The store already holds this digest: make sure that copy is intact before reusing it."""
        try:
            self.verify(model, digest)
        except TamperedArtifact as exc:
            raise TamperedArtifact(
                f"the store already holds {digest} for {model!r}, but that copy is damaged: {exc} "
                f"Fix: inspect and remove {self.artifact_path(model, digest)}, then run the release again."
            ) from None

    def read_manifest(self, model: str, digest: str) -> dict[str, Any]:
        """Read the stored manifest and check it hashes to ``digest``."""
        path = self.artifact_path(model, digest) / MANIFEST_NAME
        if not path.exists():
            raise TamperedArtifact(
                f"artifact {digest} of model {model!r} is not in the store at {path.parent}: "
                "build it first, or check MODEL_DELIVERY_ARTIFACT_ROOT."
            )
        try:
            manifest = canonical_manifest(json.loads(path.read_text())["files"])
        except (ValueError, KeyError, TypeError, _IntegrityError) as exc:
            raise TamperedArtifact(f"{path}: not a valid manifest ({exc}); the store entry is corrupt.") from None
        if manifest_digest(manifest) != digest:
            raise TamperedArtifact(
                f"{path}: manifest hashes to {manifest_digest(manifest)}, not {digest}: the stored "
                "manifest was changed. Do not deploy it; rebuild the model."
            )
        return manifest

    def _rehash(self, model: str, digest: str, manifest: dict[str, Any], into: Path | None = None) -> None:
        """Stream every stored file, hashing it (and copying it under ``into``); raise on any difference."""
        base = self.artifact_path(model, digest)
        actual = []
        for entry in manifest["files"]:
            source = base / entry["path"]
            if not source.exists():
                continue  # reported as missing below
            with source.open("rb") as handle:
                if into is None:
                    sha, size = hash_stream(handle.read)
                else:
                    target = into / entry["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as out:
                        sha, size = hash_stream(handle.read, out.write)
            actual.append({"path": entry["path"], "sha256": sha, "size": size})
        problems = compare_manifests(manifest, canonical_manifest(actual))
        if problems:
            raise TamperedArtifact(
                f"artifact {digest} of model {model!r} at {base} does not match its manifest: "
                + "; ".join(problems)
                + ". Refusing to deploy it; rebuild the model to store a good copy."
            )

    def verify(self, model: str, digest: str) -> dict[str, Any]:
        """Re-hash every stored file against the manifest; raise ``TamperedArtifact`` on any difference."""
        manifest = self.read_manifest(model, digest)
        self._rehash(model, digest, manifest)
        return manifest

    def fetch(self, model: str, digest: str, dest: Path) -> Path:
        """Copy an artifact to a local directory, verifying every file as it streams.

        An already-fetched directory that still verifies is reused. The copy lands in
        a temporary directory and is renamed into place only when every hash matched.
        """
        if dest.exists():  # a copy that lost its MANIFEST is damaged too: replace it
            try:
                verify_directory(dest, digest)
                return dest
            except _IntegrityError:
                shutil.rmtree(dest)
        manifest = self.read_manifest(model, digest)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.mkdir(parents=True)
            self._rehash(model, digest, manifest, into=tmp)
            (tmp / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest


def _remove_tree(path: ObjectStoragePath) -> None:
    """Remove a directory tree in the store if it exists (best effort, used for staging)."""
    try:
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    except FileNotFoundError:
        pass
