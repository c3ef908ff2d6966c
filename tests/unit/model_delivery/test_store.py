"""The store's blobs and manifests on a real ``file://`` store: dedup, both layouts, migration,
parallel part verification, resume after a real ``kill -9``, links, garbage collection, progress."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.exceptions import TamperedArtifact
from model_delivery.store import ArtifactStore
from model_delivery.store.layout import StoreLayout, artifact_uri, blobs_uri, model_segment, store_root_of
from model_server.manifest import (
    MANIFEST_NAME,
    PART_SIZE,
    ArtifactIntegrityError,
    build_manifest,
    manifest_bytes,
    manifest_digest,
    parse_digest,
    verify_directory,
)
from model_server.transfer import (
    Progress,
    copy_files_verified,
    copy_hashing,
    copy_verified,
    verified_parts,
)

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "demo"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _shards(directory: Path, count: int, size: int = 256 * 1024, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"model-{i:05d}-of-{count:05d}.safetensors").write_bytes(
            hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32))
    (directory / "config.json").write_text(json.dumps({"shards": count}))
    return directory


def _big_file(path: Path, size: int) -> Path:
    """A file of ``size`` bytes whose every MiB differs (written in 1 MiB blocks, never held whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as out:
        for i in range(size // len(block)):
            out.write(i.to_bytes(8, "little") + block[8:])
        out.write(block[: size % len(block)])
    return path


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{store_dir}")


def test_a_version_that_changes_one_shard_of_ten_uploads_one_shard(store: ArtifactStore, store_dir: Path,
                                                                   tmp_path: Path) -> None:
    src = _shards(tmp_path / "v1", 10)
    first = store.put_directory(MODEL, src)
    (src / "model-00003-of-00010.safetensors").write_bytes(b"retrained shard" * 1000)

    second = store.put_directory(MODEL, src)

    assert first.uploaded_files == 11
    assert (second.uploaded_files, second.uploaded_bytes) == (1, len(b"retrained shard" * 1000))
    assert second.digest != first.digest and not second.reused
    blobs = list((store_dir / "blobs" / "sha256").iterdir())
    assert len(blobs) == 12  # 11 files, then one new shard: every other file is kept once
    assert store.verify(MODEL, first.digest) and store.verify(MODEL, second.digest)
    other = store.put_directory("other_model", src)  # blobs are shared across models too
    assert other.uploaded_files == 0


def test_large_files_list_their_parts_and_a_flipped_byte_in_any_part_is_found(store: ArtifactStore,
                                                                             store_dir: Path,
                                                                             tmp_path: Path) -> None:
    size = 3 * PART_SIZE + 12345
    big = _big_file(tmp_path / "src" / "weights.bin", size)
    stored = store.put_directory(MODEL, big.parent)
    manifest = json.loads((store_dir / MODEL / "sha256" / parse_digest(stored.digest) / MANIFEST_NAME).read_text())
    entry = manifest["files"][0]
    assert manifest["chunk_size"] == PART_SIZE and len(entry["chunks"]) == 4
    with open(big, "rb") as handle:
        assert entry["chunks"][1] == hashlib.sha256(handle.read(2 * PART_SIZE)[PART_SIZE:]).hexdigest()
    blob = store_dir / "blobs" / "sha256" / entry["sha256"]

    for part, offset in enumerate((0, PART_SIZE + 7, 2 * PART_SIZE + PART_SIZE // 2, size - 1)):
        _flip(blob, offset)
        with pytest.raises(TamperedArtifact) as caught:
            store.verify(MODEL, stored.digest)
        first = part * PART_SIZE
        assert f"weights.bin (part at bytes {first}-{min(first + PART_SIZE, size) - 1})" in str(caught.value)
        assert str(caught.value).count("part at bytes") == 1  # only the part that changed
        _flip(blob, offset)
    assert store.verify(MODEL, stored.digest)["files"] == manifest["files"]


def test_a_small_artifact_keeps_its_digest_from_before_parts(tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 2)
    manifest = build_manifest(src)
    assert manifest["format"] == "model-delivery/manifest-v1" and "chunk_size" not in manifest
    assert all(set(e) == {"path", "sha256", "size"} for e in manifest["files"])


def _legacy_put(store_dir: Path, model: str, src: Path) -> str:
    """Store ``src`` as the store did before blobs: its files beside its manifest."""
    manifest = build_manifest(src)
    digest = manifest_digest(manifest)
    final = store_dir / model / "sha256" / parse_digest(digest)
    shutil.copytree(src, final)
    (final / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
    return digest


def test_the_legacy_layout_is_read_as_it_is_then_migrated(store: ArtifactStore, store_dir: Path,
                                                         tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 3)
    old = _legacy_put(store_dir, MODEL, src)
    shared = store.put_directory("other", _shards(tmp_path / "other", 3, seed=1))  # config.json is the same
    assert shared.uploaded_files == 4

    assert store.verify(MODEL, old)
    fetched = store.fetch(MODEL, old, tmp_path / "before")
    assert verify_directory(fetched, old)

    assert store.migrate() == {"moved": 3, "deduplicated": 1}
    artifact = store_dir / MODEL / "sha256" / parse_digest(old)
    assert [p.name for p in artifact.iterdir()] == [MANIFEST_NAME]
    assert store.verify(MODEL, old)
    assert verify_directory(store.fetch(MODEL, old, tmp_path / "after"), old)
    assert store.migrate() == {"moved": 0, "deduplicated": 0}  # idempotent
    assert store.put_directory(MODEL, src).reused


def test_migration_refuses_a_tampered_legacy_file(store: ArtifactStore, store_dir: Path, tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 2)
    digest = _legacy_put(store_dir, MODEL, src)
    victim = store_dir / MODEL / "sha256" / parse_digest(digest) / "model-00001-of-00002.safetensors"
    _flip(victim, 10)

    with pytest.raises(TamperedArtifact, match="model-00001-of-00002.safetensors"):
        store.migrate()
    assert victim.exists()  # left where it was, for a person to look at
    assert not (store_dir / "blobs" / "sha256" / hashlib.sha256(victim.read_bytes()).hexdigest()).exists()


def test_fetch_on_the_same_filesystem_links_blobs_and_a_changed_blob_is_refused(store_dir: Path,
                                                                                tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{store_dir}", link="hardlink")
    src = _shards(tmp_path / "src", 2)
    stored = store.put_directory(MODEL, src)
    dest = store.fetch(MODEL, stored.digest, tmp_path / "copy")
    entry = build_manifest(src)["files"][0]
    blob = store_dir / "blobs" / "sha256" / entry["sha256"]
    assert (dest / entry["path"]).stat().st_ino == blob.stat().st_ino  # shared, not copied
    assert blob.stat().st_mode & 0o777 == 0o444

    _flip(dest / entry["path"], 3)  # a write in place through the link changes the blob
    shutil.rmtree(dest)
    with pytest.raises(TamperedArtifact, match=entry["path"]):
        store.fetch(MODEL, stored.digest, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_a_fetched_copy_is_not_hashed_again_while_its_files_are_unchanged(store_dir: Path, tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{store_dir}", link="copy")
    stored = store.put_directory(MODEL, _shards(tmp_path / "src", 2))
    dest = store.fetch(MODEL, stored.digest, tmp_path / "copy")
    victim = dest / "model-00000-of-00002.safetensors"
    info = victim.stat()

    _flip(victim, 0)  # same size, inode and (set back) mtime: the stamp holds, so no re-hash sees it
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    store.fetch(MODEL, stored.digest, dest)
    with pytest.raises(ArtifactIntegrityError):
        verify_directory(dest, stored.digest)

    os.utime(victim)  # any change of what identifies a file: verified again, and repaired
    store.fetch(MODEL, stored.digest, dest)
    assert verify_directory(dest, stored.digest)


def test_copy_verified_resumes_at_the_parts_a_partial_copy_lacks(tmp_path: Path) -> None:
    size = 4 * PART_SIZE + 99
    src = _big_file(tmp_path / "src.bin", size)
    entry = build_manifest(src.parent)["files"][0]
    dst = tmp_path / "dst.bin"
    with open(src, "rb") as s, open(dst, "wb") as d:  # two parts, and half of the third, as a killed copy leaves
        d.write(s.read(2 * PART_SIZE + PART_SIZE // 2))
    _flip(dst, PART_SIZE + 5)  # ... with a torn write in the second

    copied = copy_verified(src, dst, entry, PART_SIZE)

    assert copied == size - PART_SIZE  # the first part was kept; the rest (second included) copied
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == entry["sha256"]


def test_copy_verified_refuses_a_source_that_does_not_match(tmp_path: Path) -> None:
    src = _big_file(tmp_path / "src.bin", 2 * PART_SIZE + 1)
    entry = build_manifest(src.parent)["files"][0]
    _flip(src, PART_SIZE + 1)
    with pytest.raises(ArtifactIntegrityError, match=f"part at bytes {PART_SIZE}-{2 * PART_SIZE - 1}"):
        copy_verified(src, tmp_path / "dst.bin", entry, PART_SIZE)


def test_copy_files_verified_copies_many_files_on_one_pool_and_names_each_bad_part(tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 3)
    _big_file(src / "weights.bin", 2 * PART_SIZE + 7)
    entries = build_manifest(src)["files"]
    _flip(src / "weights.bin", PART_SIZE + 3)  # the second part of the large file no longer matches
    jobs = [(src / e["path"], tmp_path / "dst" / e["path"], e) for e in entries]

    with ThreadPoolExecutor(2) as pool:
        results = copy_files_verified(jobs, PART_SIZE, pool=pool)

    by_path = {e["path"]: result for e, result in zip(entries, results, strict=True)}
    copied, problems = by_path.pop("weights.bin")
    assert copied == 2 * PART_SIZE + 7
    assert len(problems) == 1 and f"part at bytes {PART_SIZE}-{2 * PART_SIZE - 1}" in problems[0]
    for path, (copied, problems) in by_path.items():  # every other file copied whole and verified
        assert problems == [] and copied == (src / path).stat().st_size
        assert (tmp_path / "dst" / path).read_bytes() == (src / path).read_bytes()


def test_a_put_uploads_content_two_files_share_once(store: ArtifactStore, store_dir: Path, tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 1)
    _big_file(src / "a.bin", PART_SIZE + 5)
    shutil.copy(src / "a.bin", src / "b.bin")

    stored = store.put_directory(MODEL, src)

    assert stored.uploaded_files == 3  # the shard, config.json, and a.bin's bytes once for both (one blob)
    assert stored.uploaded_bytes == 256 * 1024 + len((src / "config.json").read_bytes()) + PART_SIZE + 5
    assert list((store_dir / "blobs" / "uploads").iterdir()) == []
    assert len(list((store_dir / "blobs" / "sha256").iterdir())) == 3
    fetched = store.fetch(MODEL, stored.digest, tmp_path / "fetched")
    assert (fetched / "b.bin").read_bytes() == (src / "a.bin").read_bytes()


def test_copy_hashing_gives_the_digests_of_exactly_the_bytes_it_wrote(tmp_path: Path) -> None:
    src = _big_file(tmp_path / "src" / "weights.bin", 2 * PART_SIZE + 12345)
    expected = build_manifest(src.parent)["files"][0]

    sha, chunks, size = copy_hashing(src, tmp_path / "copy.bin", PART_SIZE)

    assert {"path": "weights.bin", "sha256": sha, "size": size, "chunks": chunks} == expected
    assert hashlib.sha256((tmp_path / "copy.bin").read_bytes()).hexdigest() == sha


@pytest.mark.parametrize("fault", ["writer-fails", "part-hasher-fails", "source-shrinks", "source-grows"])
def test_copy_hashing_stops_on_a_failure_in_any_stage_and_says_what(tmp_path: Path, fault: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The read, part-hash and write stages run on three threads: a failure in any of them ends the copy with its
    error (no stage is left waiting), and a source that changes size while it is copied is refused."""
    import model_server.transfer as transfer

    src = _big_file(tmp_path / "src" / "weights.bin", 3 * PART_SIZE + 12345)
    written = [0]

    def done(n: int) -> None:
        written[0] += n
        if written[0] >= PART_SIZE:
            if fault == "writer-fails":
                raise OSError(28, "No space left on device")
            if fault == "source-shrinks":
                os.truncate(src, 2 * PART_SIZE)
            if fault == "source-grows" and src.stat().st_size == 3 * PART_SIZE + 12345:
                with open(src, "ab") as handle:  # long before the reader reaches the end it was told
                    handle.write(b"more")

    if fault == "part-hasher-fails":
        def broken(self: Any, position: int, view: memoryview) -> None:
            raise MemoryError("part hasher")
        monkeypatch.setattr(transfer._PartHasher, "__call__", broken)
    expected = {"writer-fails": (OSError, "No space left"), "part-hasher-fails": (MemoryError, "part hasher"),
                "source-shrinks": (ArtifactIntegrityError, "ended at byte"),
                "source-grows": (ArtifactIntegrityError, "grew past")}[fault]

    with pytest.raises(expected[0], match=expected[1]):
        transfer.copy_hashing(src, tmp_path / "copy.bin", PART_SIZE, done=done)
    assert not [t for t in threading.enumerate() if t.name.startswith("md-copy-")]


def test_a_file_of_a_size_no_blob_has_is_copied_and_hashed_in_one_pass(store: ArtifactStore, store_dir: Path,
                                                                      tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 2)
    _big_file(src / "weights.bin", PART_SIZE + 77)
    lines: list[str] = []

    stored = store.put_directory(MODEL, src, log=lambda fmt, *args: lines.append(fmt % args))

    assert stored.digest == manifest_digest(build_manifest(src))  # the same digest as hashing in place
    assert any(line.startswith(f"store {MODEL}: ") for line in lines), lines  # the one-pass copy ran
    assert not any(line.startswith(f"hash {MODEL}: ") for line in lines), lines  # nothing hashed in place
    assert list((store_dir / "blobs" / "uploads").iterdir()) == []
    assert store.verify(MODEL, stored.digest)
    again = _shards(tmp_path / "again", 2, seed=1)  # sizes the store has now: hashed in place first
    (again / "weights.bin").write_bytes((src / "weights.bin").read_bytes())
    lines.clear()
    second = store.put_directory(MODEL, again, log=lambda fmt, *args: lines.append(fmt % args))
    assert any(line.startswith(f"hash {MODEL}: ") for line in lines), lines
    assert second.uploaded_bytes == 2 * 256 * 1024  # the two new shards; weights.bin's blob was there


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import model_delivery.store.artifacts as artifacts
    from model_delivery.store import ArtifactStore

    total, seen = int(sys.argv[4]), [0]

    def count(done):
        def counted(n):
            done(n)
            seen[0] += n
            if seen[0] >= total // 2:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9 half-way: no finally, no clean-up
        return counted

    copy_files, copy_hashing = artifacts.copy_files_verified, artifacts.copy_hashing
    artifacts.copy_files_verified = lambda files, size, *, done, pool=None: copy_files(files, size, done=count(done),
                                                                                      pool=pool)
    artifacts.copy_hashing = lambda src, dst, size, *, done: copy_hashing(src, dst, size, done=count(done))
    store = ArtifactStore(sys.argv[2], link="copy")
    if sys.argv[1] == "put":
        store.put_directory("demo", Path(sys.argv[3]))
    else:
        digest, dest = sys.argv[3].split("@")
        store.fetch("demo", digest, Path(dest))
""")


def _kill_half_way(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([f"{ROOT}/plugins", f"{ROOT}/include/serving"])}
    result = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_a_put_killed_half_way_resumes_and_commits_nothing_before(store_dir: Path, tmp_path: Path) -> None:
    size = 8 * PART_SIZE
    src = _big_file(tmp_path / "src" / "weights.bin", size).parent

    _kill_half_way("put", f"file://{store_dir}", str(src), str(size))

    store = ArtifactStore(f"file://{store_dir}")
    assert not list(store_dir.rglob(MANIFEST_NAME))  # nothing half-written is visible as an artifact
    parts = list((store_dir / "blobs" / "uploads").iterdir())
    assert len(parts) == 1 and 0 < parts[0].stat().st_size
    stored = store.put_directory(MODEL, src)
    assert PART_SIZE <= stored.uploaded_bytes <= size * 3 // 4  # resumed: about half was there
    assert store.verify(MODEL, stored.digest)
    assert list((store_dir / "blobs" / "uploads").iterdir()) == []


def test_a_fetch_killed_half_way_resumes_and_shows_no_artifact_before(store_dir: Path, tmp_path: Path) -> None:
    size = 8 * PART_SIZE
    src = _big_file(tmp_path / "src" / "weights.bin", size).parent
    store = ArtifactStore(f"file://{store_dir}", link="copy")
    stored = store.put_directory(MODEL, src)
    dest = tmp_path / "fetched"

    _kill_half_way("fetch", f"file://{store_dir}", f"{stored.digest}@{dest}", str(size))

    assert not dest.exists()
    partial = tmp_path / ".fetched.partial"
    entry = store.read_manifest(MODEL, stored.digest)["files"][0]
    with ThreadPoolExecutor(2) as pool:
        held = verified_parts(partial / "weights.bin", entry, PART_SIZE, pool)
    assert 1 <= sum(held) <= 6  # about half of the 8 parts were copied and verify: the resume keeps them
    store.fetch(MODEL, stored.digest, dest)
    assert verify_directory(dest, stored.digest)
    assert not partial.exists()


def test_progress_logs_bytes_rate_and_eta() -> None:
    lines: list[str] = []
    progress = Progress("fetch demo", 4 * 1024**3, lambda fmt, *a: lines.append(fmt % a), every=0.0)
    progress(1024**3)
    assert lines and lines[-1].startswith("fetch demo: 1.0 GiB of 4.0 GiB (25%), ")
    assert "/s, ETA " in lines[-1]


def test_garbage_collection_keeps_what_the_rule_protects(store: ArtifactStore, store_dir: Path,
                                                        tmp_path: Path) -> None:
    digests = []
    for i in range(4):
        digests.append(store.put_directory(MODEL, _shards(tmp_path / f"v{i}", 2, seed=i)).digest)
    old = time.time() - 3 * 86400
    for path in (store_dir / MODEL / "sha256").rglob(MANIFEST_NAME):
        os.utime(path, (old, old))
    for blob in (store_dir / "blobs" / "sha256").iterdir():
        os.utime(blob, (old, old))
    newest = store.put_directory(MODEL, _shards(tmp_path / "v4", 2, seed=4)).digest

    dry = store.collect_garbage({MODEL: {digests[0]}}, keep_last=2, dry_run=True)
    assert dry.removed_artifacts and all(store.exists(MODEL, d) for d in digests)
    report = store.collect_garbage({MODEL: {digests[0]}}, keep_last=2)

    kept = {digests[0], newest}  # production (say), the newest (young), and the next newest by rank
    assert set(report.kept[MODEL]) >= kept and len(report.kept[MODEL]) == 3
    assert len(report.removed_artifacts) == 2 and report.removed_blobs == 4
    for digest in report.kept[MODEL]:
        assert store.verify(MODEL, digest)
    remaining = {b.name for b in (store_dir / "blobs" / "sha256").iterdir()}
    referenced = {e["sha256"] for d in report.kept[MODEL] for e in store.read_manifest(MODEL, d)["files"]}
    assert remaining == referenced


def test_by_default_a_fetched_copy_never_shares_the_blob(store: ArtifactStore, store_dir: Path,
                                                         tmp_path: Path) -> None:
    src = _shards(tmp_path / "src", 1)
    stored = store.put_directory(MODEL, src)
    dest = store.fetch(MODEL, stored.digest, tmp_path / "copy")
    entry = build_manifest(src)["files"][0]
    _flip(dest / entry["path"], 0)  # damage to a served copy (a clone or a copy) stays in that copy

    assert store.verify(MODEL, stored.digest)
    shutil.rmtree(dest)
    assert verify_directory(store.fetch(MODEL, stored.digest, dest), stored.digest)
    with pytest.raises(ValueError, match="MODEL_DELIVERY_STORE_LINK"):
        ArtifactStore(f"file://{store_dir}", link="symlink")


def test_the_layout_is_one_owner_of_every_path(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    layout = StoreLayout(tmp_path)
    assert layout.artifact("m", digest) == tmp_path / "m" / "sha256" / ("ab" * 32)
    assert artifact_uri("s3://bucket/root/", "m", digest) == f"s3://bucket/root/m/sha256/{'ab' * 32}"
    assert store_root_of(artifact_uri("file:///srv/store", "m", digest), "m") == "file:///srv/store"
    assert blobs_uri("s3://b/r") == "s3://b/r/blobs/sha256"
    for reserved in ("blobs", "_delivery_metrics", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="cannot name a model"):
            model_segment(reserved)
    (tmp_path / "blobs").mkdir()
    (tmp_path / "m").mkdir()
    assert layout.models() == ["m"]
