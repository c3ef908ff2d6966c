"""The init container's script, run for real: it fetches a stored artifact and verifies it, or refuses it.

Signatures are made as the build makes them (``model_delivery.signing.sign_directory``, a real EC
key) and verified by the script with ``model_signing``; large files carry part digests of the
smallest part size a manifest allows (8 MiB), so a multi-part file stays small.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from model_delivery.store import layout
from model_delivery.store.layout import blobs_uri, store_root_of
from model_server.manifest import (
    CHUNK_SIZE,
    canonical_manifest,
    manifest_bytes,
    manifest_digest,
    verify_directory,
)
from tests.helpers import signed_artifacts
from tests.helpers.models import free_port
from tests.helpers.processes import serving_env
from tests.helpers.signed_artifacts import certificate_chain, ec_key_pair, sign_stored
from tests.unit.model_delivery.conftest import Builds

SCRIPT = Path(__file__).resolve().parents[3] / "include" / "kubernetes" / "fetch_artifact.py"
MODEL = "breast_cancer"


def fetch(uri: str, digest: str, dest: Path, *more: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    if f"/{MODEL}/sha256/" in uri:  # as the manifests pass it: where the store keeps its blobs
        more = ("--blobs", blobs_uri(store_root_of(uri, MODEL)), *more)
    return subprocess.run([sys.executable, str(SCRIPT), "--uri", uri, "--digest", digest, "--dest", str(dest), *more],
                          capture_output=True, text=True, env={**serving_env(), **(env or {})}, timeout=120)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """A plain HTTP server over a store directory, as an http(s):// store is seen by the pods."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def store_copy(builds: Builds, tmp_path: Path) -> Path:
    """A private copy of the session's store (the tests below damage it)."""
    source = Path(builds.store_root.removeprefix("file://"))
    return Path(shutil.copytree(source, tmp_path / "store"))


@pytest.fixture
def http_store(store_copy: Path) -> Iterator[str]:
    with http_server(store_copy) as url:
        yield url


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


# -- signatures: verified in the pod before anything is put in place -----------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The signing key (private PEM), its public key, and another key's public key, as files."""
    base = tmp_path_factory.mktemp("keys")
    private, public = ec_key_pair(ec.SECP256R1())
    (base / "signing.key").write_bytes(private)
    (base / "signing.pub").write_bytes(public)
    (base / "other.pub").write_bytes(ec_key_pair(ec.SECP384R1())[1])
    return {"private": base / "signing.key", "public": base / "signing.pub", "other": base / "other.pub"}


def store_artifact(root: Path, files: dict[str, bytes], *, part: int | None = None) -> tuple[Path, str]:
    return signed_artifacts.store_artifact(root, MODEL, files, part=part)


def sign(directory: Path, private: Path) -> None:
    sign_stored(directory, private.read_bytes())


FILES = {"model.joblib": b"\x00weights" * 1000, "serving.json": b'{"flavor": "sklearn"}', "sub/vocab.txt": b"a\nb\n"}


def at(root: Path, directory: Path, scheme: str, base: str) -> str:
    """The artifact's URI over ``scheme`` (``base`` is the HTTP server's URL over ``root``)."""
    return f"file://{directory}" if scheme == "file" else f"{base}/{directory.relative_to(root)}"


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_a_signed_artifact_is_verified_before_it_is_put_in_place(tmp_path: Path, keys: dict[str, Path],
                                                                 scheme: str) -> None:
    root = tmp_path / "store"
    directory, digest = store_artifact(root, FILES)
    sign(directory, keys["private"])
    dest = tmp_path / "models" / "dest"
    with http_server(root) as base:
        done = fetch(at(root, directory, scheme, base), digest, dest, "--signing", "required",
                     "--public-key", str(keys["public"]))
    assert done.returncode == 0, done.stderr
    assert "signature verified (key method" in done.stderr
    assert verify_directory(dest, digest) and not (dest / "signature").exists()


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_an_unsigned_artifact_is_refused_when_signing_is_required_and_served_when_optional(
        tmp_path: Path, keys: dict[str, Path], scheme: str) -> None:
    root = tmp_path / "store"
    directory, digest = store_artifact(root, FILES)
    with http_server(root) as base:  # the store has no file (file) or answers 404 (http)
        mode = "required" if scheme == "file" else "optional"
        done = fetch(at(root, directory, scheme, base), digest, tmp_path / mode, "--signing", mode, "--public-key",
                     str(keys["public"]))
    if mode == "required":
        assert done.returncode == 3, done.stderr
        assert f"refusing the artifact {digest}" in done.stderr and "signature unsigned" in done.stderr
        assert "signature/model.sig" in done.stderr and "Fix: " in done.stderr
        assert not (tmp_path / mode).exists() and not list(tmp_path.glob(f".{mode}.*"))
    else:
        assert done.returncode == 0, done.stderr
        assert "served unsigned" in done.stderr and verify_directory(tmp_path / mode, digest)


