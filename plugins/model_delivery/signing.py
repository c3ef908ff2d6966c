"""Artifact signatures with OpenSSF ``model-signing``: signed by the build, verified before anything serves.

With ``signing: required`` (or ``optional`` and a key configured) the build signs its output
with an elliptic-curve private key (the ``key`` method) or a key and its X.509 certificate
(the ``certificate`` method), both read from an Airflow connection, and keeps the bundle in
the store beside the artifact (``StoreLayout.signature``). A target verifies the directory it
fetched against that bundle before it starts a server: a missing bundle, a bundle another key
signed, a forged signature, or a file that differs from what was signed is refused with
:class:`~model_delivery.exceptions.SignatureRefused`, and production is left as it was.

Everything here works offline: the key and certificate methods never reach Sigstore. The
artifact's ``MANIFEST.json`` (the store's manifest, written into a fetched directory, not part
of the build output) is left out of what is signed and verified, on both sides alike.

No Airflow import at module level; ``model_signing`` is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import ReleaseFailed, SignatureRefused
from model_server.signature import IGNORED as SIGNED_IGNORED

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from model_delivery.spec import SigningSpec
    from model_delivery.store import ArtifactStore

DEFAULT_CONN_ID = "model_delivery_signing"
IGNORED = SIGNED_IGNORED
"""Paths of an artifact directory that are not signed: the store's manifest, present only once fetched."""
SECRET_DIR = "/dev/shm"  # a private key is written for model_signing's path-based API: in memory where possible


class SigningNotConfigured(ReleaseFailed):
    """Signing is required, but the Airflow connection holding the key is missing or unusable."""


@dataclass(frozen=True)
class SigningKey:
    """A private key (PEM) and, for the certificate method, its certificate and chain. Never logged or pushed.

    :param private_key_pem: an EC private key (P-256, P-384 or P-521) in PEM.
    :param password: the key's password, if it is encrypted.
    :param certificate_pem: the signing certificate (certificate method).
    :param chain_pem: intermediate certificates put in the bundle (certificate method).
    """

    private_key_pem: bytes = field(repr=False)
    password: str | None = field(default=None, repr=False)
    certificate_pem: bytes | None = None
    chain_pem: bytes | None = None


@dataclass(frozen=True)
class Trust:
    """What a target verifies a signature against.

    :param mode: the spec's ``signing.mode``: ``required`` or ``optional`` (``off`` has no Trust).
    :param method: ``key`` (``pem`` is the EC public key) or ``certificate`` (``pem`` is the trusted CA certificates).
    :param source: where the trust came from, named in messages.
    """

    mode: str
    method: str
    pem: bytes
    source: str

    @property
    def signer(self) -> str:
        """The public key's fingerprint (key method), as recorded by the build."""
        return public_key_fingerprint(self.pem) if self.method == "key" else f"certificates of {self.source}"


# -- the two primitives --------------------------------------------------------------------------------


def _hashing() -> Any:
    """The same hashing on both sides: every file (symlinks followed, as the store does) but the manifest."""
    from model_server.signature import hashing_config

    return hashing_config()


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A private temporary directory (0700), in memory when /dev/shm exists, removed on exit."""
    base = SECRET_DIR if os.path.isdir(SECRET_DIR) and os.access(SECRET_DIR, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="md-sign-", dir=base) as tmp:
        yield Path(tmp)


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def sign_directory(directory: Path, private_key_pem: bytes, *, password: str | None = None,
                   certificate_pem: bytes | None = None, chain_pem: bytes | None = None) -> bytes:
    """Sign every file of ``directory`` (but ``MANIFEST.json``) and return the bundle (Sigstore bundle JSON).

    :param directory: the build output, or a fetched artifact.
    :param private_key_pem: an EC private key in PEM (P-256, P-384 or P-521).
    :param password: the key's password, if it is encrypted.
    :param certificate_pem: the signing certificate: signs by the certificate method (the bundle carries it).
    :param chain_pem: intermediate certificates to carry in the bundle (certificate method).
    :raises ValueError: the key is not a supported EC key, or the certificate is not the key's.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from model_signing import signing

    loaded = load_pem_private_key(private_key_pem, password.encode() if password else None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"the private key is {type(loaded).__name__.lstrip('_')}, not an EC key (model-signing signs "
                         "with P-256, P-384 or P-521 keys only)")
    with _scratch() as tmp:
        key = _write(tmp / "key.pem", private_key_pem)
        config = signing.Config().set_hashing_config(_hashing())
        if certificate_pem:
            if password:
                raise ValueError("the certificate method takes an unencrypted key. Fix: store the key without a "
                                 "password in the connection")
            certificate = _write(tmp / "cert.pem", certificate_pem)
            # model_signing 1.1.1 cannot take an empty chain: a certificate issued by the root itself is its own chain
            chain = _write(tmp / "chain.pem", chain_pem) if chain_pem else certificate
            config.use_certificate_signer(private_key=key, signing_certificate=certificate, certificate_chain=[chain])
        else:
            config.use_elliptic_key_signer(private_key=key, password=password)
        config.sign(directory, tmp / "model.sig")
        return (tmp / "model.sig").read_bytes()


