"""Artifact manifests and digests: stable, order-independent, and strict about every byte."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from model_server.manifest import (
    CHUNK_SIZE,
    MANIFEST_NAME,
    ArtifactIntegrityError,
    build_manifest,
    canonical_manifest,
    hash_file,
    hash_stream,
    manifest_digest,
    parse_digest,
    verify_directory,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FILES = {
    "model.joblib": b"\x80\x04model-bytes" * 100,
    "serving.json": b'{"name": "m"}',
    "sub/notes.txt": b"hi",
}


def _write(directory: Path, order: list[str]) -> str:
    for rel in order:
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(FILES[rel])
    built = build_manifest(directory)
    (directory / MANIFEST_NAME).write_text(json.dumps(built))
    return manifest_digest(built)


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, str]:
    directory = tmp_path / "artifact"
    directory.mkdir()
    return directory, _write(directory, list(FILES))


def test_digest_is_stable_and_independent_of_file_order(tmp_path: Path) -> None:
    digests = []
    for i, order in enumerate([list(FILES), list(reversed(FILES)), sorted(FILES, key=len)]):
        directory = tmp_path / f"a{i}"
        directory.mkdir()
        digests.append(_write(directory, order))
        os.utime(directory / "model.joblib", (i * 1000, i * 1000))  # times are not part of the digest
        assert manifest_digest(build_manifest(directory)) == digests[-1]
    assert len(set(digests)) == 1
    assert digests[0].startswith("sha256:") and len(parse_digest(digests[0])) == 64


def test_canonical_manifest_sorts_entries() -> None:
    entries = [{"path": p, "sha256": "0" * 64, "size": 1} for p in ("b", "a", "c/d")]
    assert canonical_manifest(entries) == canonical_manifest(list(reversed(entries)))
    assert [f["path"] for f in canonical_manifest(entries)["files"]] == ["a", "b", "c/d"]


def test_digest_changes_with_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = _write(a, list(FILES))
    (b / "extra").write_bytes(b"x")
    assert _write(b, list(FILES)) != first


def test_verify_accepts_an_intact_artifact(artifact: tuple[Path, str]) -> None:
    directory, digest = artifact
    recorded = verify_directory(directory, digest)
    assert sorted(f["path"] for f in recorded["files"]) == sorted(FILES)


def _flip_byte(directory: Path) -> None:
    path = directory / "model.joblib"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(directory: Path) -> None:
    doc = json.loads((directory / MANIFEST_NAME).read_text())
    doc["files"][0]["sha256"] = "0" * 64
    (directory / MANIFEST_NAME).write_text(json.dumps(doc))


TAMPERING = [
    pytest.param(_flip_byte, "model.joblib: sha256", id="changed-byte"),
    pytest.param(lambda d: (d / "model.joblib").write_bytes(b"short"), "model.joblib: size", id="truncated"),
    pytest.param(lambda d: (d / "sub/notes.txt").unlink(), "missing file sub/notes.txt", id="missing-file"),
    pytest.param(lambda d: (d / "extra.bin").write_bytes(b"x"), "unexpected file extra.bin", id="extra-file"),
    pytest.param(_edit_manifest, MANIFEST_NAME, id="changed-manifest"),
    pytest.param(
        lambda d: (d / MANIFEST_NAME).unlink(), f"{MANIFEST_NAME} is missing", id="missing-manifest"
    ),
    pytest.param(
        lambda d: (d / MANIFEST_NAME).write_text("{"), "is not a valid manifest", id="garbled-manifest"
    ),
]


@pytest.mark.parametrize(("tamper", "needle"), TAMPERING)
def test_tampering_is_detected_and_named(
    artifact: tuple[Path, str], tamper: Callable[[Path], object], needle: str
) -> None:
    directory, digest = artifact
    tamper(directory)
    with pytest.raises(ArtifactIntegrityError) as raised:
        verify_directory(directory, digest)
    assert needle in str(raised.value)


def test_wrong_expected_digest_is_refused(artifact: tuple[Path, str]) -> None:
    directory, _ = artifact
    with pytest.raises(ArtifactIntegrityError, match="expected sha256:1111"):
        verify_directory(directory, "sha256:" + "1" * 64)


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([{"path": "../x", "sha256": "0", "size": 1}], id="parent"),
        pytest.param([{"path": "/etc/passwd", "sha256": "0", "size": 1}], id="absolute"),
        pytest.param([{"path": MANIFEST_NAME, "sha256": "0", "size": 1}], id="manifest-itself"),
        pytest.param([{"path": "a", "sha256": "0", "size": 1}] * 2, id="duplicate"),
    ],
)
def test_manifest_paths_must_be_plain(entries: list[dict[str, object]]) -> None:
    with pytest.raises(ArtifactIntegrityError):
        canonical_manifest(entries)


def test_chunked_hash_of_a_large_file_equals_hashlib(tmp_path: Path) -> None:
    payload = hashlib.sha256(b"seed").digest() * ((CHUNK_SIZE + 12_345) // 32 + 1)
    assert len(payload) > CHUNK_SIZE
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    assert hash_file(path) == (hashlib.sha256(payload).hexdigest(), len(payload))

    reads: list[int] = []
    copied: list[bytes] = []
    with open(path, "rb") as handle:

        def read(n: int) -> bytes:
            chunk = handle.read(n)
            reads.append(len(chunk))
            return chunk

        assert hash_stream(read, copied.append) == (hashlib.sha256(payload).hexdigest(), len(payload))
    assert max(reads) == CHUNK_SIZE and len(reads) >= 3  # really chunked: two reads with data, then EOF
    assert b"".join(copied) == payload


GOOD = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param("", id="empty"),
        pytest.param("sha256:", id="prefix-only"),
        pytest.param(GOOD[:-1], id="63-hex"),
        pytest.param(GOOD + "0", id="65-hex"),
        pytest.param("sha256:" + GOOD[7:].upper(), id="uppercase-hex"),
        pytest.param(GOOD[7:], id="no-prefix"),
        pytest.param("md5:" + GOOD[7:], id="other-algorithm"),
        pytest.param("sha256:" + "g" * 64, id="non-hex"),
        pytest.param(GOOD + " ", id="trailing-space"),
        pytest.param("SHA256:" + GOOD[7:], id="uppercase-prefix"),
    ],
)
def test_parse_digest_rejects_malformed(digest: str) -> None:
    with pytest.raises(ValueError, match="sha256:<64 lowercase hex digits>"):
        parse_digest(digest)


def test_parse_digest_accepts_well_formed() -> None:
    assert parse_digest(GOOD) == GOOD[7:]


def test_verify_rejects_malformed_expected_digest(artifact: tuple[Path, str]) -> None:
    with pytest.raises(ValueError):
        verify_directory(artifact[0], "sha256:abc")


def test_manifest_and_front_import_only_the_standard_library(child_env: dict[str, str]) -> None:
    code = (
        "import sys, model_server.manifest, model_server.front\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'numpy', 'sklearn', 'joblib', 'fastapi', 'pydantic', 'starlette', 'uvicorn', 'prometheus_client'})\n"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
