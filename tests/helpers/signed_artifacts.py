"""Small artifacts written straight into a file store, and signed as the build signs them (a real EC key).

For the init container's tests: the store's legacy layout (files beside ``MANIFEST.json`` in
``<root>/<model>/sha256/<hex>``, which the script reads as well as blobs) keeps them a few lines,
and ``part`` lists part digests (``chunks``) of any file larger than it, as the store does for
files larger than 64 MiB: 8 MiB, the smallest part size a manifest allows, keeps a multi-part
file small.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from model_delivery.signing import sign_directory
from model_server.manifest import canonical_manifest, manifest_bytes, manifest_digest


def ec_key_pair(curve: ec.EllipticCurve | None = None) -> tuple[bytes, bytes]:
    """A fresh EC key: (private PEM, public PEM)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def certificate_chain() -> tuple[bytes, bytes, bytes]:
    """A CA and a signing certificate it issued: (the CA's PEM, the signer's private key PEM, its certificate PEM)."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, ca: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(issuer_key, hashes.SHA256()))

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = issue("model-delivery test CA", ca_key, None, ca_key, ca=True)
    leaf = issue("release signer", leaf_key, ca, ca_key, ca=False)
    return (ca.public_bytes(serialization.Encoding.PEM),
            leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()),
            leaf.public_bytes(serialization.Encoding.PEM))


def store_artifact(root: Path, model: str, files: dict[str, bytes], *, part: int | None = None) -> tuple[Path, str]:
    """Write an artifact into the file store at ``root``; return its directory and digest."""
    entries = []
    for rel, data in files.items():
        entry: dict[str, Any] = {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        if part and len(data) > part:
            entry["chunks"] = [hashlib.sha256(data[i:i + part]).hexdigest() for i in range(0, len(data), part)]
        entries.append(entry)
    manifest = canonical_manifest(entries, part)
    digest = manifest_digest(manifest)
    directory = root / model / "sha256" / digest.removeprefix("sha256:")
    for rel, data in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    (directory / "MANIFEST.json").write_bytes(manifest_bytes(manifest))
    return directory, digest


def sign_stored(directory: Path, private_pem: bytes, certificate_pem: bytes | None = None) -> bytes:
    """Sign a stored artifact as the build does and keep the bundle where the store keeps it (``signature/``).

    :param certificate_pem: sign by the certificate method (the bundle carries the certificate).
    """
    bundle = sign_directory(directory, private_pem, certificate_pem=certificate_pem)
    (directory / "signature").mkdir(exist_ok=True)
    (directory / "signature" / "model.sig").write_bytes(bundle)
    return bundle
