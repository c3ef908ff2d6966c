"""Content-addressed artifact manifests: the one definition of an artifact's digest.

An artifact is a set of files. Its manifest lists every file's relative path, sha256 and
size; the artifact digest is the sha256 of the manifest's canonical JSON. A file larger
than one part (:data:`PART_SIZE`, 64 MiB) also lists the sha256 of each of its parts
(``chunks``), and the manifest then names the part size (``chunk_size``): every byte is
covered by a digest the manifest binds, so a huge file is verified on every core at once,
part by part, and an interrupted copy resumes at its first unverified part. A manifest with
no large file is the same document, and so has the same digest, as before parts existed.

Files are read in fixed-size chunks (:data:`CHUNK_SIZE` from a stream; :data:`READ_SIZE` into a
reused buffer per thread from a local file), so none is ever held whole in memory; hashing runs
on a thread pool (``hashlib`` releases the GIL while it hashes), one task per small file or per
part of a large one.

This module is pure standard library: the model server uses it at start-up on hosts
that have no Airflow, and ``model_delivery.store`` uses it for the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

CHUNK_SIZE = 8 * 1024 * 1024
# What one positional read of :func:`hash_range` takes: small enough that the bytes read are still
# in the CPU's cache when they are hashed and written onward, and that a copy's writes hold the
# destination inode's lock briefly (8 MiB writes from two threads into one file made the kernel
# spin on that lock: 4-5 s of system time per 2 GiB, against 0.8 s with 256 KiB; and larger
# writes make the kernel allocate larger page-cache folios, 3x the system time at 1 MiB).
READ_SIZE = 256 * 1024
PART_SIZE = 64 * 1024 * 1024
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "model-delivery/manifest-v1"
CHUNKED_FORMAT = "model-delivery/manifest-v2"
FORMATS = (MANIFEST_FORMAT, CHUNKED_FORMAT)
DIGEST_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")
_preadv = getattr(os, "preadv", None)


class ArtifactIntegrityError(Exception):
    """The files of an artifact do not match its manifest or the expected digest."""


def hash_workers() -> int:
    """Threads that hash at once: ``MODEL_DELIVERY_HASH_THREADS``, else every core."""
    try:
        return max(1, int(os.environ.get("MODEL_DELIVERY_HASH_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def hash_stream(read: Callable[[int], bytes], sink: Callable[[bytes], Any] | None = None) -> tuple[str, int]:
    """Hash a stream in fixed chunks, optionally copying each chunk to ``sink``.

    :param read: a ``read(n)`` callable, such as a file object's ``read``.
    :param sink: called with every chunk, for example a destination file's ``write``.
    :return: the hex sha256 and the number of bytes read.
    """
    digest = hashlib.sha256()
    size = 0
    while chunk := read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink(chunk)
    return digest.hexdigest(), size


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Return the hex sha256 and size of a local file, read in chunks."""
    with open(path, "rb", buffering=0) as handle:
        return hash_stream(handle.read)


