"""An OCI registry as the artifact store, for real: Debian's docker-registry (CNCF distribution) on 127.0.0.1.

``OciRepository`` (oras-py) pushes, pulls and verifies small artifacts; a second push uploads no
blob (counted in the registry's own access log); a damaged blob or a manifest whose layer does
not match is refused and leaves nothing behind; the init container's ``fetch_artifact.py`` pulls
by digest in a subprocess and refuses the same damage with exit code 3; a bearer-token gate in
front of the registry is answered by both. A model-signing bundle is attached to an artifact as
cosign attaches Sigstore bundles (a referrer; this registry has no referrers API, so the
referrers tag), and the init container finds it, verifies it, and refuses another key's or none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from model_delivery.exceptions import TamperedArtifact
from model_delivery.signing import sign_directory
from model_delivery.store import oci
from model_delivery.store.artifacts import ArtifactStore
from model_delivery.store.oci import OciRegistryError, OciRepository, layer_media_type, parse_oci_uri, tag_for
from model_server.manifest import (
    MANIFEST_NAME,
    build_manifest,
    manifest_bytes,
    manifest_digest,
    verify_directory,
)
from tests.helpers.oci_registry import OciRegistry, auth_front
from tests.helpers.processes import serving_env

pytest_plugins = ("tests.helpers.oci_registry",)  # the module-scoped `registry` fixture
SCRIPT = Path(__file__).resolve().parents[2] / "include" / "kubernetes" / "fetch_artifact.py"
MiB = 1024 * 1024


def make_artifact(base: Path, seed: int) -> tuple[Path, str, bytes]:
    """A few files, one of 3 MiB, all of content unique to ``seed`` (tests damage blobs, which are shared)."""
    rng = random.Random(seed)
    directory = base / f"artifact-{seed}"
    (directory / "tokenizer").mkdir(parents=True)
    (directory / "model.bin").write_bytes(rng.randbytes(3 * MiB))
    (directory / "serving.json").write_text(json.dumps({"flavor": "sklearn", "seed": seed}))
    (directory / "README.md").write_text(f"# model {seed}\n")
    (directory / "tokenizer" / "vocab.txt").write_text("\n".join(str(rng.random()) for _ in range(50)))
    manifest = build_manifest(directory)
    return directory, manifest_digest(manifest), manifest_bytes(manifest)


def push(repo: OciRepository, directory: Path, digest: str, raw: bytes) -> dict[str, Any]:
    return repo.push("tiny", digest, raw, lambda rel: directory / rel)


def fetch(uri: str, digest: str, dest: Path, *more: str, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--uri", uri, "--digest", digest, "--dest", str(dest), *more],
                          capture_output=True, text=True, env=env or serving_env(), timeout=120)


def uploads(registry: OciRegistry) -> list[tuple[str, str, int]]:
    """Requests that started or finished a blob upload."""
    return [r for r in registry.requests() if r[0] in ("POST", "PUT", "PATCH") and "/blobs/uploads/" in r[1]]


def test_an_artifact_is_pushed_as_a_modelpack_manifest_pulled_and_verified(registry: OciRegistry,
                                                                            tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=1)
    repo = OciRepository(registry.uri("models/tiny"), insecure=True)
    assert not repo.exists(digest)
    pushed = push(repo, directory, digest, raw)
    assert (pushed["uploaded"], pushed["reused"]) == (4 + 2, 0)  # 4 files, our manifest, the ModelPack config
    assert pushed["tag"] == tag_for(digest) == "sha256-" + digest.removeprefix("sha256:")
    assert repo.exists(digest)

    document = httpx.get(f"{registry.url}/v2/models/tiny/manifests/{pushed['oci_digest']}",
                         headers={"Accept": oci.OCI_MANIFEST}).json()
    assert (document["artifactType"], document["config"]["mediaType"]) == (oci.ARTIFACT_TYPE, oci.CONFIG_MEDIA_TYPE)
    kinds = {x["annotations"][oci.TITLE]: x["mediaType"] for x in document["layers"]}
    assert kinds == {"model.bin": oci.WEIGHT, "serving.json": oci.WEIGHT_CONFIG, "README.md": oci.DOC,
                     "tokenizer/vocab.txt": oci.WEIGHT_CONFIG, MANIFEST_NAME: oci.MANIFEST_MEDIA_TYPE}
    ours = next(x for x in document["layers"] if x["mediaType"] == oci.MANIFEST_MEDIA_TYPE)
    assert ours["digest"] == digest  # our manifest's blob digest is the artifact digest
    config = httpx.get(f"{registry.url}/v2/models/tiny/blobs/{document['config']['digest']}").json()
    assert config["descriptor"]["name"] == "tiny"
    assert config["modelfs"]["diffIds"] == [x["digest"] for x in document["layers"]]

    for how in ({"oci_digest": pushed["oci_digest"]}, {}):  # by the OCI manifest's digest, then by the tag
        dest = tmp_path / f"pulled-{len(how)}"
        assert repo.pull(digest, dest, **how) == dest
        assert verify_directory(dest, digest)
        assert (dest / MANIFEST_NAME).read_bytes() == raw
        assert (dest / "model.bin").read_bytes() == (directory / "model.bin").read_bytes()
    assert not list(tmp_path.glob(".pulled-*"))


def test_a_second_push_of_the_same_artifact_uploads_no_blob(registry: OciRegistry, tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=2)
    repo = OciRepository(registry.uri("models/tiny"), insecure=True)
    first = push(repo, directory, digest, raw)
    before = len(uploads(registry))
    again = push(repo, directory, digest, raw)
    assert uploads(registry)[before:] == []
    assert (again["uploaded"], again["reused"], again["oci_digest"]) == (0, 6, first["oci_digest"])


def test_a_damaged_blob_is_refused_and_nothing_is_put_in_place(registry: OciRegistry, tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=3)
    repo = OciRepository(registry.uri("models/damaged"), insecure=True)
    pushed = push(repo, directory, digest, raw)
    entry = next(e for e in json.loads(raw)["files"] if e["path"] == "model.bin")
    data = registry.blob_data("sha256:" + entry["sha256"])
    damaged = bytearray(data.read_bytes())
    damaged[-1] ^= 0xFF
    data.write_bytes(bytes(damaged))

    dest = tmp_path / "models" / "dest"
    with pytest.raises(TamperedArtifact, match=r"model\.bin: sha256 .* != "):
        repo.pull(digest, dest, oci_digest=pushed["oci_digest"])
    assert not dest.exists() and not list(dest.parent.glob(".dest.*"))

    done = fetch(f"{registry.uri('models/damaged')}@{pushed['oci_digest']}", digest, dest, "--insecure")
    assert done.returncode == 3, done.stderr
    assert f"refusing the artifact {digest}" in done.stderr and "model.bin" in done.stderr
    assert not dest.exists() and not list(dest.parent.glob(".dest.*"))


def test_a_manifest_whose_layer_does_not_match_is_refused(registry: OciRegistry, tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=4)
    repo = OciRepository(registry.uri("models/swapped"), insecure=True)
    pushed = push(repo, directory, digest, raw)
    base = f"{registry.url}/v2/models/swapped"
    document = httpx.get(f"{base}/manifests/{pushed['oci_digest']}", headers={"Accept": oci.OCI_MANIFEST}).json()
    layers = {x["annotations"][oci.TITLE]: x for x in document["layers"]}
    layers["model.bin"].update(digest=layers["README.md"]["digest"], size=layers["README.md"]["size"])
    body = json.dumps(document).encode()
    put = httpx.put(f"{base}/manifests/swapped", content=body, headers={"Content-Type": oci.OCI_MANIFEST})
    assert put.status_code == 201, put.text
    swapped = "sha256:" + hashlib.sha256(body).hexdigest()

    dest = tmp_path / "dest"
    with pytest.raises(TamperedArtifact, match=r"model\.bin: layer sha256:.* != sha256:"):
        repo.pull(digest, dest, oci_digest=swapped)
    assert not dest.exists()
    with pytest.raises(TamperedArtifact, match="hashes to"):  # our manifest does not hash to another digest
        repo.pull(make_artifact(tmp_path, seed=5)[1], dest, oci_digest=pushed["oci_digest"])
    assert not dest.exists()

    done = fetch(f"{registry.uri('models/swapped')}@{swapped}", digest, dest, "--insecure")
    assert done.returncode == 3, done.stderr
    assert "model.bin: layer" in done.stderr and not dest.exists()


def test_the_init_container_pulls_an_oci_artifact_by_digest(registry: OciRegistry, tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=6)
    pushed = push(OciRepository(registry.uri("models/k8s"), insecure=True), directory, digest, raw)
    for uri in (f"{registry.uri('models/k8s')}@{pushed['oci_digest']}", registry.uri("models/k8s")):
        dest = tmp_path / "models" / uri.rsplit(":", 1)[-1][:12]
        done = fetch(uri, digest, dest, "--insecure")
        assert done.returncode == 0, done.stderr
        assert "verified 4 file(s)" in done.stderr
        assert verify_directory(dest, digest) and (dest / MANIFEST_NAME).read_bytes() == raw
    missing = fetch(registry.uri("models/k8s"), make_artifact(tmp_path, seed=7)[1], tmp_path / "none", "--insecure")
    assert missing.returncode == 1 and "cannot read" in missing.stderr


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_a_registry_that_asks_for_credentials_gets_the_connections(registry: OciRegistry, tmp_path: Path,
                                                                     scheme: str) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=8)
    with auth_front(registry, "robot", "s3cret", scheme=scheme) as front:
        uri = f"oci://{front.host}/models/gated"
        repo = OciRepository(uri, insecure=True, username="robot", password="s3cret")
        assert "s3cret" not in repr(repo)
        pushed = push(repo, directory, digest, raw)
        if scheme == "bearer":
            assert any(scope.endswith(":pull,push") for scope in front.tokens_issued)  # a pull token renewed for push
        assert repo.pull(digest, tmp_path / "pulled") and verify_directory(tmp_path / "pulled", digest)
        with pytest.raises(OciRegistryError, match="wrong or missing credentials|refused access"):
            OciRepository(uri, insecure=True, username="robot", password="wrong").exists(digest)
        with pytest.raises(OciRegistryError, match="wrong or missing credentials|asks for a login"):
            OciRepository(uri, insecure=True).exists(digest)

        env = {**serving_env(), "OCI_USERNAME": "robot", "OCI_PASSWORD": "s3cret"}
        done = fetch(f"{uri}@{pushed['oci_digest']}", digest, tmp_path / "dest", "--insecure", env=env)
        assert done.returncode == 0, done.stderr
        assert "s3cret" not in done.stderr
        anonymous = fetch(uri, digest, tmp_path / "anon", "--insecure")
        assert anonymous.returncode == 1 and not (tmp_path / "anon").exists()


def test_manifest_keys_beyond_path_sha256_and_size_are_carried_as_given(registry: OciRegistry,
                                                                         tmp_path: Path) -> None:
    """Part digests of a large file (the manifest's ``chunks`` and ``chunk_size``) pass through untouched."""
    directory = tmp_path / "chunked"
    directory.mkdir()
    data = random.Random(9).randbytes(8 * MiB + 1000)
    (directory / "weights.bin").write_bytes(data)
    part = 8 * MiB
    document = {"format": "model-delivery/manifest-v2", "chunk_size": part, "files": [{
        "path": "weights.bin", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        "chunks": [hashlib.sha256(data[i:i + part]).hexdigest() for i in range(0, len(data), part)]}]}
    raw, digest = manifest_bytes(document), manifest_digest(document)
    repo = OciRepository(registry.uri("models/chunked"), insecure=True)
    pushed = push(repo, directory, digest, raw)
    repo.pull(digest, tmp_path / "pulled", oci_digest=pushed["oci_digest"])
    assert (tmp_path / "pulled" / MANIFEST_NAME).read_bytes() == raw
    done = fetch(f"{registry.uri('models/chunked')}@{pushed['oci_digest']}", digest, tmp_path / "k8s", "--insecure")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "k8s" / MANIFEST_NAME).read_bytes() == raw


