"""Content-addressed artifact manifests: the one definition of an artifact's digest.

An artifact is a directory of files. Its manifest lists every file's relative path,
sha256 and size; the artifact digest is the sha256 of the manifest's canonical JSON.
Files are hashed in fixed-size chunks, so no file is ever held whole in memory.

This module is pure standard library: the model server uses it at start-up on hosts
that have no Airflow, and ``model_delivery.artifacts`` uses it for the store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable

CHUNK_SIZE = 8 * 1024 * 1024
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "model-delivery/manifest-v1"
DIGEST_PREFIX = "sha256:"


class ArtifactIntegrityError(Exception):
    """The files of an artifact do not match its manifest or the expected digest."""


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


def canonical_manifest(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Return the manifest document for file entries (``path``, ``sha256``, ``size``)."""
    files: list[dict[str, Any]] = sorted(
        ({"path": str(e["path"]), "sha256": str(e["sha256"]), "size": int(e["size"])} for e in entries),
        key=lambda e: str(e["path"]),
    )
    paths: list[str] = [f["path"] for f in files]
    if len(paths) != len(set(paths)):
        raise ArtifactIntegrityError("manifest lists the same path twice")
    for path in paths:
        if path.startswith("/") or ".." in Path(path).parts or path == MANIFEST_NAME:
            raise ArtifactIntegrityError(f"manifest path {path!r} is not a plain relative path")
    return {"format": MANIFEST_FORMAT, "files": files}


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """Serialize a manifest canonically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """Return the artifact digest, ``sha256:<hex>``, of a manifest document."""
    return DIGEST_PREFIX + hashlib.sha256(manifest_bytes(manifest)).hexdigest()


def parse_digest(digest: str) -> str:
    """Return the hex part of ``sha256:<hex>``; raise ``ValueError`` if it is malformed."""
    hex_part = digest.removeprefix(DIGEST_PREFIX)
    if not digest.startswith(DIGEST_PREFIX) or len(hex_part) != 64 or not all(
        c in "0123456789abcdef" for c in hex_part
    ):
        raise ValueError(f"digest {digest!r} is not of the form 'sha256:<64 lowercase hex digits>'")
    return hex_part


def list_files(directory: Path) -> list[str]:
    """Relative paths of every regular file under ``directory``, except the manifest."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST_NAME:
            found.append(path.relative_to(directory).as_posix())
    return found


def build_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Hash every file under a local directory and return its manifest."""
    root = Path(directory)
    entries = []
    for rel in list_files(root):
        sha, size = hash_file(root / rel)
        entries.append({"path": rel, "sha256": sha, "size": size})
    return canonical_manifest(entries)


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``MANIFEST.json`` from an artifact directory."""
    path = Path(directory) / MANIFEST_NAME
    try:
        return canonical_manifest(json.loads(path.read_text())["files"])
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{path} is missing: this directory is not a stored artifact") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactIntegrityError(f"{path} is not a valid manifest: {exc}") from None


def compare_manifests(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Describe every difference between two manifests (empty when they match)."""
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


def verify_directory(directory: str | os.PathLike[str], expected_digest: str) -> dict[str, Any]:
    """Verify a local artifact directory against its manifest and an expected digest.

    Every file is re-hashed. Raises :class:`ArtifactIntegrityError` that names each
    difference; returns the manifest when all is well.
    """
    parse_digest(expected_digest)
    recorded = read_manifest(directory)
    if manifest_digest(recorded) != expected_digest:
        raise ArtifactIntegrityError(
            f"artifact at {directory} has digest {manifest_digest(recorded)}, expected {expected_digest}: "
            f"the manifest was changed or this is another artifact ({Path(directory) / MANIFEST_NAME}). "
            "Rebuild, or deploy the digest you meant."
        )
    actual = build_manifest(directory)
    problems = compare_manifests(recorded, actual)
    if problems:
        raise ArtifactIntegrityError(
            f"artifact at {directory} does not match its manifest ({expected_digest}): "
            + "; ".join(problems)
            + ". The files were tampered with or corrupted: do not serve them; re-fetch from the store."
        )
    return recorded