def part_ranges(size: int, part_size: int = PART_SIZE) -> list[tuple[int, int]]:
    """The (offset, length) of each part of a file of ``size`` bytes; empty when it is one part or less."""
    if size <= part_size:
        return []
    return [(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


_buffers = threading.local()


def _chunk_buffer() -> memoryview:
    """This thread's read buffer of :data:`READ_SIZE` bytes, allocated once and reused (no fresh
    ``bytes`` per read, whose pages the kernel would fault in again every time)."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(READ_SIZE))
    return view


def hash_range(fd: int, offset: int, length: int, sink: Callable[[int, memoryview], Any] | None = None,
               done: Callable[[int], Any] | None = None) -> str:
    """The hex sha256 of ``length`` bytes of an open file from ``offset`` (positional reads: thread-safe).

    Reads go into one reused buffer per thread (``os.preadv``), so memory stays at one chunk
    per thread and no page is faulted in twice.

    :param sink: called with each chunk's offset and a view of its bytes, valid only during the
        call (for example a ``pwrite`` to a copy: what is written is what was hashed).
    :param done: called with each chunk's length (progress).
    :raises ArtifactIntegrityError: the file ends before ``offset + length``.
    """
    digest = hashlib.sha256()
    buffer = _chunk_buffer()
    position, end = offset, offset + length
    while position < end:
        want = min(READ_SIZE, end - position)
        if _preadv is not None:
            chunk = buffer[:_preadv(fd, [buffer[:want]], position)]
        else:  # no preadv on this platform: a fresh bytes each time
            chunk = memoryview(os.pread(fd, want, position))
        if not chunk:
            raise ArtifactIntegrityError(f"the file ends at byte {position}, before byte {end}")
        digest.update(chunk)
        if sink is not None:
            sink(position, chunk)
        if done is not None:
            done(len(chunk))
        position += len(chunk)
    return digest.hexdigest()


def hash_path_range(path: str | os.PathLike[str], offset: int, length: int,
                    done: Callable[[int], Any] | None = None, *, whole: bool = False) -> str:
    """:func:`hash_range` of a file by path (each call opens its own descriptor: many files, few open).

    :param whole: the range is the whole file: refuse a file that holds more than ``length`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        digest = hash_range(fd, offset, length, None, done)
        if whole and os.pread(fd, 1, offset + length):
            raise ArtifactIntegrityError(f"{path} grew past {length} bytes while it was hashed")
        return digest
    finally:
        os.close(fd)


def hash_entries(files: Iterable[tuple[str, Path]], *, done: Callable[[int], Any] | None = None,
                 workers: int | None = None) -> list[dict[str, Any]]:
    """Hash local files on a thread pool: each file's sha256, size and, for a large one, its parts.

    :param files: (relative path, local path) pairs.
    :param done: called with each chunk's length as it is hashed (progress; from several threads).
    :return: manifest entries, in the order given.
    """
    listed = [(rel, Path(path), Path(path).stat().st_size) for rel, path in files]
    with ThreadPoolExecutor(max_workers=workers or hash_workers(), thread_name_prefix="md-hash") as pool:
        jobs = [(rel, size, pool.submit(hash_path_range, path, 0, size, done, whole=True),
                 [pool.submit(hash_path_range, path, offset, length) for offset, length in part_ranges(size)])
                for rel, path, size in listed]
        entries = []
        for rel, size, whole, parts in jobs:
            entry: dict[str, Any] = {"path": rel, "sha256": whole.result(), "size": size}
            if parts:
                entry["chunks"] = [p.result() for p in parts]
            entries.append(entry)
    return entries


def _valid_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _entry(raw: dict[str, Any], chunk_size: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(raw["path"]), "sha256": str(raw["sha256"]), "size": int(raw["size"])}
    if not _valid_hex(entry["sha256"]) or entry["size"] < 0:
        raise ArtifactIntegrityError(f"manifest entry {entry['path']!r} has no valid sha256 or size")
    chunks = raw.get("chunks")
    if chunks is not None:
        expected = len(part_ranges(entry["size"], chunk_size or 0)) if chunk_size else -1
        if not isinstance(chunks, list) or len(chunks) != expected or not all(_valid_hex(c) for c in chunks):
            raise ArtifactIntegrityError(
                f"manifest entry {entry['path']!r} lists {len(chunks) if isinstance(chunks, list) else '?'} part "
                f"digests for {entry['size']} bytes in parts of {chunk_size}: expected {expected}")
        entry["chunks"] = [str(c) for c in chunks]
    return entry


def canonical_manifest(entries: Iterable[dict[str, Any]], chunk_size: int | None = None) -> dict[str, Any]:
    """Return the manifest document for file entries (``path``, ``sha256``, ``size``, optional ``chunks``).

    :param chunk_size: the part size that entries' ``chunks`` were hashed in (needed when any has them).
    """
    files = sorted((_entry(e, chunk_size) for e in entries), key=lambda e: str(e["path"]))
    paths: list[str] = [f["path"] for f in files]
    if len(paths) != len(set(paths)):
        raise ArtifactIntegrityError("manifest lists the same path twice")
    for path in paths:
        if path.startswith("/") or ".." in Path(path).parts or path == MANIFEST_NAME:
            raise ArtifactIntegrityError(f"manifest path {path!r} is not a plain relative path")
    if any("chunks" in f for f in files):
        return {"format": CHUNKED_FORMAT, "chunk_size": int(chunk_size or 0), "files": files}
    return {"format": MANIFEST_FORMAT, "files": files}


def parse_manifest(document: Any) -> dict[str, Any]:
    """Validate a manifest document read from JSON and return it in canonical form."""
    if not isinstance(document, dict) or document.get("format", MANIFEST_FORMAT) not in FORMATS:
        raise ArtifactIntegrityError(f"not a manifest of a known format ({FORMATS})")
    chunk_size = document.get("chunk_size")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < CHUNK_SIZE):
        raise ArtifactIntegrityError(f"manifest chunk_size {chunk_size!r} is not a whole number >= {CHUNK_SIZE}")
    try:
        return canonical_manifest(document["files"], chunk_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactIntegrityError(f"manifest is malformed: {type(exc).__name__}: {exc}") from None


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """Serialize a manifest canonically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """Return the artifact digest, ``sha256:<hex>``, of a manifest document."""
    return DIGEST_PREFIX + hashlib.sha256(manifest_bytes(manifest)).hexdigest()


def parse_digest(digest: str) -> str:
    """Return the hex part of ``sha256:<hex>``; raise ``ValueError`` if it is malformed."""
    hex_part = digest.removeprefix(DIGEST_PREFIX)
    if not digest.startswith(DIGEST_PREFIX) or not _valid_hex(hex_part):
        raise ValueError(f"digest {digest!r} is not of the form 'sha256:<64 lowercase hex digits>'")
    return hex_part


def list_files(directory: Path) -> list[str]:
    """Relative paths of every regular file under ``directory``, except the manifest."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST_NAME:
            found.append(path.relative_to(directory).as_posix())
    return found


def build_manifest(directory: str | os.PathLike[str], *, done: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Hash every file under a local directory (on every core) and return its manifest."""
    root = Path(directory)
    return canonical_manifest(hash_entries([(rel, root / rel) for rel in list_files(root)], done=done), PART_SIZE)


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``MANIFEST.json`` from an artifact directory."""
    path = Path(directory) / MANIFEST_NAME
    try:
        return parse_manifest(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{path} is missing: this directory is not a stored artifact") from None
    except (ValueError, ArtifactIntegrityError) as exc:
        raise ArtifactIntegrityError(f"{path} is not a valid manifest: {exc}") from None


def compare_manifests(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Describe every difference between two manifests' files (empty when they match)."""
    want = {f["path"]: f for f in expected["files"]}
    have = {f["path"]: f for f in actual["files"]}
    problems = [f"missing file {p}" for p in sorted(want.keys() - have.keys())]
    problems += [f"unexpected file {p}" for p in sorted(have.keys() - want.keys())]
    for path in sorted(want.keys() & have.keys()):
        if want[path]["size"] != have[path]["size"]:
            problems.append(f"{path}: size {have[path]['size']} != {want[path]['size']} in manifest")
        elif want[path]["sha256"] != have[path]["sha256"]:
            problems.append(f"{path}: sha256 {have[path]['sha256'][:12]}… != {want[path]['sha256'][:12]}…")
    return problems


def entry_checks(entry: dict[str, Any], chunk_size: int | None) -> list[tuple[int, int, str]]:
    """What to hash to verify a file of the manifest: (offset, length, expected hex) per part, or the whole file."""
    chunks = entry.get("chunks")
    if chunks and chunk_size:
        return [(offset, length, chunks[i]) for i, (offset, length) in
                enumerate(part_ranges(int(entry["size"]), chunk_size))]
    return [(0, int(entry["size"]), str(entry["sha256"]))]


def describe_part(entry: dict[str, Any], offset: int, length: int) -> str:
    """How a problem in one part of a file is named: the whole file, or its part and byte range."""
    if offset == 0 and length == int(entry["size"]):
        return str(entry["path"])
    return f"{entry['path']} (part at bytes {offset}-{offset + length - 1})"


def verify_files(manifest: dict[str, Any], locate: Callable[[dict[str, Any]], Path | None], *,
                 done: Callable[[int], Any] | None = None, workers: int | None = None) -> list[str]:
    """Hash every file the manifest lists, part by part on a thread pool; describe every difference.

    :param locate: where an entry's bytes are (None: the file is missing).
    """
    problems: list[str] = []
    jobs: list[tuple[dict[str, Any], int, int, str, Any]] = []
    chunk_size = manifest.get("chunk_size")
    with ThreadPoolExecutor(max_workers=workers or hash_workers(), thread_name_prefix="md-verify") as pool:
        for entry in manifest["files"]:
            path = locate(entry)
            if path is None or not path.is_file():
                problems.append(f"missing file {entry['path']}")
                continue
            size = path.stat().st_size
            if size != entry["size"]:
                problems.append(f"{entry['path']}: size {size} != {entry['size']} in manifest")
                continue
            for offset, length, want in entry_checks(entry, chunk_size):
                jobs.append((entry, offset, length, want, pool.submit(hash_path_range, path, offset, length, done)))
        for entry, offset, length, want, job in jobs:
            try:
                have = job.result()
            except (OSError, ArtifactIntegrityError) as exc:  # the file shrank or went while it was read
                problems.append(f"{describe_part(entry, offset, length)}: {exc}")
                continue
            if have != want:
                problems.append(f"{describe_part(entry, offset, length)}: sha256 {have[:12]}… != {want[:12]}…")
    return problems


def walk_extra(directory: Path, manifest: dict[str, Any]) -> Iterator[str]:
    """Files under ``directory`` that the manifest does not list (the manifest itself aside)."""
    listed = {f["path"] for f in manifest["files"]}
    return (rel for rel in list_files(directory) if rel not in listed)


def verify_directory(directory: str | os.PathLike[str], expected_digest: str, *,
                     done: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Verify a local artifact directory against its manifest and an expected digest.

    Every file is re-hashed, large ones part by part, on every core. Raises
    :class:`ArtifactIntegrityError` that names each difference (a part of a large file by
    its byte range); returns the manifest when all is well.
    """
    parse_digest(expected_digest)
    root = Path(directory)
    recorded = read_manifest(root)
    if manifest_digest(recorded) != expected_digest:
        raise ArtifactIntegrityError(
            f"artifact at {directory} has digest {manifest_digest(recorded)}, expected {expected_digest}: "
            f"the manifest was changed or this is another artifact ({root / MANIFEST_NAME}). "
            "Rebuild, or deploy the digest you meant."
        )
    problems = [f"unexpected file {rel}" for rel in walk_extra(root, recorded)]
    problems += verify_files(recorded, lambda entry: root / entry["path"], done=done)
    if problems:
        raise ArtifactIntegrityError(
            f"artifact at {directory} does not match its manifest ({expected_digest}): "
            + "; ".join(problems)
            + ". The files were tampered with or corrupted: do not serve them; re-fetch from the store."
        )
    return recorded