def verify_directory(directory: Path, bundle: bytes, public_key_pem: bytes | None = None, *,
                     certificate_chain_pem: bytes | None = None, where: str = "") -> None:
    """Check that ``bundle`` signs exactly the files of ``directory`` (but ``MANIFEST.json``).

    Give ``public_key_pem`` (key method) or ``certificate_chain_pem`` (certificate method: the
    trusted CA certificates).

    :raises SignatureRefused: with ``reason`` ``bad-signature``, ``wrong-key``, ``untrusted-certificate``
        or ``changed-files``, and a message naming what and the fix.
    """
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    where = where or str(directory)
    with _scratch() as tmp:
        config = verifying.Config().set_hashing_config(_hashing())
        if certificate_chain_pem:
            config.use_certificate_verifier(certificate_chain=[_write(tmp / "ca.pem", certificate_chain_pem)])
        elif public_key_pem:
            try:
                config.use_elliptic_key_verifier(public_key=_write(tmp / "key.pub", public_key_pem))
            except ValueError as exc:
                raise SignatureRefused(f"the public key to verify {where} is not usable: {exc}. Fix: give an EC "
                                       "public key in PEM (P-256, P-384 or P-521)", reason="wrong-key") from None
        else:
            raise ValueError("verify_directory needs public_key_pem or certificate_chain_pem")
        try:
            config.verify(directory, _write(tmp / "model.sig", bundle))
        except InvalidSignature:
            raise _refused(where, "bad-signature", "its signature does not verify: the bundle was altered or "
                           "forged") from None
        except ValueError as exc:
            raise _classified(where, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - an unreadable bundle, an untrusted certificate (OpenSSL's errors)
            if type(exc).__name__ == "X509StoreContextError":
                raise _refused(where, "untrusted-certificate", f"its certificate is not trusted ({exc})") from None
            raise _refused(where, "bad-signature", f"its bundle is not a valid signature ({type(exc).__name__}: "
                           f"{str(exc)[:200]})") from None


def _classified(where: str, text: str) -> SignatureRefused:
    if text.startswith("Key mismatch"):
        return _refused(where, "wrong-key", "it was signed by another key than the one this target trusts")
    if text.startswith("Signature mismatch"):
        changed = re.findall(r"Hash mismatch for '([^']+)'", text)
        extra = re.search(r"Extra files found in model '[^']*': ([^\"\]]+)", text)
        missing = re.search(r"Missing files in model '[^']*': ([^\"\]]+)", text)
        parts = [f"changed: {', '.join(changed)}" if changed else "",
                 f"not signed: {extra.group(1).rstrip(chr(39))}" if extra else "",
                 f"missing: {missing.group(1).rstrip(chr(39))}" if missing else ""]
        return _refused(where, "changed-files", f"its files differ from what was signed ({'; '.join(p for p in parts if p)[:600]})")
    return _refused(where, "bad-signature", f"its signature does not hold ({text[:300]})")


_FIXES = {
    "unsigned": "sign it: set signing in the spec and configure the signing connection, then run the release "
                "again (or roll back to a signed version)",
    "wrong-key": "verify with the public key that pairs with the signing connection's private key (signing."
                 "public_key in the spec), or rebuild so it is signed by the current key",
    "changed-files": "do not deploy it; rebuild the model so its files are stored and signed again",
    "bad-signature": "do not deploy it; rebuild the model so it is signed again",
    "untrusted-certificate": "sign with a certificate issued by the CA in signing.certificate_chain, or trust "
                             "that certificate's CA",
}


def _refused(where: str, reason: str, why: str) -> SignatureRefused:
    return SignatureRefused(f"artifact {where} refused ({reason}): {why}. Fix: {_FIXES[reason]}.", reason=reason)


def public_key_fingerprint(pem: bytes) -> str:
    """``sha256:<hex>`` of the public key (SubjectPublicKeyInfo, PEM), as model_signing names a key in its bundle.

    :param pem: a public key, a private key (its public half is taken) or a certificate, in PEM.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public: Any
    if b"CERTIFICATE-----" in pem:
        public = x509.load_pem_x509_certificate(pem).public_key()
    elif b"PRIVATE KEY-----" in pem:
        public = serialization.load_pem_private_key(pem, None).public_key()
    else:
        public = serialization.load_pem_public_key(pem)
    spki = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"sha256:{hashlib.sha256(spki).hexdigest()}"


# -- keys and trust from the spec and Airflow connections ----------------------------------------------


def _connection(conn_id: str) -> Any:
    """The Airflow connection ``conn_id``, or None when it is not defined."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _pem(value: Any) -> bytes | None:
    return value.strip().encode() + b"\n" if isinstance(value, str) and value.strip() else None


def signing_key(config: SigningSpec) -> SigningKey | None:
    """The private key of ``signing.conn_id``: its password field (or extra ``private_key``) holds the PEM;
    extra ``key_password``, ``certificate`` and ``certificate_chain`` are optional. None when not configured.

    Call it inside the build task only: the key stays in this process, and is never logged or returned.
    """
    conn = _connection(config.conn_id)
    if conn is None:
        return None
    extra = conn.extra_dejson or {}
    private = _pem(conn.password) or _pem(extra.get("private_key"))
    if private is None:
        return None
    return SigningKey(private, extra.get("key_password") or None, _pem(extra.get("certificate")),
                      _pem(extra.get("certificate_chain")))


def trust_of(config: SigningSpec, model_dir: Path) -> Trust | None:
    """What a target verifies against: ``signing.public_key`` / ``signing.certificate_chain`` (files in the model
    folder), else the signing connection's extra ``public_key`` / ``certificate_chain`` (never its private key).
    None when signing is off.

    :raises SignatureRefused: signing is on and nothing to verify with is configured (reason ``no-trust``).
    """
    if config.mode == "off":
        return None
    rel = config.certificate_chain if config.method == "certificate" else config.public_key
    if rel:
        return Trust(config.mode, config.method, (model_dir / rel).read_bytes(), f"{model_dir.name}/{rel}")
    conn = _connection(config.conn_id)
    extra = (conn.extra_dejson or {}) if conn is not None else {}
    source = f"Airflow connection {config.conn_id!r}"
    if config.method == "certificate":
        pem = _pem(extra.get("certificate_chain"))
    else:  # never the private key: it is read by the build task only
        pem = _pem(extra.get("public_key"))
    if pem is None:
        what = "signing.certificate_chain" if config.method == "certificate" else "signing.public_key"
        raise SignatureRefused(
            f"signing is {config.mode} for {model_dir.name!r} but nothing to verify with is configured: no {what} in "
            f"the spec and no usable {source}. Fix: put the PEM in the model folder and name it in {what}.",
            reason="no-trust")
    return Trust(config.mode, config.method, pem, source)


def _public_half(private_pem: bytes, password: str | None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem, password.encode() if password else None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- what the build and the targets call ---------------------------------------------------------------


def sign_artifact(store: ArtifactStore, model: str, digest: str, directory: Path, config: SigningSpec,
                  log: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Build: sign ``directory`` (the stored artifact's files) and keep the bundle at the store's signature path.

    :return: ``{"signed": True, "signer": fingerprint, "signing_method": ..., "signature": uri}`` (no key
        material); ``{"signed": False}`` when optional and no key; ``{}`` when signing is off.
    :raises SigningNotConfigured: signing is required and the connection has no key.
    """
    if config.mode == "off":
        return {}
    key = signing_key(config)
    if key is None:
        if config.mode == "optional":
            if log:
                log("signing is optional and connection %s has no key: %s is not signed", config.conn_id, digest)
            return {"signed": False}
        raise SigningNotConfigured(
            f"signing is required for {model!r}, but the Airflow connection {config.conn_id!r} is not defined or "
            "holds no private key. Fix: create it with the EC private key (PEM) in its password field (e.g. "
            f"AIRFLOW_CONN_{config.conn_id.upper()} as JSON), or set signing.conn_id to the connection that has it.")
    if config.method == "certificate" and not key.certificate_pem:
        raise SigningNotConfigured(
            f"signing.method is certificate for {model!r}, but connection {config.conn_id!r} has no 'certificate' in "
            "its extra. Fix: add the signing certificate (PEM) as extra 'certificate', or use method key.")
    try:
        bundle = sign_directory(directory, key.private_key_pem, password=key.password,
                                certificate_pem=key.certificate_pem if config.method == "certificate" else None,
                                chain_pem=key.chain_pem)
        signer = public_key_fingerprint(key.certificate_pem or _public_half(key.private_key_pem, key.password))
    except (ValueError, TypeError) as exc:  # not an EC key, a wrong password, a certificate of another key
        raise SigningNotConfigured(
            f"the key in Airflow connection {config.conn_id!r} cannot sign {model!r}: {type(exc).__name__}: "
            f"{str(exc)[:200]}. Fix: store an EC private key (P-256, P-384 or P-521) in PEM, unencrypted or with "
            "extra 'key_password'.") from None
    dest = store.layout.signature(model, digest)
    store.write_text(dest, bundle.decode())
    if log:
        log("signed %s with %s (%s method); bundle at %s", digest, signer, config.method, dest)
    return {"signed": True, "signer": signer, "signing_method": config.method, "signature": str(dest)}


def read_bundle(store: ArtifactStore, model: str, digest: str) -> bytes | None:
    """The artifact's signature bundle from the store, or None when it has none."""
    path = store.layout.signature(model, digest)
    return path.read_bytes() if path.exists() else None


def required_bundle(store: ArtifactStore, model: str, digest: str, trust: Trust,
                    log: Callable[..., Any] | None = None) -> bytes | None:
    """The artifact's bundle; None (logged) when it has none and signing is ``optional``.

    :raises SignatureRefused: signing is ``required`` and the store has no bundle (reason ``unsigned``).
    """
    bundle = read_bundle(store, model, digest)
    if bundle is None:
        if trust.mode == "required":
            raise _refused(f"{digest} of model {model!r}", "unsigned", "signing is required and the store has no "
                           f"signature for it ({store.layout.signature(model, digest)})")
        if log:
            log("signing is optional: %s has no signature, served unsigned", digest)
    return bundle


def check_artifact(store: ArtifactStore, model: str, digest: str, directory: Path, trust: Trust | None,
                   log: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Target: verify a fetched artifact against its bundle before it is served.

    ``required``: no bundle is refused (``unsigned``); ``optional``: no bundle is served (and
    logged), a bad one refused; no ``trust`` (signing off): nothing is checked.

    :return: ``{"signature": "verified" | "unsigned" | "not-checked", "signer": ...}``.
    :raises SignatureRefused: the artifact must not be served.
    """
    if trust is None:
        return {"signature": "not-checked"}
    bundle = required_bundle(store, model, digest, trust, log=log)
    if bundle is None:
        return {"signature": "unsigned"}
    where = f"{digest} of model {model!r}"
    if trust.method == "certificate":
        verify_directory(directory, bundle, certificate_chain_pem=trust.pem, where=where)
    else:
        verify_directory(directory, bundle, trust.pem, where=where)
    if log:
        log("signature of %s verified against %s (%s)", digest, trust.source, trust.signer)
    return {"signature": "verified", "signer": trust.signer}
