"""Artifact signatures (OpenSSF model-signing, offline): the primitives, the build, and the local and Ansible
targets refusing what is unsigned, altered or signed by another key, while production keeps serving.

Keys are real EC keys made here; the build's key reaches the code through an ``AIRFLOW_CONN_*`` variable.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from model_delivery.deploy import Candidate
from model_delivery.deploy.ansible.target import AnsibleTarget
from model_delivery.deploy.local.spec import LocalTargetSpec
from model_delivery.deploy.local.target import LocalTarget
from model_delivery.exceptions import InvalidModelSpec, SignatureRefused
from model_delivery.settings import Settings
from model_delivery.signing import (
    SigningNotConfigured,
    public_key_fingerprint,
    sign_artifact,
    sign_directory,
    verify_directory,
)
from model_delivery.spec import SigningSpec, load_spec
from model_delivery.store import ArtifactStore
from model_server.manifest import MANIFEST_NAME
from tests.helpers.models import copy_models, edit_spec, free_port
from tests.unit.model_delivery.test_local_target import infer

if TYPE_CHECKING:

    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"
CONN = "AIRFLOW_CONN_MODEL_DELIVERY_SIGNING"


def _ec_key(curve: ec.EllipticCurve | None = None) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            key.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.fixture(scope="module")
def key() -> tuple[bytes, bytes]:
    """The signing key pair: (private PEM, public PEM)."""
    return _ec_key()


@pytest.fixture(scope="module")
def other_key() -> tuple[bytes, bytes]:
    return _ec_key(ec.SECP384R1())


def _connection(monkeypatch: pytest.MonkeyPatch, private_pem: bytes, **extra: str) -> None:
    monkeypatch.setenv(CONN, json.dumps({"conn_type": "generic", "password": private_pem.decode(), "extra": extra}))


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    directory = tmp_path / "artifact"
    (directory / "sub").mkdir(parents=True)
    (directory / "model.bin").write_bytes(b"\x00weights" * 100)
    (directory / "sub" / "serving.json").write_text('{"flavor": "sklearn"}')
    return directory


# -- the primitives --------------------------------------------------------------------------------------


def test_the_right_key_verifies_and_the_store_manifest_is_not_signed(artifact: Path, key: tuple[bytes, bytes]) -> None:
    bundle = sign_directory(artifact, key[0])
    (artifact / MANIFEST_NAME).write_text('{"written": "by a fetch"}')  # a fetched directory has it; the build's not

    verify_directory(artifact, bundle, key[1])

    assert json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"] == public_key_fingerprint(key[1])[7:]
    assert b"PRIVATE" not in bundle


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))


def _forge(bundle: bytes) -> bytes:
    import base64

    document = json.loads(bundle)
    signature = document["dsseEnvelope"]["signatures"][0]
    raw = bytearray(base64.b64decode(signature["sig"]))
    raw[12] ^= 1
    signature["sig"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(document).encode()


@pytest.mark.parametrize(("change", "reason", "named"), [
    pytest.param(lambda d, b, k, o: (_flip(d / "model.bin"), b, k[1])[1:], "changed-files", "changed: model.bin",
                 id="file-changed"),
    pytest.param(lambda d, b, k, o: ((d / "extra.py").write_text("x"), b, k[1])[1:], "changed-files",
                 "not signed: extra.py", id="file-added"),
    pytest.param(lambda d, b, k, o: ((d / "sub" / "serving.json").unlink(), b, k[1])[1:], "changed-files",
                 "missing: sub/serving.json", id="file-removed"),
    pytest.param(lambda d, b, k, o: (sign_directory(d, o[0]), k[1]), "wrong-key", "another key", id="other-key"),
    pytest.param(lambda d, b, k, o: (b, o[1]), "wrong-key", "another key", id="verified-with-another-key"),
    pytest.param(lambda d, b, k, o: (_forge(b), k[1]), "bad-signature", "does not verify", id="forged"),
    pytest.param(lambda d, b, k, o: (b"not a bundle", k[1]), "bad-signature", "does not hold", id="garbage"),
])
def test_what_does_not_match_the_signature_is_refused_with_its_reason(
    artifact: Path, key: tuple[bytes, bytes], other_key: tuple[bytes, bytes], change: Any, reason: str, named: str
) -> None:
    bundle = sign_directory(artifact, key[0])
    bundle, public = change(artifact, bundle, key, other_key)

    with pytest.raises(SignatureRefused, match="Fix: ") as refused:
        verify_directory(artifact, bundle, public)

    assert refused.value.reason == reason
    assert named in str(refused.value)


def test_only_ec_keys_sign(artifact: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="not an EC key"):
        sign_directory(artifact, rsa_key)
    with pytest.raises(ValueError, match="secp256k1"):
        sign_directory(artifact, _ec_key(ec.SECP256K1())[0])


def _certificate(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                         crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_the_certificate_method_verifies_against_the_ca_and_refuses_another(artifact: Path) -> None:
    ca_key, other_ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("model-delivery CA", ca_key, None, ca_key, ca=True)
    other_ca = _certificate("someone else's CA", other_ca_key, None, other_ca_key, ca=True)
    leaf = _certificate("release signer", leaf_key, ca, ca_key, ca=False)
    private = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

    bundle = sign_directory(artifact, private, certificate_pem=_pem(leaf))

    verify_directory(artifact, bundle, certificate_chain_pem=_pem(ca))
    with pytest.raises(SignatureRefused) as refused:
        verify_directory(artifact, bundle, certificate_chain_pem=_pem(other_ca))
    assert refused.value.reason == "untrusted-certificate"


# -- the spec --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signing", "error"), [
    pytest.param("required", None, id="shorthand"),
    pytest.param({"mode": "optional", "public_key": "keys/signing.pub"}, None, id="key-file"),
    pytest.param({"mode": "required", "public_key": "keys/absent.pub"}, "does not exist", id="missing-key-file"),
    pytest.param({"mode": "required", "public_key": "../outside.pub"}, "outside the model folder", id="outside"),
    pytest.param("always", "signing.mode", id="unknown-mode"),
])
def test_the_signing_section(tmp_path: Path, key: tuple[bytes, bytes], signing: Any, error: str | None) -> None:
    model_dir = copy_models(tmp_path / "models", (MODEL,)) / MODEL
    (model_dir / "keys").mkdir()
    (model_dir / "keys" / "signing.pub").write_bytes(key[1])
    (tmp_path / "models" / "outside.pub").write_bytes(key[1])
    edit_spec(model_dir, lambda spec: spec.update(signing=signing))
    if error:
        with pytest.raises(InvalidModelSpec, match=error):
            load_spec(model_dir)
        return
    spec = load_spec(model_dir)
    assert spec.signing.mode in ("required", "optional") and spec.signing.conn_id == "model_delivery_signing"


# -- the build -------------------------------------------------------------------------------------------


def _build_outputs(builds: Builds, tmp_path: Path) -> Any:
    from model_delivery.build import BuildOutputs

    work = tmp_path / "work"
    shutil.copytree(builds.v1.model_dir, work / "model")
    (work / "data").mkdir()
    data = {name: Path(shutil.copy(path, work / "data" / f"{name}.csv"))
            for name, path in (("train", builds.v1.train_csv), ("eval", builds.v1.eval_csv))}
    return BuildOutputs(work_dir=work, model_dir=work / "model", data=data)


def _release_context(tmp_path: Path, signing: Any) -> Any:
    from model_delivery.release import ReleaseContext

    models = copy_models(tmp_path / "models", (MODEL,))
    edit_spec(models / MODEL, lambda spec: spec.update(signing=signing))
    settings = Settings(home=tmp_path / "home", models_dir=models, artifact_root=f"file://{tmp_path / 'store'}",
                        artifact_conn_id=None, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    lines: list[str] = []
    rc = ReleaseContext(model=MODEL, run_id="signed-build", dag_id=f"release__{MODEL}",
                        log=lambda fmt, *args: lines.append(fmt % args), settings=settings)
    return rc, lines


def test_a_required_signature_is_made_by_the_build_with_the_connections_key(
    builds: Builds, tmp_path: Path, key: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_delivery.release import build

    _connection(monkeypatch, key[0])
    rc, lines = _release_context(tmp_path, "required")

    result = build(rc, outputs=_build_outputs(builds, tmp_path))

    assert result["digest"] == builds.v1.digest
    assert result["signed"] is True and result["signer"] == public_key_fingerprint(key[1])
    bundle = rc.store.layout.signature(MODEL, result["digest"])
    assert result["signature"] == str(bundle)
    fetched = rc.store.fetch(MODEL, result["digest"], tmp_path / "fetched")
    verify_directory(fetched, bundle.read_bytes(), key[1])
    secret = key[0].decode().splitlines()[1]
    assert secret not in json.dumps(result) and not any(secret in line for line in lines)


def test_a_required_signature_without_a_key_fails_the_build_naming_the_connection(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_delivery.release import build

    monkeypatch.delenv(CONN, raising=False)
    rc, _ = _release_context(tmp_path, {"mode": "required", "conn_id": "release_keys"})

    with pytest.raises(SigningNotConfigured, match=r"connection 'release_keys'.*Fix: .*AIRFLOW_CONN_RELEASE_KEYS"):
        build(rc, outputs=_build_outputs(builds, tmp_path))


def test_an_optional_signature_without_a_key_builds_unsigned(builds: Builds, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONN, raising=False)
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    stored = store.put_directory(MODEL, builds.v1.model_dir)

    result = sign_artifact(store, MODEL, stored.digest, builds.v1.model_dir, SigningSpec(mode="optional"))

    assert result == {"signed": False}
    assert not store.layout.signature(MODEL, stored.digest).exists()


# -- the targets: unsigned, altered and other-key artifacts are refused, production untouched -------------------


@pytest.fixture
def signed_store(builds: Builds, tmp_path: Path, key: tuple[bytes, bytes], other_key: tuple[bytes, bytes],
                 monkeypatch: pytest.MonkeyPatch) -> tuple[ArtifactStore, dict[str, str]]:
    """A store with v1 signed by ``key`` (the build's way), and three candidates that must be refused."""
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    _connection(monkeypatch, key[0])
    required = SigningSpec(mode="required")
    digests = {"signed": store.put_directory(MODEL, builds.v1.model_dir).digest}
    sign_artifact(store, MODEL, digests["signed"], builds.v1.model_dir, required)

    digests["unsigned"] = store.put_directory(MODEL, builds.v2.model_dir).digest

    # signed, then one file changed and stored again beside the original's signature
    altered = tmp_path / "altered"
    shutil.copytree(builds.v1.model_dir, altered)
    bundle = sign_directory(altered, key[0])
    with open(altered / "serving.json", "a") as handle:
        handle.write("\n")
    digests["altered"] = store.put_directory(MODEL, altered).digest
    store.write_text(store.layout.signature(MODEL, digests["altered"]), bundle.decode())

    other = tmp_path / "other"
    shutil.copytree(builds.v2.model_dir, other)
    (other / "note.txt").write_text("signed by someone else\n")
    digests["other-key"] = store.put_directory(MODEL, other).digest
    store.write_text(store.layout.signature(MODEL, digests["other-key"]), sign_directory(other, other_key[0]).decode())
    return store, digests


REFUSED = [
    pytest.param("unsigned", "unsigned", id="unsigned"),
    pytest.param("altered", "changed-files", id="tampered"),
    pytest.param("other-key", "wrong-key", id="other-key"),
]


def _local_target(store: ArtifactStore, state_dir: Path, model_dir: Path, signing: SigningSpec) -> LocalTarget:
    config = LocalTargetSpec(port=free_port(), ready_timeout_seconds=60)
    return LocalTarget(MODEL, config, state_dir, store, signing=signing, model_dir=model_dir)


@pytest.fixture
def production(signed_store: tuple[ArtifactStore, dict[str, str]], state_dir: Path, tmp_path: Path,
               key: tuple[bytes, bytes]) -> tuple[LocalTarget, dict[str, str]]:
    """A local target whose production is the signed v1, verified with the public key file of the spec."""
    store, digests = signed_store
    model_dir = tmp_path / "model"
    (model_dir / "keys").mkdir(parents=True)
    (model_dir / "keys" / "signing.pub").write_bytes(key[1])
    target = _local_target(store, state_dir, model_dir, SigningSpec(mode="required", public_key="keys/signing.pub"))
    staged = target.stage(Candidate(MODEL, "1", digests["signed"]), "run-1")
    assert staged["signature"] == "verified" and infer(staged["port"]) == (200, digests["signed"])
    target.shift("run-1")
    return target, digests


@pytest.mark.parametrize(("candidate", "reason"), REFUSED)
def test_the_local_target_refuses_and_production_keeps_serving(
    production: tuple[LocalTarget, dict[str, str]], state_dir: Path, candidate: str, reason: str
) -> None:
    target, digests = production

    with pytest.raises(SignatureRefused, match="Fix: ") as refused:
        target.stage(Candidate(MODEL, "2", digests[candidate]), "run-2")

    assert refused.value.reason == reason
    assert digests[candidate] in str(refused.value)
    status = target.status()
    assert status["candidates"].get("run-2") is None
    assert status["active"]["digest"] == digests["signed"]
    assert infer(target.config.port) == (200, digests["signed"])
    assert not list((state_dir / "logs").glob("v2-*"))  # no server was started for it


def test_the_local_target_verifies_with_the_connections_public_key_when_the_spec_names_no_file(
    signed_store: tuple[ArtifactStore, dict[str, str]], state_dir: Path, tmp_path: Path, key: tuple[bytes, bytes],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    store, digests = signed_store
    _connection(monkeypatch, key[0], public_key=key[1].decode())  # the same connection, its extra public_key
    target = _local_target(store, state_dir, tmp_path, SigningSpec(mode="required"))

    staged = target.stage(Candidate(MODEL, "1", digests["signed"]), "run-1")

    assert staged["signer"] == public_key_fingerprint(key[1])
    assert infer(staged["port"]) == (200, digests["signed"])
    with pytest.raises(SignatureRefused, match="wrong-key"):
        target.stage(Candidate(MODEL, "3", digests["other-key"]), "run-3")


def test_signing_required_with_nothing_to_verify_with_refuses(
    signed_store: tuple[ArtifactStore, dict[str, str]], state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, digests = signed_store  # the connection holds only the private key: a target does not read it
    target = _local_target(store, state_dir, tmp_path, SigningSpec(mode="required"))

    with pytest.raises(SignatureRefused, match=r"nothing to verify with.*Fix: .*signing.public_key") as refused:
        target.stage(Candidate(MODEL, "1", digests["signed"]), "run-1")
    assert refused.value.reason == "no-trust"
    assert target.status()["candidates"] == {}


# -- the Ansible target: refused on the controller, before any host gets a file -----------------------------------


def _ansible_target(tmp_path: Path, store_root: str, public_key: bytes) -> AnsibleTarget:
    import sys

    import yaml

    from model_delivery.deploy import get_target

    models = copy_models(tmp_path / "models", (MODEL,))
    model_dir = models / MODEL
    inventory = {"all": {"children": {"model_servers": {"hosts": {"host1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "model_server_root": str(tmp_path / "host1"), "model_server_port": 1}}}}}}
    (model_dir / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (model_dir / "signing.pub").write_bytes(public_key)
    edit_spec(model_dir, lambda spec: spec.update(
        signing={"mode": "required", "public_key": "signing.pub"},
        deploy={**spec["deploy"], "target": "ansible", "ansible": {
            "inventory": "inventory.yml",
            "load_balancer": {"runtime_api": "/run/haproxy/admin.sock", "front_url": "http://127.0.0.1:8600"}}}))
    settings = Settings(home=tmp_path / "home", models_dir=models, artifact_root=store_root, artifact_conn_id=None,
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    target = get_target(load_spec(model_dir), settings, ArtifactStore(store_root))
    assert isinstance(target, AnsibleTarget)
    return target


@pytest.mark.parametrize(("candidate", "reason"), REFUSED)
def test_the_ansible_target_refuses_before_any_host_is_touched(
    signed_store: tuple[ArtifactStore, dict[str, str]], tmp_path: Path, key: tuple[bytes, bytes], candidate: str,
    reason: str
) -> None:
    store, digests = signed_store
    target = _ansible_target(tmp_path, str(store.root), key[1])

    with pytest.raises(SignatureRefused) as refused:
        target.stage(Candidate(MODEL, "2", digests[candidate]), "run-2")

    assert refused.value.reason == reason
    assert not (tmp_path / "host1").exists()  # no playbook ran
    assert target.status()["runs"] == {}  # nothing recorded as staged


def test_the_ansible_target_hands_a_verified_artifact_to_its_playbooks(
    signed_store: tuple[ArtifactStore, dict[str, str]], tmp_path: Path, key: tuple[bytes, bytes]
) -> None:
    store, digests = signed_store
    target = _ansible_target(tmp_path, str(store.root), key[1])

    release = target._release_vars({"version": "1", "digest": digests["signed"]})["model_delivery_release"]

    assert Path(release["artifact_src"], MANIFEST_NAME).is_file()
    # putting back what served before is not refused, even unsigned (it was accepted when it was deployed)
    target._release_vars({"version": "2", "digest": digests["unsigned"]}, check_signature=False)


# -- the host's side: md_supervise.py install-artifact, as the role runs it -------------------------------------


@pytest.mark.parametrize(("candidate", "refusal"), [
    pytest.param("signed", None, id="right-key"),
    *(pytest.param(name, reason, id=case.id) for case in REFUSED for name, reason in [case.values]),
])
def test_the_host_supervisor_installs_only_a_verified_signed_copy(
    signed_store: tuple[ArtifactStore, dict[str, str]], tmp_path: Path, key: tuple[bytes, bytes], candidate: str,
    refusal: str | None
) -> None:
    from tests.helpers.host_runtime import install_artifact, make_runtime

    store, digests = signed_store
    digest = digests[candidate]
    incoming = store.fetch(MODEL, digest, tmp_path / "host" / "incoming")  # what the role copies: files + MANIFEST
    bundle = store.layout.signature(MODEL, digest)
    signature = tmp_path / "host" / "model.sig"
    if bundle.exists():
        signature.write_bytes(bundle.read_bytes())
    (tmp_path / "host" / "signing.pub").write_bytes(key[1])
    dest = tmp_path / "host" / "artifacts" / "a"
    dest.parent.mkdir()

    done = install_artifact(make_runtime(tmp_path / "runtime"), incoming, dest, digest, "--signature", str(signature),
                            "--public-key", str(tmp_path / "host" / "signing.pub"))

    if refusal is None:
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["verified"] == digest and (dest / MANIFEST_NAME).is_file()
        return
    assert done.returncode == 1
    assert f"signature {refusal}" in done.stderr and "Fix: " in done.stderr
    assert not dest.exists() and not incoming.exists()
