"""Content-addressed artifact store over Airflow's ObjectStoragePath: blobs and manifests.

Each file is kept once, as a blob named by its sha256, shared by every model; an artifact is
its manifest (:mod:`model_server.manifest`), whose sha256 is the artifact digest, written
last as the commit marker. Paths come from :mod:`model_delivery.store.layout`.

- **put** hashes the build output where it is (every core: files and the parts of large
  files on a thread pool), then uploads only the blobs the store lacks, each verified part
  by part as it is copied, into a stable upload name that a killed put resumes.
- **verify** re-hashes every part of every blob on every core.
- **fetch** gives a local directory the artifact's files: on the store's own filesystem a
  reflink or hard link to each blob (then hashed, reading only), else a parallel verified
  copy; into a stable partial directory that a killed fetch resumes, renamed into place only
  when every part matched. A fetched directory is stamped (each file's size, mtime and
  inode) so that fetching it again into the same place does not re-hash it.
- The legacy layout (files beside their manifest) is read as it is, and ``migrate`` moves
  it into blobs; ``collect_garbage`` removes what no kept manifest references.

A store on ``s3://`` or ``gs://`` streams each file once through the same hashing, with no
part-level resume (a killed put resumes at the first blob the store lacks).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from model_delivery.exceptions import TamperedArtifact
from model_delivery.store.layout import StoreLayout, is_registry
from model_server.manifest import (
    MANIFEST_NAME,
    PART_SIZE,
    ArtifactIntegrityError,
    canonical_manifest,
    describe_part,
    entry_checks,
    hash_entries,
    hash_path_range,
    hash_stream,
    hash_workers,
    list_files,
    manifest_bytes,
    manifest_digest,
    parse_manifest,
    verify_directory,
    verify_files,
)
from model_server.transfer import Progress, copy_files_verified, copy_hashing, link_or_clone

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

GC_GRACE_SECONDS = 24 * 3600
LINK_MODES = ("reflink", "hardlink", "copy")


@dataclass(frozen=True)
class StoredArtifact:
    """What the store reports after a put: small and JSON-able, fit for XCom."""

    uri: str
    digest: str
    size_bytes: int
    files: int
    reused: bool
    uploaded_bytes: int = 0  # copied by this put (not what the store had, nor what a killed put left)
    uploaded_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GarbageReport:
    """What :meth:`ArtifactStore.collect_garbage` removed (or would remove, in a dry run)."""

    kept: dict[str, list[str]] = field(default_factory=dict)
    removed_artifacts: list[str] = field(default_factory=list)
    removed_blobs: int = 0
    freed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _copy(src_open: Any, dest: ObjectStoragePath, expect: str | None = None) -> tuple[str, int]:
    """Stream ``src_open()`` into ``dest`` through a temporary name; return sha256 and size.

    :param expect: the sha256 the bytes must have, checked before the rename.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        with src_open() as src, tmp.open("wb") as out:
            sha, size = hash_stream(src.read, out.write)
        if expect is not None and sha != expect:
            raise ArtifactIntegrityError(f"{dest.name}: sha256 {sha[:12]}… != {expect[:12]}… while it was copied")
        tmp.rename(dest)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return sha, size


def _local(path: ObjectStoragePath) -> Path:
    return Path(path.path)


def _changed(local_dir: Path, problems: list[str]) -> TamperedArtifact:
    return TamperedArtifact(f"{local_dir} changed while it was stored ({'; '.join(problems)}). Fix: run the release "
                            "again; nothing in the build's output may change once the build ended.")


