"""Check an artifact directory against its OpenSSF model-signing bundle, offline (key or certificate method).

One check wherever an artifact is about to be served: on an Ansible host
(``md_supervise.py install-artifact``), in a pod's init container
(``include/kubernetes/fetch_artifact.py``), and with the same hashing on Airflow's side
(``model_delivery.signing``). Every file is hashed with sha256 but ``MANIFEST.json`` (the
store's manifest, not part of the build output); symlinks are followed, as the store does.

Standard library at import; ``model_signing`` is imported only when a check runs (an
ImportError then means the verifier is not installed here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

IGNORED = ("MANIFEST.json",)
"""Paths of an artifact directory that are not signed: the store's manifest."""


def hashing_config(workers: int | None = None) -> Any:
    """model_signing's hashing, the same on the signing and every verifying side."""
    from model_signing import hashing

    serialization = {"hashing_algorithm": "sha256"} if workers is None else {
        "hashing_algorithm": "sha256", "max_workers": workers}
    return (hashing.Config().use_file_serialization(**serialization)
            .set_ignored_paths(paths=list(IGNORED), ignore_git_paths=False).set_allow_symlinks(True))


def problem(directory: Path, signature: Path, public_key: Path | None, ca: Path | None, *,
            who: str = "this host", workers: int | None = None) -> str | None:
    """Why ``directory`` does not match the bundle at ``signature`` (None when it does).

    :param public_key: the EC public key (PEM) of the key method; or
    :param ca: the trusted CA certificates (PEM) of the certificate method.
    :param who: what trusts the key, in the reason (``this host``, ``this pod``).
    :return: ``<reason>: <detail>``, the reason one of ``wrong-key``, ``changed-files``,
        ``untrusted-certificate``, ``bad-signature``.
    :raises ImportError: model-signing is not installed here.
    """
    from model_signing import verifying

    config = verifying.Config().set_hashing_config(hashing_config(workers))
    try:
        if ca is not None:
            config.use_certificate_verifier(certificate_chain=[ca])
        elif public_key is not None:
            config.use_elliptic_key_verifier(public_key=public_key)
        else:
            raise ValueError("no public key and no CA to verify with")
    except Exception as exc:  # noqa: BLE001 - an unusable key or CA file: name it
        return f"wrong-key: the public key or CA to verify with is not usable ({type(exc).__name__}: {exc})"
    try:
        config.verify(directory, signature)
    except Exception as exc:  # noqa: BLE001 - every failure is a refusal: name it
        text = str(exc) or type(exc).__name__
        if text.startswith("Key mismatch"):
            return f"wrong-key: signed by another key than the one {who} trusts"
        if text.startswith("Signature mismatch"):
            return f"changed-files: its files differ from what was signed ({text[:400]})"
        if type(exc).__name__ == "X509StoreContextError":
            return f"untrusted-certificate: its certificate is not trusted ({text[:300]})"
        return f"bad-signature: {type(exc).__name__}: {text[:300]}"
    return None