@pytest.mark.parametrize(("uri", "expected"), [
    pytest.param("oci://registry.example/models", ("registry.example", "models"), id="host"),
    pytest.param("oci://127.0.0.1:5000/team/models/tiny", ("127.0.0.1:5000", "team/models/tiny"), id="port-and-path"),
    pytest.param("oci://localhost:5000/a.b_c-d/e__f/", ("localhost:5000", "a.b_c-d/e__f"), id="separators"),
    pytest.param("s3://bucket/models", "not an oci:// URI", id="other-scheme"),
    pytest.param("oci:///models", "names no registry host", id="no-host"),
    pytest.param("oci://user:pw@host/models", "names no registry host", id="credentials-in-uri"),
    pytest.param("oci://host:port/models", "invalid port", id="bad-port"),
    pytest.param("oci://host", "not a valid OCI repository name", id="no-repository"),
    pytest.param("oci://host/Models", "not a valid OCI repository name", id="uppercase"),
    pytest.param("oci://host/models:v1", "without a tag, digest", id="tag"),
    pytest.param("oci://host/models@sha256:" + "0" * 64, "without a tag, digest", id="digest"),
])
def test_oci_uris(uri: str, expected: tuple[str, str] | str) -> None:
    if isinstance(expected, tuple):
        assert parse_oci_uri(uri) == expected
    else:
        with pytest.raises(ValueError, match=expected) as raised:
            parse_oci_uri(uri)
        assert "Fix: " in str(raised.value)