class ArtifactStore:
    """A content-addressed store of model artifacts.

    :param root: store root URI, e.g. ``file:///srv/artifacts`` or ``s3://bucket/models``.
    :param conn_id: Airflow connection for a remote store (credentials never live here).
    :param link: how a fetch on the store's own filesystem gives a file the bytes of its blob:
        ``reflink`` (the default: a copy-on-write clone where the filesystem has them, e.g. XFS or
        Btrfs; else a verified copy), ``hardlink`` (a clone, else a hard link: no bytes move, but
        the fetched file shares the blob's inode, so a write in place to it changes the store's
        only copy, which every later fetch then refuses; for read-only serving directories),
        or ``copy``. ``MODEL_DELIVERY_STORE_LINK`` sets it for the whole deployment.
    :param records: the records root (release records, reports, metrics) when it is not ``root``
        (:func:`~model_delivery.store.layout.records_location` decides), opened with ``records_conn_id``.

    An ``oci://`` root is an OCI registry: :func:`model_delivery.store.open_store` (what
    ``Settings.open_store`` calls) opens it as an :class:`~model_delivery.store.oci_store.OciArtifactStore`.
    """

    root: Any  # an ObjectStoragePath; the registry's URI for an OciArtifactStore
    layout: StoreLayout

    def __init__(self, root: str, conn_id: str | None = None, *, link: str | None = None,
                 records: str | None = None, records_conn_id: str | None = None) -> None:
        if is_registry(root):
            raise ValueError(f"{root!r} is an OCI registry, which ArtifactStore does not open (it reads files). Fix: "
                             "open the store with model_delivery.store.open_store (Settings.open_store does).")
        self.root = ObjectStoragePath(root, conn_id=conn_id)
        self.layout = StoreLayout(self.root, records=None if records is None
                                  else ObjectStoragePath(records, conn_id=records_conn_id))
        self.is_local = self.root.protocol in ("file", "local")
        self.link = link or os.environ.get("MODEL_DELIVERY_STORE_LINK") or "reflink"
        if self.link not in LINK_MODES:
            raise ValueError(f"store link mode {self.link!r} is not one of {LINK_MODES}. "
                             "Fix: set MODEL_DELIVERY_STORE_LINK to one of them.")

    # -- paths (asked of the layout) -----------------------------------------------------------------
    def artifact_path(self, model: str, digest: str) -> ObjectStoragePath:
        """Where the artifact with ``digest`` lives (its manifest; whether or not it exists)."""
        return self.layout.artifact(model, digest)

    def release_dir(self, model: str, run_id: str) -> ObjectStoragePath:
        """Directory for one release's record, report and data."""
        return self.layout.release_dir(model, run_id)

    def exists(self, model: str, digest: str) -> bool:
        """True when the artifact's manifest is in place (the commit marker)."""
        return bool(self.layout.manifest(model, digest).exists())

    def files_of(self, model: str, digest: str) -> dict[str, int] | None:
        """A stored artifact's files and their sizes, from its manifest; None when it is not in the store."""
        manifest = self.layout.manifest(model, digest)
        if not manifest.exists():
            return None
        return {str(e["path"]): int(e["size"]) for e in json.loads(manifest.read_text()).get("files") or []}

    def locate(self, model: str, digest: str, entry: dict[str, Any]) -> ObjectStoragePath:
        """Where a manifest entry's bytes are: its blob, else (legacy layout) beside the manifest."""
        blob = self.layout.blob(entry["sha256"])
        if blob.exists():
            return blob
        return self.layout.legacy_file(model, digest, entry["path"])

    # -- small documents -----------------------------------------------------------------------------
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

    # -- put -----------------------------------------------------------------------------------------
    def put_directory(self, model: str, local_dir: Path, log: Callable[..., Any] | None = None) -> StoredArtifact:
        """Store a local directory as an artifact: hash it in place, upload the blobs the store lacks.

        Idempotent: storing the same content again finds the existing artifact (re-verified)
        and reports ``reused=True``; a put killed half-way resumes where it stopped.
        """
        files = [(rel, local_dir / rel, (local_dir / rel).stat().st_size) for rel in list_files(local_dir)]
        fresh = self._certainly_missing(files)
        copying = Progress(f"store {model}", sum(size for _, _, size in fresh), log)
        stored = self._store_fresh(local_dir, fresh, copying)
        copying.finish()
        rest = [(rel, path) for rel, path, _ in files if rel not in {r for r, _, _ in fresh}]
        hashing = Progress(f"hash {model}", sum(size for _, _, size in files) - copying.total, log)
        manifest = canonical_manifest(stored + hash_entries(rest, done=hashing), PART_SIZE)
        hashing.finish()
        digest = manifest_digest(manifest)
        final = self.artifact_path(model, digest)
        size = sum(e["size"] for e in manifest["files"])
        if self.exists(model, digest):
            self._check_existing(model, digest)
            return StoredArtifact(str(final), digest, size, len(manifest["files"]), True)
        blobs = {e["sha256"] for e in stored}
        missing = list({e["sha256"]: e for e in manifest["files"]
                        if e["sha256"] not in blobs and not self._has_blob(e)}.values())  # a blob once
        uploading = Progress(f"upload {model}", sum(e["size"] for e in missing), log)
        copied = self._upload(local_dir, missing, manifest.get("chunk_size"), uploading)
        uploading.finish()
        self._touch(e for e in manifest["files"] if e not in missing and e["sha256"] not in blobs)
        self.write_text(self.layout.manifest(model, digest), manifest_bytes(manifest).decode())
        return StoredArtifact(str(final), digest, size, len(manifest["files"]), False,
                              uploaded_bytes=copied + sum({e["sha256"]: e["size"] for e in stored}.values()),
                              uploaded_files=len(missing) + len(blobs))

    def _certainly_missing(self, files: list[tuple[str, Path, int]]) -> list[tuple[str, Path, int]]:
        """The files whose blob the store cannot hold, known before hashing: no blob (nor upload) of their size.

        A blob of the same content has the same size, so a file of a size no blob has needs
        uploading whatever its digest; it is then copied and hashed in one pass
        (:meth:`_store_fresh`). Any other file is hashed in place first, and uploaded only if
        its blob is missing (dedup). None while an upload named by a digest waits to be resumed.
        """
        if not self.is_local or not files:
            return []
        uploads = _local(self.layout.uploads())
        taken = set()
        for location in (_local(self.layout.blobs()), uploads):
            try:
                with os.scandir(location) as found:
                    for item in found:
                        head = item.name.removesuffix(".part").split("-")[0]
                        if location == uploads and not head.isdigit():
                            return []  # a killed upload of a known digest: hash in place, then resume it
                        taken.add(int(head) if location == uploads else item.stat().st_size)
            except FileNotFoundError:
                continue
        return [(rel, path, size) for rel, path, size in files if size not in taken]

    def _store_fresh(self, local_dir: Path, fresh: list[tuple[str, Path, int]], progress: Progress,
                     ) -> list[dict[str, Any]]:
        """Copy files the store certainly lacks into their blobs, hashing the bytes written (one read pass).

        Each is copied into ``blobs/uploads/<size>-<random>.part`` (which a later put of that
        file, after a kill, adopts as its upload and resumes from the parts that verify) and
        renamed into ``blobs/sha256/<its sha256>`` when complete.

        :return: their manifest entries.
        """
        def one(rel: str, path: Path, size: int) -> dict[str, Any]:
            part = _local(self.layout.upload(f"{size}-{uuid.uuid4().hex}"))
            part.parent.mkdir(parents=True, exist_ok=True)
            try:
                sha, chunks, copied = copy_hashing(path, part, PART_SIZE, done=progress)
            except ArtifactIntegrityError as exc:
                part.unlink(missing_ok=True)
                raise _changed(local_dir, [str(exc)]) from None
            os.chmod(part, 0o444)  # a blob is immutable; a fetch may hard-link it
            blob = _local(self.layout.blob(sha))
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, blob)
            return {"path": rel, "sha256": sha, "size": copied, **({"chunks": chunks} if chunks else {})}

        if not fresh:
            return []
        with ThreadPoolExecutor(max_workers=hash_workers(), thread_name_prefix="md-store") as pool:
            return list(pool.map(lambda file: one(*file), fresh))

    def _has_blob(self, entry: dict[str, Any]) -> bool:
        """Whether the store holds the entry's blob, of its size (one stat)."""
        blob = self.layout.blob(entry["sha256"])
        try:
            if self.is_local:
                return os.stat(_local(blob)).st_size == entry["size"]
            return bool(blob.stat()["size"] == entry["size"])
        except (OSError, KeyError):
            return False

    def _upload(self, local_dir: Path, missing: list[dict[str, Any]], chunk_size: int | None,
                progress: Progress) -> int:
        """Copy files into their blobs, verified part by part, all parts of all files on one pool.

        Each lands in its upload name (``blobs/uploads/<hex>.part``), which a killed put resumes
        from the parts that verify, and is renamed into ``blobs/sha256/`` when all its parts matched.

        :return: the bytes copied (a resumed upload does not copy again the parts it held).
        """
        if not self.is_local:
            for entry in missing:
                src = local_dir / entry["path"]
                try:
                    _copy(lambda s=src: open(s, "rb"), self.layout.blob(entry["sha256"]), expect=entry["sha256"])
                except ArtifactIntegrityError as exc:
                    raise _changed(local_dir, [str(exc)]) from None
                progress(entry["size"])
            return sum(int(e["size"]) for e in missing)
        jobs = [(local_dir / e["path"], self._upload_of(e), e) for e in missing]
        done = copy_files_verified(jobs, chunk_size, done=progress)
        bad = []
        for (_src, part, entry), (_copied, problems) in zip(jobs, done, strict=True):
            if problems:
                bad += problems
                continue
            os.chmod(part, 0o444)  # a blob is immutable; a fetch may hard-link it
            blob = _local(self.layout.blob(entry["sha256"]))
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, blob)
        if bad:
            raise _changed(local_dir, bad)
        return sum(copied for copied, _ in done)

    def _upload_of(self, entry: dict[str, Any]) -> Path:
        """Where an entry's blob is uploaded: ``<hex>.part``; a same-size upload a killed put left is adopted.

        Adopting another file's upload of that size is harmless: only its parts that verify are kept.
        """
        part = _local(self.layout.upload(entry["sha256"]))
        if not part.exists():
            for left in sorted(part.parent.glob(f"{entry['size']}-*.part")):
                try:
                    os.chmod(left, 0o644)
                    os.replace(left, part)
                    break
                except FileNotFoundError:  # another put took it
                    continue
        return part

    def _touch(self, entries: Iterable[dict[str, Any]]) -> None:
        """Mark reused blobs as young, so that garbage collection's grace protects a put in flight."""
        if not self.is_local:
            return
        for entry in entries:
            try:
                os.utime(_local(self.layout.blob(entry["sha256"])))
            except OSError:
                pass  # a legacy file: not a blob, nothing to protect

    def _check_existing(self, model: str, digest: str) -> None:
        """The store already holds this digest: make sure that copy is intact before reusing it."""
        try:
            self.verify(model, digest)
        except TamperedArtifact as exc:
            raise TamperedArtifact(
                f"the store already holds {digest} for {model!r}, but that copy is damaged: {exc} "
                f"Fix: inspect and remove {self.artifact_path(model, digest)}, then run the release again."
            ) from None

    # -- read and verify -----------------------------------------------------------------------------
    def read_manifest(self, model: str, digest: str) -> dict[str, Any]:
        """Read the stored manifest and check it hashes to ``digest``."""
        path = self.layout.manifest(model, digest)
        if not path.exists():
            raise TamperedArtifact(
                f"artifact {digest} of model {model!r} is not in the store at {path.parent}: "
                "build it first, or check MODEL_DELIVERY_ARTIFACT_ROOT."
            )
        try:
            manifest = parse_manifest(json.loads(path.read_text()))
        except (ValueError, ArtifactIntegrityError) as exc:
            raise TamperedArtifact(f"{path}: not a valid manifest ({exc}); the store entry is corrupt.") from None
        if manifest_digest(manifest) != digest:
            raise TamperedArtifact(
                f"{path}: manifest hashes to {manifest_digest(manifest)}, not {digest}: the stored "
                "manifest was changed. Do not deploy it; rebuild the model."
            )
        return manifest

    def _refuse(self, model: str, digest: str, problems: list[str]) -> TamperedArtifact:
        return TamperedArtifact(
            f"artifact {digest} of model {model!r} in {self.root} does not match its manifest: "
            + "; ".join(problems)
            + ". Refusing to deploy it; rebuild the model to store a good copy."
        )

    def verify(self, model: str, digest: str, log: Callable[..., Any] | None = None) -> dict[str, Any]:
        """Re-hash every stored part against the manifest (every core); raise ``TamperedArtifact`` on any difference."""
        manifest = self.read_manifest(model, digest)
        progress = Progress(f"verify {model}", sum(e["size"] for e in manifest["files"]), log)
        if self.is_local:
            problems = verify_files(manifest, lambda e: _local(self.locate(model, digest, e)), done=progress)
        else:
            problems = []
            for entry in manifest["files"]:
                source = self.locate(model, digest, entry)
                if not source.exists():
                    problems.append(f"missing file {entry['path']}")
                    continue
                with source.open("rb") as handle:
                    sha, size = hash_stream(handle.read)
                progress(size)
                if (sha, size) != (entry["sha256"], entry["size"]):
                    problems.append(f"{entry['path']}: sha256 {sha[:12]}… != {entry['sha256'][:12]}…")
        progress.finish()
        if problems:
            raise self._refuse(model, digest, problems)
        return manifest

    # -- fetch ---------------------------------------------------------------------------------------
    def fetch(self, model: str, digest: str, dest: Path, log: Callable[..., Any] | None = None) -> Path:
        """Give a local directory the artifact's files, verified; return ``dest``.

        A directory this store fetched into the same place and stamped is reused without
        re-hashing while its files are unchanged; any other existing directory is verified
        and replaced if damaged. The copy lands in ``.<dest>.partial`` (resumed by the next
        fetch after a kill) and is renamed into place only when every part matched.
        """
        if dest.exists():
            if _stamp_holds(dest, digest):
                return dest
            try:  # a copy that lost its MANIFEST is damaged too: replace it
                _stamp(dest, verify_directory(dest, digest), digest)
                return dest
            except ArtifactIntegrityError:
                shutil.rmtree(dest)
        manifest = self.read_manifest(model, digest)
        partial = dest.parent / f".{dest.name}.partial"
        progress = Progress(f"fetch {model}", sum(e["size"] for e in manifest["files"]), log)
        partial.mkdir(parents=True, exist_ok=True)
        try:
            for extra in set(list_files(partial)) - {e["path"] for e in manifest["files"]}:
                (partial / extra).unlink()
            problems = self._fetch_files(model, digest, manifest, partial, progress)
        except ArtifactIntegrityError as exc:
            problems = [str(exc)]
        if problems:
            shutil.rmtree(partial, ignore_errors=True)  # what came from the store is wrong: start again next time
            raise self._refuse(model, digest, problems)
        progress.finish()
        (partial / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
        _stamp(partial, manifest, digest)
        partial.rename(dest)
        (dest.parent / f".{partial.name}.verified").rename(dest.parent / f".{dest.name}.verified")
        return dest

    def _fetch_files(self, model: str, digest: str, manifest: dict[str, Any], partial: Path,
                     progress: Progress) -> list[str]:
        """Give ``partial`` every file of the manifest, verified, on one thread pool; return what did not match.

        A blob on this filesystem is shared (reflink, or hard link if allowed) and then hashed,
        reading only; any other file is copied part by part, each part hashed as it is written.
        """
        chunk_size = manifest.get("chunk_size")
        linked: list[tuple[Path, dict[str, Any]]] = []
        copies: list[tuple[Path, Path, dict[str, Any]]] = []
        problems: list[str] = []
        for entry in manifest["files"]:
            source, target = self.locate(model, digest, entry), partial / entry["path"]
            if not source.exists():
                problems.append(f"missing file {entry['path']}")
            elif not self.is_local:
                _copy(lambda s=source: s.open("rb"), ObjectStoragePath(f"file://{target}"), expect=entry["sha256"])
                progress(entry["size"])
            elif (self.link != "copy" and _local(source).name == entry["sha256"]
                  and link_or_clone(_local(source), target, hardlink=self.link == "hardlink")):
                linked.append((target, entry))
            else:
                copies.append((_local(source), target, entry))
        if problems or not (linked or copies):
            return problems
        with ThreadPoolExecutor(max_workers=hash_workers(), thread_name_prefix="md-fetch") as pool:
            hashing = [(entry, off, length, want, pool.submit(hash_path_range, target, off, length, progress))
                       for target, entry in linked for off, length, want in entry_checks(entry, chunk_size)]
            for _copied, bad in copy_files_verified(copies, chunk_size, done=progress, pool=pool):
                problems += bad
            for entry, off, length, want, job in hashing:
                try:
                    have = job.result()
                except (OSError, ArtifactIntegrityError) as exc:
                    problems.append(f"{describe_part(entry, off, length)}: {exc}")
                    continue
                if have != want:
                    problems.append(f"{describe_part(entry, off, length)}: sha256 {have[:12]}… != {want[:12]}…")
        return problems

    # -- layout migration and garbage collection ----------------------------------------------------
    def migrate(self, log: Callable[..., Any] | None = None) -> dict[str, int]:
        """Move every legacy artifact's files into blobs (verified), leaving its manifest; idempotent."""
        moved = deduplicated = 0
        for model in self.layout.models():
            for digest, _directory in self.layout.artifacts(model):
                manifest = self.read_manifest(model, digest)
                for entry in manifest["files"]:
                    legacy = self.layout.legacy_file(model, digest, entry["path"])
                    if not legacy.exists():
                        continue
                    if self._has_blob(entry):
                        deduplicated += 1
                        legacy.unlink()
                    else:  # moved (local) or copied then removed (remote)
                        self._adopt(legacy, entry, manifest.get("chunk_size"), model, digest)
                        moved += 1
                _prune_empty(self.layout.artifact(model, digest))
                if log:
                    log("migrated %s %s", model, digest)
        return {"moved": moved, "deduplicated": deduplicated}

    def _adopt(self, legacy: ObjectStoragePath, entry: dict[str, Any], chunk_size: int | None, model: str,
               digest: str) -> None:
        """Make a legacy file the blob of its entry, after checking its bytes."""
        blob = self.layout.blob(entry["sha256"])
        if self.is_local:
            problems = verify_files({"files": [entry], "chunk_size": chunk_size}, lambda e: _local(legacy))
            if problems:
                raise self._refuse(model, digest, problems)
            _local(blob).parent.mkdir(parents=True, exist_ok=True)
            os.replace(_local(legacy), _local(blob))
            os.chmod(_local(blob), 0o444)
            return
        try:
            _copy(lambda: legacy.open("rb"), blob, expect=entry["sha256"])
        except ArtifactIntegrityError as exc:
            raise self._refuse(model, digest, [str(exc)]) from None
        legacy.unlink()

    def collect_garbage(self, keep: dict[str, set[str]], *, keep_last: int = 5, grace_seconds: float = GC_GRACE_SECONDS,
                        dry_run: bool = False) -> GarbageReport:
        """Remove artifacts outside the retention rule, then blobs that no kept manifest references.

        Kept: every digest in ``keep`` (production, previous, whatever a ledger or a run in
        flight names), each model's ``keep_last`` newest artifacts, and anything younger than
        ``grace_seconds`` (a put in flight has uploaded blobs before its manifest).
        """
        report = GarbageReport()
        referenced: set[str] = set()
        now = time.time()
        for model in self.layout.models():
            found = sorted(self.layout.artifacts(model), key=lambda a: _mtime(a[1] / MANIFEST_NAME), reverse=True)
            for rank, (digest, directory) in enumerate(found):
                young = now - _mtime(directory / MANIFEST_NAME) < grace_seconds
                if digest in keep.get(model, set()) or rank < keep_last or young:
                    report.kept.setdefault(model, []).append(digest)
                    referenced.update(e["sha256"] for e in self.read_manifest(model, digest)["files"])
                    continue
                report.removed_artifacts.append(f"{model}@{digest}")
                if not dry_run:
                    (directory / MANIFEST_NAME).unlink()  # the commit marker first: never a manifest without blobs
                    directory.fs.rm(directory.path, recursive=True)
        for location in (self.layout.blobs(), self.layout.uploads()):
            if not location.exists():
                continue
            for blob in location.iterdir():
                name = blob.name.removesuffix(".part")
                if name in referenced or now - _mtime(blob) < grace_seconds:
                    continue
                report.removed_blobs += 1
                report.freed_bytes += int(blob.stat().get("size", 0))
                if not dry_run:
                    blob.unlink()
        return report


def _mtime(path: ObjectStoragePath) -> float:
    try:
        info = path.stat()
    except (OSError, FileNotFoundError):
        return 0.0
    value = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    return float(value.timestamp() if hasattr(value, "timestamp") else value)


def _prune_empty(directory: ObjectStoragePath) -> None:
    """Remove the empty sub-directories a migration left under an artifact's directory."""
    if not directory.exists():
        return
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _stamp_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.verified"


def _file_ids(directory: Path, manifest: dict[str, Any]) -> dict[str, list[int]]:
    ids = {}
    for entry in manifest["files"]:
        info = (directory / entry["path"]).stat()
        ids[entry["path"]] = [info.st_size, info.st_mtime_ns, info.st_ino]
    return ids


def _stamp(directory: Path, manifest: dict[str, Any], digest: str) -> None:
    """Record that ``directory`` was verified as ``digest``, with what identifies each file now."""
    tmp = _stamp_path(directory).with_suffix(".tmp")
    tmp.write_text(json.dumps({"digest": digest, "files": _file_ids(directory, manifest)}))
    tmp.replace(_stamp_path(directory))


def _stamp_holds(directory: Path, digest: str) -> bool:
    """True when ``directory`` was verified as ``digest`` and no file of it changed since (or came, or went)."""
    try:
        stamp = json.loads(_stamp_path(directory).read_text())
        manifest = parse_manifest(json.loads((directory / MANIFEST_NAME).read_text()))
        return bool(stamp.get("digest") == digest == manifest_digest(manifest)
                    and stamp.get("files") == _file_ids(directory, manifest)
                    and set(list_files(directory)) == {e["path"] for e in manifest["files"]})
    except (OSError, ValueError, ArtifactIntegrityError):
        return False
