"""The init container's script, run for real: it fetches a stored artifact and verifies it, or refuses it."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model_delivery.store import layout
from model_delivery.store.layout import blobs_uri, store_root_of
from model_server.manifest import canonical_manifest, manifest_bytes, manifest_digest, verify_directory
from tests.helpers.models import free_port
from tests.helpers.processes import serving_env
from tests.unit.model_delivery.conftest import Builds

SCRIPT = Path(__file__).resolve().parents[3] / "include" / "kubernetes" / "fetch_artifact.py"
MODEL = "breast_cancer"


def fetch(uri: str, digest: str, dest: Path, *more: str) -> subprocess.CompletedProcess[str]:
    if f"/{MODEL}/sha256/" in uri:  # as the manifests pass it: where the store keeps its blobs
        more = ("--blobs", blobs_uri(store_root_of(uri, MODEL)), *more)
    return subprocess.run([sys.executable, str(SCRIPT), "--uri", uri, "--digest", digest, "--dest", str(dest), *more],
                          capture_output=True, text=True, env=serving_env(), timeout=120)


@pytest.fixture
def store_copy(builds: Builds, tmp_path: Path) -> Path:
    """A private copy of the session's store (the tests below damage it)."""
    source = Path(builds.store_root.removeprefix("file://"))
    return Path(shutil.copytree(source, tmp_path / "store"))


@pytest.fixture
def http_store(store_copy: Path) -> Iterator[str]:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(store_copy))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def artifact_uri(root: str, digest: str) -> str:
    return layout.artifact_uri(root, MODEL, digest)


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_a_stored_artifact_is_fetched_and_verified(builds: Builds, store_copy: Path, http_store: str, tmp_path: Path,
                                                   scheme: str) -> None:
    root = f"file://{store_copy}" if scheme == "file" else http_store
    dest = tmp_path / "models" / builds.v1.digest.removeprefix("sha256:")
    dest.parent.mkdir()
    done = fetch(artifact_uri(root, builds.v1.digest), builds.v1.digest, dest)
    assert done.returncode == 0, done.stderr
    assert verify_directory(dest, builds.v1.digest)
    assert f"verified {len(json.loads((dest / 'MANIFEST.json').read_text())['files'])} file(s)" in done.stderr

    again = fetch(artifact_uri(root, builds.v1.digest), builds.v1.digest, dest)
    assert again.returncode == 0 and "already holds" in again.stderr


def test_a_changed_file_is_refused_and_nothing_is_put_in_place(builds: Builds, store_copy: Path,
                                                               tmp_path: Path) -> None:
    stored = store_copy / MODEL / "sha256" / builds.v1.digest.removeprefix("sha256:")
    entry = next(e for e in json.loads((stored / "MANIFEST.json").read_text())["files"]
                 if e["path"] != "serving.json")
    blob = store_copy / "blobs" / "sha256" / entry["sha256"]
    victim = blob if blob.exists() else stored / entry["path"]  # the store's blobs, or the legacy layout
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    dest = tmp_path / "dest"
    done = fetch(artifact_uri(f"file://{store_copy}", builds.v1.digest), builds.v1.digest, dest)
    assert done.returncode == 3, done.stderr
    assert f"refusing the artifact {builds.v1.digest}" in done.stderr and entry["path"] in done.stderr
    assert not dest.exists()
    assert not list(tmp_path.glob(".dest.*"))


def test_an_artifact_under_another_digest_is_refused(builds: Builds, store_copy: Path, tmp_path: Path) -> None:
    done = fetch(artifact_uri(f"file://{store_copy}", builds.v1.digest), builds.v2.digest, tmp_path / "dest")
    assert done.returncode == 3
    assert f"hashes to {builds.v1.digest}, not {builds.v2.digest}" in done.stderr


def test_a_manifest_escaping_the_artifact_directory_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "store" / MODEL / "sha256" / "x"
    artifact.mkdir(parents=True)
    (tmp_path / "store" / MODEL / "secret").write_bytes(b"")
    entries = [{"path": "../secret", "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "size": 0}]
    try:
        manifest = canonical_manifest(entries)
    except Exception:  # noqa: BLE001 - the shared manifest code refuses it already: also a refusal
        manifest = {"format": "model-delivery/manifest-v1", "files": entries}
    (artifact / "MANIFEST.json").write_bytes(manifest_bytes(manifest))
    digest = manifest_digest(manifest)
    done = fetch(f"file://{artifact}", digest, tmp_path / "dest")
    assert done.returncode == 3, done.stderr
    assert not (tmp_path / "secret").exists() and not (tmp_path / "dest").exists()


@pytest.mark.parametrize(("uri", "code", "says"), [
    pytest.param("file:///nonexistent/store/breast_cancer/sha256/ab", 1, "cannot read", id="missing"),
    pytest.param("gs://bucket/breast_cancer/sha256/ab", 2, "needs fsspec", id="no-fsspec-in-the-image"),
])
def test_an_unreadable_store_is_not_an_integrity_failure(tmp_path: Path, uri: str, code: int, says: str,
                                                          builds: Builds) -> None:
    done = fetch(uri, builds.v1.digest, tmp_path / "dest")
    assert done.returncode == code, done.stderr
    assert says in done.stderr


@pytest.mark.parametrize(("uri", "code", "says"), [
    pytest.param("oci://127.0.0.1:{port}", 2, "not of the form oci://host[:port]/repository", id="no-repository"),
    pytest.param("oci://127.0.0.1:{port}/models@latest", 2, "is not an OCI manifest digest", id="tag-not-digest"),
    pytest.param("oci://127.0.0.1:{port}/models", 1, "cannot read", id="no-registry-there"),
])
def test_an_oci_uri_is_checked_and_an_unreachable_registry_is_not_an_integrity_failure(
        tmp_path: Path, uri: str, code: int, says: str, builds: Builds) -> None:
    """The registry itself is exercised in tests/integration/test_oci_store.py."""
    done = fetch(uri.format(port=free_port()), builds.v1.digest, tmp_path / "dest", "--insecure")
    assert done.returncode == code, done.stderr
    assert says in done.stderr and not (tmp_path / "dest").exists()