@pytest.mark.parametrize(("path", "media_type"), [
    pytest.param("model.safetensors", oci.WEIGHT, id="weights"),
    pytest.param("model.joblib", oci.WEIGHT, id="unknown-is-weights"),
    pytest.param("config.json", oci.WEIGHT_CONFIG, id="json"),
    pytest.param("tokenizer/merges.txt", oci.WEIGHT_CONFIG, id="tokenizer"),
    pytest.param("LICENSE", oci.DOC, id="license"),
    pytest.param("docs/usage.md", oci.DOC, id="markdown"),
    pytest.param("train.py", oci.CODE, id="code"),
    pytest.param("eval.csv", oci.DATASET, id="dataset"),
])
def test_layer_media_types_follow_modelpack(path: str, media_type: str) -> None:
    assert layer_media_type(path) == media_type


def test_the_init_container_reads_the_layout_the_store_writes() -> None:
    spec = importlib.util.spec_from_file_location("fetch_artifact", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert (script.OCI_MANIFEST, script.MANIFEST_MEDIA_TYPE, script.TITLE, script.TAG_PREFIX) == (
        oci.OCI_MANIFEST, oci.MANIFEST_MEDIA_TYPE, oci.TITLE, oci.TAG_PREFIX)
    assert (script.OCI_INDEX, script.BUNDLE_MEDIA_TYPE) == (oci.OCI_INDEX, oci.BUNDLE_MEDIA_TYPE)


def _public_key_file(base: Path, name: str, curve: ec.EllipticCurve) -> tuple[bytes, Path]:
    """An EC key: its private PEM, and its public PEM as a file (what the pod's ConfigMap carries)."""
    key = ec.generate_private_key(curve)
    path = base / f"{name}.pub"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), path


