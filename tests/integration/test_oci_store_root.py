"""An OCI registry as the artifact store root (``MODEL_DELIVERY_ARTIFACT_ROOT=oci://host:port/repository``), for real.

Debian's docker-registry (CNCF distribution 2.8) on 127.0.0.1 (:mod:`tests.helpers.oci_registry`), no mocks:
``Settings.open_store`` gives an ``OciArtifactStore`` that puts (only the blobs the registry lacks, the OCI
manifest last), finds, lists, verifies and fetches artifacts by digest; a damaged blob is refused and
leaves nothing behind; release records go to the records root; a signature is a referrer; migrate and gc
are refused with the fix; a malformed root is refused naming the setting.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from model_delivery.cli import main as cli_main
from model_delivery.exceptions import DeployFailed, TamperedArtifact
from model_delivery.settings import get_settings
from model_delivery.signing import read_bundle, sign_directory
from model_delivery.store import ArtifactStore, UnsupportedByStore, open_store
from model_delivery.store.oci import OciRegistryError, OciRepository, push_stored, tag_for
from model_delivery.store.oci_store import OciArtifactStore
from model_delivery.store.records import read_records
from model_server.manifest import (
    MANIFEST_NAME,
    build_manifest,
    manifest_bytes,
    manifest_digest,
    verify_directory,
)
from tests.helpers.oci_registry import OciRegistry, auth_front
from tests.helpers.processes import serving_env
from tests.helpers.release import environ

if TYPE_CHECKING:
    pass

pytest_plugins = ("tests.helpers.oci_registry",)  # the module-scoped `registry` fixture
SCRIPT = Path(__file__).resolve().parents[2] / "include" / "kubernetes" / "fetch_artifact.py"
MiB = 1024 * 1024


def make_model(base: Path, seed: int, name: str = "model") -> Path:
    """A few files of content unique to ``seed`` (tests damage blobs, which the registry shares)."""
    rng = random.Random(seed)
    directory = base / f"{name}-{seed}"
    (directory / "tokenizer").mkdir(parents=True)
    (directory / "model.bin").write_bytes(rng.randbytes(2 * MiB))
    (directory / "serving.json").write_text(json.dumps({"flavor": "sklearn", "seed": seed}))
    (directory / "README.md").write_text(f"# model {seed}\n")
    (directory / "tokenizer" / "vocab.txt").write_text("\n".join(str(rng.random()) for _ in range(50)))
    return directory


def oci_store(registry: OciRegistry, home: Path, repository: str = "models") -> OciArtifactStore:
    store = open_store(registry.uri(repository), home=home)
    assert isinstance(store, OciArtifactStore)
    return store


def blob_puts(registry: OciRegistry, since: int) -> list[str]:
    """The digests of the blob uploads the registry completed (PUT .../blobs/uploads/...?digest=) after ``since``."""
    done = []
    for method, path, status in registry.requests()[since:]:
        if method == "PUT" and "/blobs/uploads/" in path and status == 201:
            done.append(urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["digest"][0])
    return done


def test_put_exists_files_of_verify_fetch_by_digest(registry: OciRegistry, tmp_path: Path) -> None:
    source = make_model(tmp_path, seed=1)
    store = oci_store(registry, tmp_path / "home")
    expected = manifest_digest(build_manifest(source))
    assert not store.exists("tiny", expected) and store.files_of("tiny", expected) is None
    with pytest.raises(TamperedArtifact, match="is not in the store at oci://.* build it first"):
        store.read_manifest("tiny", expected)

    before = len(registry.requests())
    stored = store.put_directory("tiny", source)
    # the same manifest, so the same digest, as a file store makes of the same directory
    assert stored.digest == expected == ArtifactStore(f"file://{tmp_path}/files").put_directory("tiny", source).digest
    assert (stored.reused, stored.files, stored.uploaded_files) == (False, 4, 4)
    assert stored.uploaded_bytes == stored.size_bytes == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert stored.uri.startswith(f"{registry.uri('models')}@sha256:")
    writes = [r for r in registry.requests()[before:] if r[0] in ("PUT", "POST")]
    assert writes[-1][:2] == ("PUT", f"/v2/models/manifests/{tag_for(expected)}")  # the OCI manifest last

    assert store.exists("tiny", stored.digest)
    assert store.files_of("tiny", stored.digest) == {
        str(p.relative_to(source)): p.stat().st_size for p in source.rglob("*") if p.is_file()}
    manifest = store.verify("tiny", stored.digest)
    assert store.read_manifest("tiny", stored.digest) == manifest
    dest = store.fetch("tiny", stored.digest, tmp_path / "fetched" / "tiny")
    assert verify_directory(dest, stored.digest)
    assert (dest / MANIFEST_NAME).read_bytes() == manifest_bytes(manifest)
    assert (dest / "model.bin").read_bytes() == (source / "model.bin").read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == [".tiny.verified", "tiny"]  # stamped, no leftovers
    assert store.fetch("tiny", stored.digest, dest) == dest  # again: the stamp holds, nothing pulled

    since = len(registry.requests())
    again = store.put_directory("tiny", source)
    assert (again.digest, again.reused, again.uploaded_files) == (stored.digest, True, 0)
    assert blob_puts(registry, since) == []


def test_a_new_version_changing_one_file_uploads_one_file_blob(registry: OciRegistry, tmp_path: Path) -> None:
    source = make_model(tmp_path, seed=2)
    store = oci_store(registry, tmp_path / "home")
    first = store.put_directory("tiny", source)
    (source / "serving.json").write_text(json.dumps({"flavor": "sklearn", "seed": 2, "version": 2}))
    changed = "sha256:" + build_manifest(source)["files"][2]["sha256"]
    assert build_manifest(source)["files"][2]["path"] == "serving.json"

    since = len(registry.requests())
    second = store.put_directory("tiny", source)
    assert second.digest != first.digest and not second.reused
    assert (second.uploaded_files, second.uploaded_bytes) == (1, (source / "serving.json").stat().st_size)
    uploaded = blob_puts(registry, since)
    # the changed file, our new MANIFEST.json (its digest is the artifact digest) and the ModelPack config
    assert len(uploaded) == 3 and uploaded[0] == changed and second.digest in uploaded
    assert store.verify("tiny", first.digest) and store.verify("tiny", second.digest)  # both versions whole


def test_an_interrupted_put_is_no_artifact_and_the_next_put_uploads_only_what_is_missing(
        registry: OciRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_model(tmp_path, seed=3)
    store = oci_store(registry, tmp_path / "home")
    digest = manifest_digest(build_manifest(source))

    def killed(*_: Any, **__: Any) -> str:
        raise RuntimeError("the worker died before the OCI manifest was pushed")

    with monkeypatch.context() as patched:  # the one fault injected: the crash; the registry is real
        patched.setattr(OciRepository, "_put_manifest", killed)
        with pytest.raises(RuntimeError, match="worker died"):
            store.put_directory("tiny", source)
    assert not store.exists("tiny", digest) and store.files_of("tiny", digest) is None  # blobs alone are nothing
    with pytest.raises(TamperedArtifact, match="not in the store"):
        store.fetch("tiny", digest, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()

    since = len(registry.requests())
    stored = store.put_directory("tiny", source)
    assert (stored.digest, stored.uploaded_files) == (digest, 0)
    assert blob_puts(registry, since) == [] and store.verify("tiny", digest)


def test_a_damaged_blob_is_refused_by_verify_fetch_and_put_and_nothing_is_left(registry: OciRegistry,
                                                                               tmp_path: Path) -> None:
    source = make_model(tmp_path, seed=4)
    store = oci_store(registry, tmp_path / "home")
    stored = store.put_directory("tiny", source)
    entry = next(e for e in store.read_manifest("tiny", stored.digest)["files"] if e["path"] == "model.bin")
    data = registry.blob_data("sha256:" + entry["sha256"])
    damaged = bytearray(data.read_bytes())
    damaged[1000] ^= 0xFF
    data.write_bytes(bytes(damaged))

    with pytest.raises(TamperedArtifact, match=r"does not match its manifest: model\.bin: sha256 "):
        store.verify("tiny", stored.digest)
    dest = tmp_path / "serving" / "tiny"
    with pytest.raises(TamperedArtifact, match=r"model\.bin: sha256 .* != "):
        store.fetch("tiny", stored.digest, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial directory, no stamp
    with pytest.raises(TamperedArtifact, match="already holds .* but that copy is damaged"):
        store.put_directory("tiny", source)


def test_records_go_to_the_records_root_and_nothing_changes_for_a_file_root(registry: OciRegistry,
                                                                            tmp_path: Path) -> None:
    home = tmp_path / "home"
    with environ({"MODEL_DELIVERY_HOME": str(home), "MODEL_DELIVERY_ARTIFACT_ROOT": registry.uri("models")}):
        store = get_settings().open_store()
    assert isinstance(store, OciArtifactStore)
    record = store.release_dir("tiny", "manual__2026-01-01T00:00:00+00:00") / "release.json"
    store.write_json(record, {"model": "tiny", "finished_at": "2026-01-01T00:00:00+00:00"})
    on_disk = home / "records" / "tiny" / "releases" / "manual__2026-01-01T00_00_00_00_00" / "release.json"
    assert json.loads(on_disk.read_text())["model"] == "tiny"
    assert [r["model"] for r in read_records(store, "tiny")] == ["tiny"]
    assert store.layout.models() == ["tiny"]
    assert str(store.layout.metrics()) == f"file://{home}/records/_delivery_metrics"

    elsewhere = tmp_path / "elsewhere"
    with environ({"MODEL_DELIVERY_HOME": str(home), "MODEL_DELIVERY_ARTIFACT_ROOT": registry.uri("models"),
                  "MODEL_DELIVERY_RECORDS_ROOT": f"file://{elsewhere}"}):
        assert str(get_settings().open_store().release_dir("tiny", "r1")) == f"file://{elsewhere}/tiny/releases/r1"
        with environ({"MODEL_DELIVERY_RECORDS_ROOT": registry.uri("records")}), \
                pytest.raises(ValueError, match="MODEL_DELIVERY_RECORDS_ROOT=.*Fix: "):
            get_settings().open_store()

    files = f"file://{tmp_path}/files"  # a file root keeps its records beside its artifacts, as before
    with environ({"MODEL_DELIVERY_HOME": str(home), "MODEL_DELIVERY_ARTIFACT_ROOT": files}):
        plain = get_settings().open_store()
    assert type(plain) is ArtifactStore
    assert str(plain.release_dir("tiny", "r1")) == str(ArtifactStore(files).release_dir("tiny", "r1"))
    assert str(plain.release_dir("tiny", "r1")) == f"{files}/tiny/releases/r1"


def test_a_file_root_with_a_records_root_keeps_its_artifacts_and_moves_only_records(tmp_path: Path) -> None:
    files, elsewhere = f"file://{tmp_path}/files", tmp_path / "elsewhere"
    with environ({"MODEL_DELIVERY_HOME": str(tmp_path / "home"), "MODEL_DELIVERY_ARTIFACT_ROOT": files,
                  "MODEL_DELIVERY_RECORDS_ROOT": f"file://{elsewhere}"}):
        store = get_settings().open_store()
    stored = store.put_directory("tiny", make_model(tmp_path, seed=6))
    assert (tmp_path / "files" / "tiny" / "sha256" / stored.digest.removeprefix("sha256:") / MANIFEST_NAME).exists()
    store.write_json(store.release_dir("retired", "r1") / "release.json", {"model": "retired"})
    assert (elsewhere / "retired" / "releases" / "r1" / "release.json").exists()
    assert not (tmp_path / "files" / "retired").exists()
    assert store.layout.models() == ["retired", "tiny"]  # artifacts and records both count


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_the_store_connection_gives_the_registry_its_credentials(registry: OciRegistry, tmp_path: Path,
                                                                 scheme: str) -> None:
    source = make_model(tmp_path, seed=7)
    with auth_front(registry, "robot", "s3cret", scheme=scheme) as front:
        root = f"oci://{front.host}/gated"
        conn = {"conn_type": "generic", "login": "robot", "password": "s3cret", "extra": {"insecure": True}}
        with environ({"MODEL_DELIVERY_HOME": str(tmp_path / "home"), "MODEL_DELIVERY_ARTIFACT_ROOT": root,
                      "MODEL_DELIVERY_ARTIFACT_CONN_ID": "oci_store", "AIRFLOW_CONN_OCI_STORE": json.dumps(conn)}):
            store = get_settings().open_store()
            stored = store.put_directory("tiny", source)
            assert store.fetch("tiny", stored.digest, tmp_path / "fetched") and store.verify("tiny", stored.digest)
            assert "s3cret" not in repr(store) + repr(store.repository)
        anonymous = open_store(root, home=tmp_path / "home")
        with pytest.raises(OciRegistryError, match="wrong or missing credentials|asks for a login"):
            anonymous.exists("tiny", stored.digest)


@pytest.mark.parametrize(("root", "expected"), [
    pytest.param("oci://127.0.0.1:5000", "not a valid OCI repository name", id="no-repository"),
    pytest.param("oci://127.0.0.1:5000/", "not a valid OCI repository name", id="empty-repository"),
    pytest.param("oci:///models", "names no registry host", id="no-host"),
    pytest.param("oci://registry.example/Models", "not a valid OCI repository name", id="uppercase"),
    pytest.param("oci://registry.example/models:v1", "without a tag, digest", id="tag"),
])
def test_a_malformed_oci_root_is_refused_naming_the_setting_and_the_fix(tmp_path: Path, root: str,
                                                                         expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as raised:
        open_store(root, home=tmp_path)
    assert "MODEL_DELIVERY_ARTIFACT_ROOT" in str(raised.value) and "Fix: write the store as oci://" in str(raised.value)
    with pytest.raises(ValueError, match="Fix: open the store with model_delivery.store.open_store"):
        ArtifactStore("oci://registry.example/models")


def test_migrate_and_gc_are_refused_with_the_fix(registry: OciRegistry, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = oci_store(registry, tmp_path / "home")
    with pytest.raises(UnsupportedByStore, match="nothing to migrate"):
        store.migrate()
    with pytest.raises(UnsupportedByStore, match="registry garbage-collect"):
        store.collect_garbage({}, dry_run=True)
    with environ({"MODEL_DELIVERY_HOME": str(tmp_path / "home"), "MODEL_DELIVERY_ARTIFACT_ROOT": registry.uri("models")}):
        assert cli_main(["store", "migrate"]) == 2
    assert "error: " in capsys.readouterr().err


def test_a_signature_is_a_referrer_the_signing_code_and_the_init_container_find(registry: OciRegistry,
                                                                                tmp_path: Path) -> None:
    source = make_model(tmp_path, seed=5)
    store = oci_store(registry, tmp_path / "home")
    stored = store.put_directory("tiny", source)
    assert read_bundle(store, "tiny", stored.digest) is None
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = tmp_path / "signing.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    bundle = sign_directory(source, private)
    where = store.layout.signature("tiny", stored.digest)  # what sign_artifact writes, through the store
    store.write_text(where, bundle.decode())
    assert str(where).startswith(f"{registry.uri('models')}:{tag_for(stored.digest)}")
    assert read_bundle(store, "tiny", stored.digest) == bundle

    done = subprocess.run([sys.executable, str(SCRIPT), "--uri", registry.uri("models"), "--digest", stored.digest,
                           "--dest", str(tmp_path / "k8s"), "--insecure", "--signing", "required", "--public-key",
                           str(public)], capture_output=True, text=True, env=serving_env(), timeout=120)
    assert done.returncode == 0 and "signature verified" in done.stderr, done.stderr

    since = len(registry.requests())
    same = push_stored(store, "tiny", stored.digest, OciRepository(registry.uri("models"), insecure=True))
    assert (same["uploaded"], same["signature"] is not None) == (0, True) and blob_puts(registry, since) == []
    other = push_stored(store, "tiny", stored.digest, OciRepository(registry.uri("staging/tiny"), insecure=True))
    assert other["uploaded_files"] == 4 and other["signature"] is not None


@pytest.mark.integration
def test_a_release_of_the_example_model_stores_fetches_and_verifies_in_the_registry(
        registry: OciRegistry, tmp_path: Path, airflow_db: Path) -> None:
    """``release__breast_cancer`` with ``dag.test()`` and an ``oci://`` artifact root: built, pushed, evaluated,
    deployed from the registry and recorded under the records root."""
    from tests.helpers.release import release_env, run_release, task_states

    since = len(registry.requests())
    with release_env(tmp_path, ("breast_cancer",)), \
            environ({"MODEL_DELIVERY_ARTIFACT_ROOT": registry.uri("release")}):
        dag_run = run_release("breast_cancer", {"reason": "oci store root"})
        states = task_states(dag_run)
        store = get_settings().open_store()
        assert dag_run.state == "success", states
        assert isinstance(store, OciArtifactStore)
        record = json.loads((store.release_dir("breast_cancer", dag_run.run_id) / "release.json").read_text())
        digest = record["artifact"]["digest"]
        assert record["outcome"] == "released"
        assert record["artifact"]["uri"].startswith(f"{registry.uri('release')}@sha256:")
        assert store.exists("breast_cancer", digest) and store.verify("breast_cancer", digest)
    assert (tmp_path / "home" / "records" / "breast_cancer" / "releases").is_dir()
    assert not (tmp_path / "home" / "artifacts").exists()  # nothing went to the default file store
    paths = [path for _, path, _ in registry.requests()[since:]]
    assert f"/v2/release/manifests/{tag_for(digest)}" in paths
    assert any(p.startswith("/v2/release/blobs/sha256:") for p in paths)  # fetched (evaluate, deploy) from it


def test_ansible_push_from_an_oci_root_fetches_verified_and_the_host_installs_it(registry: OciRegistry,
                                                                                tmp_path: Path) -> None:
    """Up to ``ansible-playbook``: the Ansible target fetches the artifact from the registry (verified) into its
    cache and packs the small files; a host given them installs it (``install-artifact``, as the role runs it).
    Pull is refused naming the fix: hosts mount a filesystem store, not a registry."""
    from tests.helpers.host_runtime import install_artifact, make_runtime
    from tests.helpers.models import edit_spec
    from tests.unit.model_delivery.test_ansible_target import _host_receives, ansible_env, make_target

    env = ansible_env(tmp_path, registry.uri("ansible"))
    store = env[1].open_store()
    assert isinstance(store, OciArtifactStore)
    digest = store.put_directory("breast_cancer", make_model(tmp_path, seed=8)).digest
    target = make_target(env)

    release = target._release_vars({"version": "1", "digest": digest})["model_delivery_release"]

    assert release["delivery"]["transfer"] == "push" and "model.bin" in release["delivery"]["bundled"]
    assert verify_directory(release["artifact_src"], digest)  # the controller's cache, fetched from the registry
    host = tmp_path / "host"
    done = install_artifact(make_runtime(tmp_path / "runtime"), _host_receives(release, host), host / "a", digest)
    assert done.returncode == 0, done.stderr
    assert verify_directory(host / "a", digest)

    edit_spec(env[0], lambda spec: spec["deploy"]["ansible"].update(artifact_transfer="pull"))
    with pytest.raises(DeployFailed, match="artifact_transfer is 'pull'.*Fix: use artifact_transfer: push"):
        make_target(env)._release_vars({"version": "1", "digest": digest})