def _other_key(directory: Path, root: Path, keys: dict[str, Path]) -> tuple[Path, str, str]:
    return directory, str(keys["other"]), "wrong-key"


def _tampered(directory: Path, root: Path, keys: dict[str, Path]) -> tuple[Path, str, str]:
    """Someone changed a file and stored it under the new manifest's digest, keeping the old bundle."""
    changed, _ = store_artifact(root, {**FILES, "model.joblib": FILES["model.joblib"][:-1] + b"\x01"})
    (changed / "signature").mkdir()
    shutil.copy(directory / "signature" / "model.sig", changed / "signature" / "model.sig")
    return changed, str(keys["public"]), "changed-files"


def _forged(directory: Path, root: Path, keys: dict[str, Path]) -> tuple[Path, str, str]:
    bundle = json.loads((directory / "signature" / "model.sig").read_bytes())
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[10] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    (directory / "signature" / "model.sig").write_text(json.dumps(bundle))
    return directory, str(keys["public"]), "bad-signature"


@pytest.mark.parametrize("damage", [pytest.param(_other_key, id="other-key"), pytest.param(_tampered, id="tampered"),
                                    pytest.param(_forged, id="forged-signature")])
def test_a_signature_that_does_not_hold_is_refused_and_nothing_is_put_in_place(
        tmp_path: Path, keys: dict[str, Path], damage: Any) -> None:
    root = tmp_path / "store"
    directory, _ = store_artifact(root, FILES)
    sign(directory, keys["private"])
    served, public_key, reason = damage(directory, root, keys)
    digest = "sha256:" + served.name
    dest = tmp_path / "models" / "dest"
    done = fetch(f"file://{served}", digest, dest, "--signing", "required", "--public-key", public_key)
    assert done.returncode == 3, done.stderr
    assert f"refusing the artifact {digest}" in done.stderr and f"signature {reason}" in done.stderr
    if reason == "changed-files":
        assert "model.joblib" in done.stderr
    assert not dest.exists() and not list(dest.parent.glob(".dest.*"))


def test_an_artifact_already_in_place_is_checked_against_the_signature_again(tmp_path: Path,
                                                                             keys: dict[str, Path]) -> None:
    directory, digest = store_artifact(tmp_path / "store", FILES)
    sign(directory, keys["private"])
    dest = tmp_path / "dest"
    assert fetch(f"file://{directory}", digest, dest, "--signing", "required", "--public-key",
                 str(keys["public"])).returncode == 0
    again = fetch(f"file://{directory}", digest, dest, "--signing", "required", "--public-key", str(keys["other"]))
    assert again.returncode == 3 and "signature wrong-key" in again.stderr
    assert not dest.exists()