def test_a_signature_is_attached_as_a_sigstore_bundle_referrer_and_verified_by_the_init_container(
        registry: OciRegistry, tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=10)
    private, public = _public_key_file(tmp_path, "signing", ec.SECP256R1())
    _, other = _public_key_file(tmp_path, "other", ec.SECP384R1())
    bundle = sign_directory(directory, private)
    repo = OciRepository(registry.uri("models/signed"), insecure=True)
    pushed = push(repo, directory, digest, raw)
    referrer = repo.attach_signature(digest, pushed["oci_digest"], bundle)
    assert repo.attach_signature(digest, pushed["oci_digest"], bundle) == referrer  # again: the same, listed once

    base = f"{registry.url}/v2/models/signed"
    index = httpx.get(f"{base}/manifests/sha256-{pushed['oci_digest'].removeprefix('sha256:')}",
                      headers={"Accept": oci.OCI_INDEX}).json()  # the referrers tag schema (no referrers API here)
    assert [(x["digest"], x["artifactType"]) for x in index["manifests"]] == [(referrer, oci.BUNDLE_MEDIA_TYPE)]
    document = httpx.get(f"{base}/manifests/{referrer}", headers={"Accept": oci.OCI_MANIFEST}).json()
    assert document["artifactType"] == document["layers"][0]["mediaType"] == oci.BUNDLE_MEDIA_TYPE
    assert document["subject"]["digest"] == pushed["oci_digest"]
    assert document["config"]["mediaType"] == oci.EMPTY_MEDIA_TYPE
    assert httpx.get(f"{base}/blobs/{document['layers'][0]['digest']}").content == bundle
    assert repo.pull(digest, tmp_path / "pulled", oci_digest=pushed["oci_digest"])  # the artifact is unchanged

    uri = f"{registry.uri('models/signed')}@{pushed['oci_digest']}"
    done = fetch(uri, digest, tmp_path / "k8s", "--insecure", "--signing", "required", "--public-key", str(public))
    assert done.returncode == 0, done.stderr
    assert "signature verified (key method, the referrers of" in done.stderr
    assert verify_directory(tmp_path / "k8s", digest)
    by_tag = fetch(registry.uri("models/signed"), digest, tmp_path / "by-tag", "--insecure", "--signing", "required",
                   "--public-key", str(public))
    assert by_tag.returncode == 0, by_tag.stderr

    wrong = fetch(uri, digest, tmp_path / "wrong", "--insecure", "--signing", "required", "--public-key", str(other))
    assert wrong.returncode == 3, wrong.stderr
    assert "signature wrong-key" in wrong.stderr and not (tmp_path / "wrong").exists()


