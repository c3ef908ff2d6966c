"""ArtifactStore on a real ``file://`` store in tmp_path: blobs and manifests, verification, atomicity."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from model_delivery.exceptions import TamperedArtifact
from model_delivery.store import ArtifactStore, safe_segment
from model_server.manifest import (
    CHUNK_SIZE,
    MANIFEST_NAME,
    build_manifest,
    manifest_digest,
    parse_digest,
    verify_directory,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MODEL = "demo"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/store")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True)
    (src / "serving.json").write_text(json.dumps({"name": MODEL, "flavor": "sklearn"}))
    (src / "model.joblib").write_bytes(b"\x00model-bytes\xff" * 1000)
    (src / "weights" / "layer.bin").write_bytes(bytes(range(256)) * 64)
    return src


def _dirs(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_dir()}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _stored(store_dir: Path, digest: str) -> Path:
    return store_dir / MODEL / "sha256" / parse_digest(digest)


def _blob(store_dir: Path, file: Path) -> Path:
    return store_dir / "blobs" / "sha256" / hashlib.sha256(file.read_bytes()).hexdigest()


def test_put_directory_is_content_addressed(store: ArtifactStore, store_dir: Path, source: Path) -> None:
    stored = store.put_directory(MODEL, source)

    expected = build_manifest(source)
    assert stored.digest == manifest_digest(expected)
    assert stored.reused is False
    assert stored.files == 3
    assert stored.size_bytes == sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
    final = _stored(store_dir, stored.digest)
    assert stored.uri == f"file://{final}"
    assert [p.relative_to(final).as_posix() for p in final.rglob("*")] == [MANIFEST_NAME]
    assert json.loads((final / MANIFEST_NAME).read_text()) == expected
    blobs = store_dir / "blobs" / "sha256"
    assert sorted(p.name for p in blobs.iterdir()) == sorted(e["sha256"] for e in expected["files"])
    for entry in expected["files"]:
        assert (blobs / entry["sha256"]).read_bytes() == (source / entry["path"]).read_bytes()
    assert store.exists(MODEL, stored.digest)
    assert list((store_dir / "blobs" / "uploads").iterdir()) == []
    assert (stored.uploaded_files, stored.uploaded_bytes) == (3, stored.size_bytes)
    assert store.verify(MODEL, stored.digest) == expected


def test_second_put_of_the_same_content_is_reused(store: ArtifactStore, store_dir: Path, source: Path) -> None:
    first = store.put_directory(MODEL, source)
    before = _dirs(store_dir)

    second = store.put_directory(MODEL, source)

    assert second.reused is True
    assert (second.digest, second.uri, second.files, second.size_bytes) == (
        first.digest, first.uri, first.files, first.size_bytes
    )
    assert _dirs(store_dir) == before


def test_a_different_file_gives_a_different_digest(store: ArtifactStore, source: Path) -> None:
    first = store.put_directory(MODEL, source)
    (source / "weights" / "layer.bin").write_bytes(b"other weights")

    second = store.put_directory(MODEL, source)

    assert second.digest != first.digest
    assert second.reused is False
    assert store.exists(MODEL, first.digest) and store.exists(MODEL, second.digest)


def _unreadable_source_file(source: Path, store_dir: Path) -> type[BaseException]:
    # Listed as a regular file, but every read fails with EIO (offset 0 of this process's memory).
    (source / "zz-unreadable.bin").symlink_to("/proc/self/mem")
    return OSError


def _commit_target_is_a_file(source: Path, store_dir: Path) -> type[BaseException]:
    # The blobs are uploaded, then writing the manifest into <model>/sha256/<hex>/ fails.
    final = _stored(store_dir, manifest_digest(build_manifest(source)))
    final.parent.mkdir(parents=True)
    final.write_text("in the way")
    return OSError


@pytest.mark.parametrize(
    "break_put",
    [
        pytest.param(_unreadable_source_file, id="source-file-fails-to-read"),
        pytest.param(_commit_target_is_a_file, id="commit-into-store-fails"),
    ],
)
def test_a_failed_put_commits_no_artifact(
    store: ArtifactStore, store_dir: Path, source: Path,
    break_put: Callable[[Path, Path], type[BaseException]],
) -> None:
    error = break_put(source, store_dir)

    with pytest.raises(error):
        store.put_directory(MODEL, source)

    assert not [p for p in store_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not list(store_dir.rglob(MANIFEST_NAME))  # no manifest: no artifact, whatever blobs went up


def test_fetch_gives_a_verified_copy_and_reuses_it(store: ArtifactStore, source: Path, tmp_path: Path) -> None:
    stored = store.put_directory(MODEL, source)
    dest = tmp_path / "fetched" / "copy"
    dest.parent.mkdir()

    assert store.fetch(MODEL, stored.digest, dest) == dest

    assert verify_directory(dest, stored.digest) == build_manifest(source)
    assert (dest / "weights" / "layer.bin").read_bytes() == (source / "weights" / "layer.bin").read_bytes()
    inode = (dest / "model.joblib").stat().st_ino
    assert store.fetch(MODEL, stored.digest, dest) == dest
    assert (dest / "model.joblib").stat().st_ino == inode
    assert sorted(p.name for p in dest.parent.iterdir()) == [".copy.verified", "copy"]


def _drop_manifest(dest: Path) -> None:
    (dest / MANIFEST_NAME).unlink()


def _add_file(dest: Path) -> None:
    (dest / "extra.py").write_text("print('not part of the artifact')")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda dest: _flip_byte(dest / "model.joblib"), id="changed-file"),
        pytest.param(lambda dest: (dest / "serving.json").unlink(), id="deleted-file"),
        pytest.param(_add_file, id="added-file"),
        pytest.param(lambda dest: (_flip_byte(dest / "model.joblib"), _drop_manifest(dest)), id="changed-file-no-manifest"),
    ],
)
def test_fetch_repairs_a_damaged_local_copy(
    store_dir: Path, source: Path, tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    store = ArtifactStore(f"file://{store_dir}", link="copy")
    stored = store.put_directory(MODEL, source)
    dest = tmp_path / "copy"
    store.fetch(MODEL, stored.digest, dest)
    damage(dest)

    store.fetch(MODEL, stored.digest, dest)

    assert not (dest / "extra.py").exists()

    assert (dest / "model.joblib").read_bytes() == (source / "model.joblib").read_bytes()
    verify_directory(dest, stored.digest)


def test_fetch_of_a_tampered_stored_file_is_refused(
    store: ArtifactStore, store_dir: Path, source: Path, tmp_path: Path
) -> None:
    stored = store.put_directory(MODEL, source)
    _flip_byte(_blob(store_dir, source / "weights" / "layer.bin"))
    dest = tmp_path / "copy"

    with pytest.raises(TamperedArtifact, match=r"weights/layer\.bin: sha256") as caught:
        store.fetch(MODEL, stored.digest, dest)

    assert "Refusing to deploy" in str(caught.value)
    assert not dest.exists()
    assert list(tmp_path.glob(".copy*")) == []  # nothing of a refused fetch is kept to resume
    with pytest.raises(TamperedArtifact, match=r"weights/layer\.bin"):
        store.verify(MODEL, stored.digest)


def test_a_changed_stored_manifest_is_refused(
    store: ArtifactStore, store_dir: Path, source: Path, tmp_path: Path
) -> None:
    stored = store.put_directory(MODEL, source)
    manifest_path = _stored(store_dir, stored.digest) / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(TamperedArtifact, match="the stored manifest was changed"):
        store.fetch(MODEL, stored.digest, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_an_unknown_digest_is_not_in_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(TamperedArtifact, match="not in the store"):
        store.fetch(MODEL, "sha256:" + "ab" * 32, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_put_refuses_to_reuse_a_damaged_stored_copy(store: ArtifactStore, store_dir: Path, source: Path) -> None:
    store.put_directory(MODEL, source)
    _flip_byte(_blob(store_dir, source / "model.joblib"))

    with pytest.raises(TamperedArtifact, match="Fix:") as caught:
        store.put_directory(MODEL, source)

    assert "model.joblib" in str(caught.value)
    assert "already holds" in str(caught.value)


def test_a_file_larger_than_one_chunk_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "big-src"
    src.mkdir()
    big = src / "weights.bin"
    size = 2 * CHUNK_SIZE + 4 * 1024 * 1024 + 7  # ~20 MB, sparse except for a few marks
    with open(big, "wb") as handle:
        for offset in (0, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 123):
            handle.seek(offset)
            handle.write(b"mark-%d" % offset)
        handle.truncate(size)
    expected = hashlib.sha256(big.read_bytes()).hexdigest()

    stored = store.put_directory(MODEL, src)
    dest = store.fetch(MODEL, stored.digest, tmp_path / "big-copy")

    assert stored.size_bytes == size
    assert json.loads((dest / MANIFEST_NAME).read_text())["files"] == [
        {"path": "weights.bin", "sha256": expected, "size": size}
    ]
    assert hashlib.sha256((dest / "weights.bin").read_bytes()).hexdigest() == expected


def test_write_json_is_atomic_and_leaves_no_temporary_files(store: ArtifactStore, store_dir: Path) -> None:
    dest = store.release_dir(MODEL, "manual__2026-01-01T00:00:00+00:00") / "release.json"

    store.write_json(dest, {"b": 1, "a": [1, 2]})
    store.write_json(dest, {"outcome": "released"})

    release_dir = store_dir / MODEL / "releases" / "manual__2026-01-01T00_00_00_00_00"
    assert json.loads((release_dir / "release.json").read_text()) == {"outcome": "released"}
    assert [p.name for p in release_dir.iterdir()] == ["release.json"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00", id="airflow-run-id"),
        pytest.param("plain-run_1.2", "plain-run_1.2", id="already-safe"),
        pytest.param("../../etc/passwd", ".._.._etc_passwd", id="path-traversal"),
        pytest.param("a b/c\\d", "a_b_c_d", id="spaces-and-slashes"),
        pytest.param("", "_", id="empty"),
        pytest.param(".", "_", id="dot"),
        pytest.param("..", "__", id="dot-dot"),
        pytest.param("...", "...", id="three-dots-is-a-plain-name"),
        pytest.param("x" * 300, "x" * 200, id="too-long"),
        pytest.param("héllo", "h_llo", id="non-ascii"),
    ],
)
def test_safe_segment(value: str, expected: str) -> None:
    assert safe_segment(value) == expected
    assert "/" not in safe_segment(value)
    assert safe_segment(value) not in ("", ".", "..")  # never the same or the parent directory