def test_the_certificate_method_verifies_against_the_ca_and_refuses_another_cas_signer(tmp_path: Path) -> None:
    directory, digest = store_artifact(tmp_path / "store", FILES)
    ca, private, certificate = certificate_chain()
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "other-ca.pem").write_bytes(certificate_chain()[0])
    sign_stored(directory, private, certificate)
    done = fetch(f"file://{directory}", digest, tmp_path / "dest", "--signing", "required", "--ca",
                 str(tmp_path / "ca.pem"))
    assert done.returncode == 0 and "signature verified (certificate method" in done.stderr, done.stderr
    refused = fetch(f"file://{directory}", digest, tmp_path / "other", "--signing", "required", "--ca",
                    str(tmp_path / "other-ca.pem"))
    assert refused.returncode == 3 and "signature untrusted-certificate" in refused.stderr, refused.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(("more", "says"), [
    pytest.param(["--signing", "required"], "needs one of --public-key", id="no-key"),
    pytest.param(["--public-key", "/x.pem"], "need --signing", id="key-without-signing"),
    pytest.param(["--signing", "required", "--public-key", "/nonexistent/signing.pem"], "does not exist",
                 id="key-file-missing"),
])
def test_signature_arguments_that_do_not_fit_are_usage_errors(tmp_path: Path, keys: dict[str, Path],
                                                              more: list[str], says: str) -> None:
    directory, digest = store_artifact(tmp_path / "store", FILES)
    done = fetch(f"file://{directory}", digest, tmp_path / "dest", *more)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and not (tmp_path / "dest").exists()


def test_an_image_without_model_signing_is_unusable_and_says_how_to_fix_it(tmp_path: Path,
                                                                           keys: dict[str, Path]) -> None:
    directory, digest = store_artifact(tmp_path / "store", FILES)
    sign(directory, keys["private"])
    shadow = tmp_path / "image" / "model_signing"  # what an image without the package gives
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named model_signing')\n")
    env = serving_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "image"), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, str(SCRIPT), "--uri", f"file://{directory}", "--digest", digest,
                           "--dest", str(tmp_path / "dest"), "--signing", "required", "--public-key",
                           str(keys["public"])], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "has no model-signing" in done.stderr and "signing-requirements.txt" in done.stderr
    assert not (tmp_path / "dest").exists()


# -- large files: every part on every core ---------------------------------------------------------------------

PART = CHUNK_SIZE  # the smallest part size a manifest may give (8 MiB), so the file below stays small


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return random.Random(11).randbytes(3 * PART + 4096)  # four parts, the last one short


def test_a_large_file_is_fetched_part_by_part_on_every_thread(tmp_path: Path, large: bytes) -> None:
    """From a local store its four parts are copied and hashed at once (a streamed one: test_oci_store.py)."""
    directory, digest = store_artifact(tmp_path / "store", {"weights.bin": large, "config.json": b"{}"}, part=PART)
    dest = tmp_path / "dest"
    done = fetch(f"file://{directory}", digest, dest, env={"MODEL_DELIVERY_HASH_THREADS": "4"})
    assert done.returncode == 0, done.stderr
    assert "hashed on 4 thread(s), 4 part(s) of large files in parallel" in done.stderr
    assert (dest / "weights.bin").read_bytes() == large and verify_directory(dest, digest)


@pytest.mark.parametrize(("scheme", "k"), [
    pytest.param("file", 1, id="local-part-1"),  # the parts read in parallel
    pytest.param("file", 3, id="local-last-short-part"),
    pytest.param("http", 2, id="streamed-part-2"),  # each part hashed as it passes
])
def test_a_flipped_byte_in_one_part_of_a_large_file_is_refused_naming_that_part(tmp_path: Path, large: bytes,
                                                                                scheme: str, k: int) -> None:
    root = tmp_path / "store"
    directory, digest = store_artifact(root, {"weights.bin": large}, part=PART)
    stored = bytearray(large)
    stored[k * PART + 1234] ^= 0x01
    (directory / "weights.bin").write_bytes(bytes(stored))
    dest = tmp_path / "dest"
    with http_server(root) as base:
        done = fetch(at(root, directory, scheme, base), digest, dest)
    assert done.returncode == 3, done.stderr
    end = min((k + 1) * PART, len(large)) - 1
    assert f"weights.bin (part at bytes {k * PART}-{end}): sha256" in done.stderr
    assert done.stderr.count("(part at bytes") == 1  # the other parts verified
    assert not dest.exists() and not list(tmp_path.glob(".dest.*"))