def test_an_unsigned_oci_artifact_is_refused_when_signing_is_required_and_served_when_optional(
        registry: OciRegistry, tmp_path: Path) -> None:
    directory, digest, raw = make_artifact(tmp_path, seed=11)
    _, public = _public_key_file(tmp_path, "signing", ec.SECP256R1())
    pushed = push(OciRepository(registry.uri("models/unsigned"), insecure=True), directory, digest, raw)
    uri = f"{registry.uri('models/unsigned')}@{pushed['oci_digest']}"
    refused = fetch(uri, digest, tmp_path / "required", "--insecure", "--signing", "required", "--public-key",
                    str(public))
    assert refused.returncode == 3, refused.stderr
    assert "signature unsigned" in refused.stderr and not (tmp_path / "required").exists()
    optional = fetch(uri, digest, tmp_path / "optional", "--insecure", "--signing", "optional", "--public-key",
                     str(public))
    assert optional.returncode == 0 and "served unsigned" in optional.stderr


def test_a_bundle_attached_to_another_artifact_does_not_sign_this_one(registry: OciRegistry, tmp_path: Path) -> None:
    """A referrer names its subject: the bundle of one artifact, listed under another's tag, is not taken."""
    private, public = _public_key_file(tmp_path, "signing", ec.SECP256R1())
    repo = OciRepository(registry.uri("models/mixed"), insecure=True)
    first, second = make_artifact(tmp_path, seed=12), make_artifact(tmp_path, seed=13)
    pushed = [push(repo, *artifact) for artifact in (first, second)]
    referrer = repo.attach_signature(first[1], pushed[0]["oci_digest"], sign_directory(first[0], private))
    descriptor = {"mediaType": oci.OCI_MANIFEST, "digest": referrer, "size": 1, "artifactType": oci.BUNDLE_MEDIA_TYPE}
    repo._list_referrer(pushed[1]["oci_digest"], descriptor)  # listed under the second, about the first
    done = fetch(f"{registry.uri('models/mixed')}@{pushed[1]['oci_digest']}", second[1], tmp_path / "dest",
                 "--insecure", "--signing", "required", "--public-key", str(public))
    assert done.returncode == 3 and "signature unsigned" in done.stderr


def test_staging_pushes_the_stores_signature_with_the_artifact(registry: OciRegistry, tmp_path: Path) -> None:
    """``push_stored`` (the Kubernetes target's staging) attaches the bundle the store keeps; unsigned: none."""
    private, public = _public_key_file(tmp_path, "signing", ec.SECP256R1())
    store = ArtifactStore(f"file://{tmp_path}/store")
    signed, unsigned = (store.put_directory("tiny", make_artifact(tmp_path, seed)[0]).digest for seed in (14, 15))
    store.write_text(store.layout.signature("tiny", signed),
                     sign_directory(store.fetch("tiny", signed, tmp_path / "fetched"), private).decode())
    repo = OciRepository(registry.uri("models/staged"), insecure=True)
    pushed = oci.push_stored(store, "tiny", signed, repo)
    assert pushed["signature"] is not None and oci.push_stored(store, "tiny", unsigned, repo)["signature"] is None
    done = fetch(f"{registry.uri('models/staged')}@{pushed['oci_digest']}", signed, tmp_path / "k8s", "--insecure",
                 "--signing", "required", "--public-key", str(public))
    assert done.returncode == 0 and "signature verified" in done.stderr, done.stderr
