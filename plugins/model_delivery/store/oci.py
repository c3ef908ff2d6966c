"""An OCI registry as an artifact store: ``oci://host[:port]/repository``.

An artifact becomes one OCI image manifest (OCI 1.1 artifact, CNCF ModelPack media types)::

    artifactType  application/vnd.cncf.model.manifest.v1+json
    config        application/vnd.cncf.model.config.v1+json   (name of the model; diffIds of the layers)
    layers        one per file, raw (not tarred), its blob digest the file's sha256 from our manifest,
                  annotated with its path (org.opencontainers.image.title, org.cncf.model.filepath):
                  weight.v1.raw, weight.config.v1.raw, doc.v1.raw, code.v1.raw, dataset.v1.raw
                  by file kind (:func:`layer_media_type`)
                  + our MANIFEST.json, byte for byte, as application/vnd.model-delivery.manifest.v1+json:
                  its blob digest *is* the artifact digest
    tag           sha256-<hex of the artifact digest>

A signed artifact's model-signing bundle (a Sigstore bundle) is attached to that OCI manifest
as cosign attaches bundles (its specs/BUNDLE_SPEC.md): the bundle as a blob, and an OCI
manifest of ``artifactType`` ``application/vnd.dev.sigstore.bundle.v0.3+json`` with the empty
config, the bundle as its one layer, and the artifact's OCI manifest as its ``subject``. A
registry with the referrers API lists it there; for one without (CNCF distribution 2.x) the
referrers tag ``sha256-<hex of the OCI manifest digest>`` is kept up to date, an image index.
The artifact's own OCI manifest is the same signed or not (:meth:`OciRepository.attach_signature`).

A push uploads only the blobs the registry lacks (HEAD first), each streamed from its file and
checked by the registry against the digest our manifest gives (no second hash here). A pull
resolves the OCI manifest (by its digest when given, else by the tag), checks that its layers
are exactly the files of our manifest, streams every blob into a temporary directory hashing
it in the same pass, and renames that directory into place only when the manifest hashes to
the artifact digest (:mod:`model_server.manifest`) and every file to its entry.

Registry access goes through oras-py's :class:`oras.provider.Registry` (its session, its
bearer-token flow with the connection's credentials, its retries), called in one place,
:meth:`OciRepository._send`; the requests themselves are the OCI distribution API, because
oras-py's helpers read whole files into memory and know nothing of our manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import tempfile
import urllib.parse
import uuid
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import TamperedArtifact
from model_server.manifest import (
    DIGEST_PREFIX,
    MANIFEST_NAME,
    ArtifactIntegrityError,
    canonical_manifest,
    compare_manifests,
    hash_stream,
    manifest_digest,
    parse_digest,
    verify_directory,
)
from model_server.manifest import manifest_bytes as canonical_bytes

if TYPE_CHECKING:
    from collections.abc import Callable

    import requests
    from oras.provider import Registry

    from model_delivery.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)

SCHEME = "oci"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
DATASET = "application/vnd.cncf.model.dataset.v1.raw"
# Our MANIFEST.json as a layer (include/kubernetes/fetch_artifact.py looks for the same type).
MANIFEST_MEDIA_TYPE = "application/vnd.model-delivery.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
FILEPATH = "org.cncf.model.filepath"
DIGEST_ANNOTATION = "org.model-delivery.artifact.digest"
# A model-signing bundle, attached as cosign does (include/kubernetes/fetch_artifact.py reads it).
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
BUNDLE_ANNOTATIONS = {"dev.sigstore.bundle.content": "dsse-envelope",
                      "dev.sigstore.bundle.predicateType": "https://model_signing/signature/v1.0"}
TAG_PREFIX = "sha256-"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries accept for an OCI manifest
MAX_OUR_MANIFEST_BYTES = 256 * 1024 * 1024  # our manifest, with part digests of very large files

_BY_SUFFIX = {
    ".json": WEIGHT_CONFIG, ".yaml": WEIGHT_CONFIG, ".yml": WEIGHT_CONFIG, ".toml": WEIGHT_CONFIG,
    ".txt": WEIGHT_CONFIG, ".model": WEIGHT_CONFIG, ".tiktoken": WEIGHT_CONFIG,
    ".md": DOC, ".rst": DOC,
    ".py": CODE, ".sh": CODE,
    ".csv": DATASET, ".parquet": DATASET, ".jsonl": DATASET, ".arrow": DATASET,
}
_DOC_NAMES = ("readme", "license", "licence", "notice", "copying", "model_card", "modelcard")


class OciRegistryError(Exception):
    """The registry could not be reached or refused a request (infrastructure: retries apply)."""


class OciArtifactMissing(OciRegistryError):
    """The registry has no artifact under this digest."""


def parse_oci_uri(uri: str) -> tuple[str, str]:
    """Split ``oci://host[:port]/repository/path`` into (registry, repository).

    :raises ValueError: not an ``oci://`` URI, no host, a bad port, or a repository name the OCI
        distribution spec does not allow (lowercase components separated by ``/``; no tag or digest).
    """
    fix = "Fix: write the store as oci://<host>[:<port>]/<repository>, e.g. oci://registry.example:5000/models"
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != SCHEME:
        raise ValueError(f"{uri!r} is not an oci:// URI. {fix}")
    if not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{uri!r} names no registry host (credentials belong in the connection, not the URI). {fix}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{uri!r} has an invalid port. {fix}") from None
    repository = parts.path.strip("/")
    if parts.query or parts.fragment or "@" in repository or ":" in repository:
        raise ValueError(f"{uri!r}: give the repository only, without a tag, digest, query or fragment. {fix}")
    component = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    if not repository or not re.fullmatch(f"{component}(?:/{component})*", repository):
        raise ValueError(f"{uri!r}: {repository!r} is not a valid OCI repository name (lowercase letters, digits, "
                         f"'.', '_', '-', components separated by '/'). {fix}")
    return parts.netloc, repository


def tag_for(digest: str) -> str:
    """The tag an artifact is pushed under: ``sha256-<hex>`` (a tag cannot hold ``:``)."""
    return TAG_PREFIX + parse_digest(digest)


def layer_media_type(path: str) -> str:
    """The ModelPack media type of a file of the artifact, by its kind; model weights by default."""
    name = PurePosixPath(path).name.lower()
    if name.startswith(_DOC_NAMES):
        return DOC
    return _BY_SUFFIX.get(PurePosixPath(name).suffix, WEIGHT)


def checked_manifest(raw: bytes, digest: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our manifest ``raw`` as a document and as its canonical file list, after checking it hashes to ``digest``.

    Keys the manifest has beyond ``path``/``sha256``/``size`` (part digests, a part size) are
    carried opaquely: the digest covers them, and the bytes written are ``raw``'s canonical form.

    :raises TamperedArtifact: not a manifest, an unsafe path, or another digest.
    """
    try:
        document = json.loads(raw)
        files = canonical_manifest(
            [{"path": e["path"], "sha256": e["sha256"], "size": e["size"]} for e in document["files"]])
    except (ValueError, KeyError, TypeError, ArtifactIntegrityError) as exc:
        raise TamperedArtifact(f"{where}: not a valid artifact manifest ({exc}). Do not deploy it; push the "
                               "artifact again from the store.") from None
    if manifest_digest(document) != digest:
        raise TamperedArtifact(f"{where}: the artifact manifest hashes to {manifest_digest(document)}, not "
                               f"{digest}: it is another artifact or it was changed. Deploy the digest you meant.")
    return document, files


def layer_problems(files: dict[str, Any], layers: list[dict[str, Any]]) -> list[str]:
    """Every difference between the OCI manifest's file layers and our manifest's files (empty: they match)."""
    by_title: dict[str, dict[str, Any]] = {}
    problems = []
    for layer in layers:
        title = (layer.get("annotations") or {}).get(TITLE)
        if title is None or title in by_title:
            problems.append(f"layer {layer.get('digest')} has {'no' if title is None else 'a repeated'} title")
        else:
            by_title[str(title)] = layer
    want = {f["path"]: f for f in files["files"]}
    problems += [f"no layer for {p}" for p in sorted(want.keys() - by_title.keys())]
    problems += [f"unexpected layer {p}" for p in sorted(by_title.keys() - want.keys())]
    for path in sorted(want.keys() & by_title.keys()):
        layer, entry = by_title[path], want[path]
        if layer.get("digest") != DIGEST_PREFIX + entry["sha256"] or layer.get("size") != entry["size"]:
            problems.append(f"{path}: layer {str(layer.get('digest'))[:19]}… of {layer.get('size')} bytes != "
                            f"sha256:{entry['sha256'][:12]}… of {entry['size']} bytes in the artifact manifest")
    return problems


class OciRepository:
    """One repository of an OCI registry, holding artifacts by digest.

    :param uri: ``oci://host[:port]/repository``.
    :param insecure: plain HTTP instead of HTTPS (a registry on a trusted network, or a test's).
    :param username: registry login, from an Airflow connection (never logged).
    :param password: registry password or token, from the same connection (never logged).
    """

    def __init__(self, uri: str, *, insecure: bool = False, username: str | None = None,
                 password: str | None = None) -> None:
        self.uri = uri
        self.registry, self.repository = parse_oci_uri(uri)
        self.insecure = insecure
        self._credentials = (username, password or "") if username else None
        self._extra_headers: dict[str, str] = {}
        self.base = f"{'http' if insecure else 'https'}://{self.registry}/v2/{self.repository}"

    def __repr__(self) -> str:
        return f"OciRepository({self.uri!r}, insecure={self.insecure})"

    def same_repository(self, other: OciRepository) -> bool:
        """Whether ``other`` names the same repository of the same registry."""
        return (self.registry, self.repository) == (other.registry, other.repository)

    # -- the one place that talks to the registry ------------------------------------------------
    @cached_property
    def _client(self) -> Registry:
        """oras-py's registry client, with the connection's credentials and the registry's auth scheme."""
        import oras.auth
        import oras.provider
        import requests

        client = oras.provider.Registry(hostname=self.registry, insecure=self.insecure, auth_backend="token")
        client.auth = _strict_token_auth(client)
        if self._credentials:
            client.auth.set_basic_auth(*self._credentials)
        root = f"{client.prefix}://{self.registry}/v2/"
        try:
            answer = client.session.get(root, timeout=60)
        except requests.RequestException as exc:
            raise OciRegistryError(
                f"cannot reach the OCI registry of {self.uri} at {root}: {type(exc).__name__}: {exc}. Fix: check "
                f"the host and port{'' if self.insecure else ', and use insecure for a registry without TLS'}."
            ) from None
        challenge = answer.headers.get("WWW-Authenticate", "")
        if answer.status_code == 401 and challenge.lower().startswith("basic"):
            # oras-py's token backend only follows Bearer challenges: its Basic backend, and the
            # credentials sent with every request (a streamed body cannot be sent twice)
            if not self._credentials:
                raise OciRegistryError(f"the OCI registry of {self.uri} asks for a login. Fix: give the store's "
                                       "connection a login and password.")
            client.auth = oras.auth.get_auth_backend("basic", client.session, self.insecure)
            client.auth.set_basic_auth(*self._credentials)
            pair = ":".join(self._credentials).encode()
            self._extra_headers = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        elif answer.status_code not in (200, 401):
            raise OciRegistryError(f"{root} answered {answer.status_code}: is {self.registry} an OCI registry? "
                                   f"Fix: check the host and port of {self.uri}.")
        return client

    def _send(self, method: str, url: str, *, headers: dict[str, str] | None = None, data: Any = None,
              stream: bool = False) -> requests.Response:
        """Send one request through oras-py (auth, retries); a token of too narrow a scope is renewed once."""
        import oras.auth
        import requests

        client = self._client
        try:
            response = client.do_request(url, method, data=data, headers={**self._extra_headers, **(headers or {})},
                                         stream=stream)
            if response.status_code == 401 and getattr(client.auth, "token", None):  # e.g. a pull token, now a push
                _, renewed = client.auth.authenticate_request(response, {}, refresh=True)
                if renewed:
                    if hasattr(data, "seek"):
                        data.seek(0)
                    response = client.do_request(url, method, data=data,
                                                 headers={**self._extra_headers, **(headers or {})}, stream=stream)
        except (requests.RequestException, ValueError, oras.auth.AuthenticationException) as exc:
            raise OciRegistryError(f"{method} {url}: {type(exc).__name__}: {exc}. Fix: check the registry and the "
                                   "store connection's credentials.") from None
        if response.status_code in (401, 403):
            raise OciRegistryError(f"{method} {url}: the registry refused access ({response.status_code}). Fix: "
                                   "give the store connection a login allowed to push and pull this repository.")
        return response

    @staticmethod
    def _error(response: requests.Response, what: str) -> OciRegistryError:
        try:
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in response.json().get("errors", []))
        except ValueError:
            detail = response.text[:200]
        return OciRegistryError(f"{what}: the registry answered {response.status_code} ({detail or 'no detail'}).")

    # -- blobs ------------------------------------------------------------------------------------
    def has_blob(self, blob_digest: str) -> bool:
        """Whether the repository holds a blob (HEAD)."""
        response = self._send("HEAD", f"{self.base}/blobs/{blob_digest}")
        if response.status_code not in (200, 404):
            raise self._error(response, f"HEAD blob {blob_digest} in {self.uri}")
        return response.status_code == 200

    def _put_blob(self, descriptor: dict[str, Any], source: Path | bytes, what: str) -> bool:
        """Upload one blob unless the registry has it; return whether it was uploaded.

        A file is streamed (monolithic upload: POST, then one PUT of the whole body); the
        registry checks it against the descriptor's digest, which is our manifest's sha256.
        """
        import oras.utils

        if self.has_blob(descriptor["digest"]):
            return False
        started = self._send("POST", f"{self.base}/blobs/uploads/", headers={"Content-Length": "0"})
        location = started.headers.get("Location")
        if started.status_code != 202 or not location:
            raise self._error(started, f"starting the upload of {what} to {self.uri}")
        url = oras.utils.append_url_params(urllib.parse.urljoin(self.base + "/", location),
                                           {"digest": descriptor["digest"]})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(descriptor["size"])}
        if isinstance(source, bytes):
            response = self._send("PUT", url, headers=headers, data=source)
        else:
            with open(source, "rb") as body:
                response = self._send("PUT", url, headers=headers, data=body)
        if response.status_code == 400 and any(code in response.content for code in (b"DIGEST_INVALID",
                                                                                     b"SIZE_INVALID")):
            where = "" if isinstance(source, bytes) else f" ({source})"
            raise TamperedArtifact(f"{what}{where} does not match the artifact manifest: the registry found "
                                   f"another sha256 than {descriptor['digest']}. Fix: rebuild, or store the artifact "
                                   "again from a good copy.")
        if response.status_code != 201:
            raise self._error(response, f"uploading {what} to {self.uri}")
        return True

    def _read_blob(self, descriptor: dict[str, Any], limit: int, what: str) -> bytes:
        """A small blob (a manifest), read whole after checking its announced size."""
        if not isinstance(descriptor.get("size"), int) or not 0 <= descriptor["size"] <= limit:
            raise TamperedArtifact(f"{what} in {self.uri} claims {descriptor.get('size')} bytes (at most {limit}).")
        with self._send("GET", f"{self.base}/blobs/{descriptor['digest']}", stream=True) as response:
            if response.status_code != 200:
                raise self._error(response, f"GET {what} ({descriptor['digest']}) from {self.uri}")
            return bytes(response.raw.read(limit + 1, decode_content=False))

    def _stream_blob(self, entry: dict[str, Any], target: Path) -> tuple[str, int]:
        """Stream one file's blob into ``target``, hashing it in the same pass; never held whole in memory."""
        url = f"{self.base}/blobs/{DIGEST_PREFIX}{entry['sha256']}"
        with self._send("GET", url, stream=True) as response:
            if response.status_code != 200:
                raise self._error(response, f"GET {entry['path']} from {self.uri}")
            with open(target, "wb") as out:
                return hash_stream(lambda n: response.raw.read(n, decode_content=False), out.write)

    # -- artifacts --------------------------------------------------------------------------------
    def push(self, model: str, digest: str, manifest_bytes: bytes, files: Callable[[str], Path]) -> dict[str, Any]:
        """Push an artifact: one layer per file, our manifest as a layer, tagged ``sha256-<hex>``.

        :param model: the model's name (the ModelPack config's ``descriptor.name``).
        :param digest: the artifact digest, ``sha256:<hex>`` of ``manifest_bytes``.
        :param manifest_bytes: our MANIFEST.json, exactly as stored.
        :param files: where each file of the manifest is, by its path in the manifest.
        :return: JSON-able: ``uri``, ``oci_digest``, ``tag``, ``reference``, ``uploaded`` and
            ``reused`` blob counts, ``size_bytes``; ``uploaded_files`` and ``uploaded_bytes``: the files'
            blobs this push uploaded (not our manifest nor the config).
        :raises TamperedArtifact: the manifest does not hash to ``digest``, or a file does not match it.
        """
        document, listed = checked_manifest(manifest_bytes, digest, "the manifest to push")
        if canonical_bytes(document) != manifest_bytes:  # its blob digest must be the artifact digest
            raise TamperedArtifact(f"the manifest of {digest} to push is not in canonical form (sorted keys, no "
                                   "whitespace: model_server.manifest.manifest_bytes). Fix: push the stored bytes.")
        layers, uploaded, reused, file_bytes, file_blobs = [], 0, 0, 0, 0
        for entry in listed["files"]:
            path = Path(files(entry["path"]))
            if path.stat().st_size != entry["size"]:
                raise TamperedArtifact(f"{entry['path']} ({path}) has {path.stat().st_size} bytes, the artifact "
                                       f"manifest of {digest} says {entry['size']}. Fix: rebuild the model.")
            layer = {"mediaType": layer_media_type(entry["path"]), "digest": DIGEST_PREFIX + entry["sha256"],
                     "size": entry["size"], "annotations": {TITLE: entry["path"], FILEPATH: entry["path"]}}
            done = self._put_blob(layer, path, entry["path"])
            uploaded, reused = uploaded + done, reused + (not done)
            file_bytes, file_blobs = file_bytes + (entry["size"] if done else 0), file_blobs + done
            layers.append(layer)
        ours = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(manifest_bytes),
                "annotations": {TITLE: MANIFEST_NAME}}
        config_bytes = _canonical_json({"descriptor": {"name": model}, "config": {},
                                        "modelfs": {"type": "layers", "diffIds": [x["digest"] for x in (*layers, ours)]}})
        config = {"mediaType": CONFIG_MEDIA_TYPE, "digest": _sha256(config_bytes), "size": len(config_bytes)}
        for descriptor, body, what in ((ours, manifest_bytes, MANIFEST_NAME), (config, config_bytes, "config")):
            done = self._put_blob(descriptor, body, what)
            uploaded, reused = uploaded + done, reused + (not done)
        oci_digest = self._put_manifest(model, digest, config, [*layers, ours])
        log.info("pushed %s of %s to %s@%s: %s blob(s) uploaded, %s already there", digest, model, self.uri,
                 oci_digest, uploaded, reused)
        return {"uri": f"{self.uri}@{oci_digest}", "digest": digest, "oci_digest": oci_digest,
                "tag": tag_for(digest), "reference": f"{self.registry}/{self.repository}:{tag_for(digest)}",
                "uploaded": uploaded, "reused": reused, "size_bytes": sum(e["size"] for e in listed["files"]),
                "uploaded_files": file_blobs, "uploaded_bytes": file_bytes}

    def _put_manifest(self, model: str, digest: str, config: dict[str, Any], layers: list[dict[str, Any]]) -> str:
        import jsonschema
        import oras.schemas

        document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE, "config": config,
                    "layers": layers, "annotations": {DIGEST_ANNOTATION: digest, TITLE: model}}
        jsonschema.validate(document, schema=oras.schemas.manifest)
        body = _canonical_json(document)
        response = self._send("PUT", f"{self.base}/manifests/{tag_for(digest)}",
                              headers={"Content-Type": OCI_MANIFEST}, data=body)
        if response.status_code != 201:
            raise self._error(response, f"PUT the OCI manifest of {digest} to {self.uri}")
        oci_digest = _sha256(body)
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != oci_digest:
            raise OciRegistryError(f"{self.uri} stored the OCI manifest of {digest} as {answered}, not {oci_digest}: "
                                   "the registry changed it. Fix: use a registry that keeps manifests as pushed.")
        return oci_digest

    def attach_signature(self, digest: str, oci_digest: str, bundle: bytes) -> str:
        """Attach a model-signing bundle to the artifact's OCI manifest, as cosign attaches a Sigstore bundle.

        Idempotent: the same bundle gives the same referrer manifest, listed once.

        :param digest: the artifact digest (named in messages).
        :param oci_digest: the artifact's OCI manifest digest (what :meth:`push` returned): the referrer's subject.
        :param bundle: the bundle's bytes, as the store keeps them.
        :return: the referrer manifest's digest.
        """
        response = self._send("GET", f"{self.base}/manifests/{oci_digest}", headers={"Accept": OCI_MANIFEST})
        if response.status_code != 200 or _sha256(response.content) != oci_digest:
            raise self._error(response, f"GET the OCI manifest {oci_digest} of {digest} to sign it in {self.uri}")
        layer = {"mediaType": BUNDLE_MEDIA_TYPE, "digest": _sha256(bundle), "size": len(bundle),
                 "annotations": {TITLE: f"{_sha256(bundle).replace(':', '-')}.sigstore.json"}}
        config = {"mediaType": EMPTY_MEDIA_TYPE, "digest": _sha256(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)}
        self._put_blob(layer, bundle, "the signature bundle")
        self._put_blob(config, EMPTY_CONFIG, "the empty config")
        document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_MEDIA_TYPE,
                    "config": config, "layers": [layer], "annotations": BUNDLE_ANNOTATIONS,
                    "subject": {"mediaType": OCI_MANIFEST, "digest": oci_digest, "size": len(response.content)}}
        body = _canonical_json(document)
        referrer = _sha256(body)
        put = self._send("PUT", f"{self.base}/manifests/{referrer}", headers={"Content-Type": OCI_MANIFEST}, data=body)
        if put.status_code != 201:
            raise self._error(put, f"PUT the signature of {digest} to {self.uri}")
        if put.headers.get("OCI-Subject") != oci_digest:  # no referrers API: keep the referrers tag's index
            self._list_referrer(oci_digest, {"mediaType": OCI_MANIFEST, "digest": referrer, "size": len(body),
                                             "artifactType": BUNDLE_MEDIA_TYPE, "annotations": BUNDLE_ANNOTATIONS})
        log.info("attached the signature of %s to %s@%s as %s", digest, self.uri, oci_digest, referrer)
        return referrer

    def _list_referrer(self, oci_digest: str, descriptor: dict[str, Any]) -> None:
        """Add ``descriptor`` to the referrers tag schema's index of ``oci_digest`` (OCI distribution spec 1.1)."""
        tag = TAG_PREFIX + parse_digest(oci_digest)
        found = self._send("GET", f"{self.base}/manifests/{tag}", headers={"Accept": OCI_INDEX})
        if found.status_code == 200:
            try:
                listed = [x for x in json.loads(found.content)["manifests"] if isinstance(x, dict)]
            except (ValueError, KeyError, TypeError) as exc:
                raise OciRegistryError(f"{self.uri}:{tag} is not an OCI image index ({exc}). Fix: delete that tag; "
                                       "it is the referrers list of the artifact's OCI manifest.") from None
        elif found.status_code == 404:
            listed = []
        else:
            raise self._error(found, f"GET the referrers of {oci_digest} in {self.uri}")
        if any(x.get("digest") == descriptor["digest"] for x in listed):
            return
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*listed, descriptor]}
        put = self._send("PUT", f"{self.base}/manifests/{tag}", headers={"Content-Type": OCI_INDEX},
                         data=_canonical_json(index))
        if put.status_code != 201:
            raise self._error(put, f"PUT the referrers of {oci_digest} to {self.uri}")

    def exists(self, digest: str) -> bool:
        """Whether the repository has an artifact tagged for ``digest`` (HEAD on its manifest; not verified)."""
        response = self._send("HEAD", f"{self.base}/manifests/{tag_for(digest)}", headers={"Accept": OCI_MANIFEST})
        if response.status_code not in (200, 404):
            raise self._error(response, f"HEAD the artifact {digest} in {self.uri}")
        return response.status_code == 200

    def _oci_layers(self, digest: str, oci_digest: str | None) -> list[dict[str, Any]]:
        """The layers of the OCI manifest of an artifact, by its digest when given, else by its tag."""
        reference = oci_digest or tag_for(digest)
        if oci_digest is not None:
            parse_digest(oci_digest)
        response = self._send("GET", f"{self.base}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        if response.status_code == 404:
            raise OciArtifactMissing(f"{self.uri} has no artifact {reference} ({digest}). Fix: push it first "
                                     "(the build stage does), or check the store URI.")
        if response.status_code != 200:
            raise self._error(response, f"GET the OCI manifest {reference} from {self.uri}")
        body = response.content
        if oci_digest is not None and _sha256(body) != oci_digest:
            raise TamperedArtifact(f"{self.uri} answered {oci_digest} with an OCI manifest that hashes to "
                                   f"{_sha256(body)}. Do not deploy it; check the registry.")
        try:
            document = json.loads(body)
            layers = list(document["layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TamperedArtifact(f"{self.uri}: {reference} is not an OCI image manifest ({exc}).") from None
        if len(body) > MAX_MANIFEST_BYTES or not all(isinstance(x, dict) for x in layers):
            raise TamperedArtifact(f"{self.uri}: {reference} is not an OCI image manifest of ours.")
        return layers

    def read_manifest(self, digest: str, *, oci_digest: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Our manifest of an artifact, as a document and as its canonical file list, checked against the registry.

        It must hash to ``digest``, and the OCI manifest's file layers must be exactly its files.

        :raises OciArtifactMissing: the registry has no artifact under this digest.
        :raises TamperedArtifact: anything differs; names what.
        """
        where = f"{self.uri}@{oci_digest or tag_for(digest)}"
        layers = self._oci_layers(digest, oci_digest)
        ours = [x for x in layers if x.get("mediaType") == MANIFEST_MEDIA_TYPE]
        if len(ours) != 1:
            raise TamperedArtifact(f"{where} has {len(ours)} layers of type {MANIFEST_MEDIA_TYPE}, not 1: it is not "
                                   "an artifact pushed by model-delivery. Push it again.")
        raw = self._read_blob(ours[0], MAX_OUR_MANIFEST_BYTES, MANIFEST_NAME)
        document, files = checked_manifest(raw, digest, f"{where} {MANIFEST_NAME}")
        problems = layer_problems(files, [x for x in layers if x is not ours[0]])
        if problems:
            raise TamperedArtifact(f"{where} does not hold the files of {digest}: " + "; ".join(problems) + ". Do not "
                                   "deploy it; push the artifact again from the store.")
        return document, files

    def oci_digest(self, digest: str) -> str | None:
        """The digest of the OCI manifest tagged for an artifact (what its referrers name), or None when absent."""
        response = self._send("GET", f"{self.base}/manifests/{tag_for(digest)}", headers={"Accept": OCI_MANIFEST})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error(response, f"GET the OCI manifest of {digest} from {self.uri}")
        return _sha256(response.content)

    def blob_problems(self, files: dict[str, Any], done: Callable[[int], Any] | None = None) -> list[str]:
        """Stream every file's blob and hash it (nothing written); what does not match ``files`` (empty: all do)."""
        problems = []
        for entry in files["files"]:
            url = f"{self.base}/blobs/{DIGEST_PREFIX}{entry['sha256']}"
            with self._send("GET", url, stream=True) as response:
                if response.status_code == 404:
                    problems.append(f"missing file {entry['path']}")
                    continue
                if response.status_code != 200:
                    raise self._error(response, f"GET {entry['path']} from {self.uri}")
                sha, size = _hash_body(response)
            if done is not None:
                done(size)
            if (sha, size) != (entry["sha256"], entry["size"]):
                problems.append(f"{entry['path']}: sha256 {sha[:12]}… of {size} bytes != {entry['sha256'][:12]}… of "
                                f"{entry['size']} bytes")
        return problems

    def signatures(self, digest: str) -> list[bytes]:
        """The model-signing bundles attached to the artifact's OCI manifest (oldest first), as cosign attaches them.

        The referrers API, else the referrers tag (``sha256-<hex of the OCI manifest digest>``); a referrer
        counts only when its ``subject`` is this artifact's OCI manifest and its bundle layer hashes to its digest.
        """
        oci_digest = self.oci_digest(digest)
        if oci_digest is None:
            return []
        listed = self._index(f"referrers/{oci_digest}?artifactType={urllib.parse.quote(BUNDLE_MEDIA_TYPE)}")
        if listed is None:
            listed = self._index(f"manifests/{TAG_PREFIX}{parse_digest(oci_digest)}") or []
        bundles = []
        for item in listed:
            reference = str(item.get("digest"))
            if item.get("artifactType") == BUNDLE_MEDIA_TYPE and re.fullmatch(r"sha256:[0-9a-f]{64}", reference):
                bundles += self._referrer_bundles(reference, oci_digest)
        return bundles

    def _referrer_bundles(self, reference: str, oci_digest: str) -> list[bytes]:
        """The bundle layers of one referrer whose ``subject`` is ``oci_digest``, each hashing to its descriptor."""
        response = self._send("GET", f"{self.base}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        if response.status_code != 200 or _sha256(response.content) != reference:
            return []  # gone, or not what its digest says: no signature of ours
        try:
            document = json.loads(response.content)
            subject, layers = (document.get("subject") or {}).get("digest"), list(document["layers"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return []
        if subject != oci_digest:
            return []  # about another artifact
        bundles = []
        for layer in layers:
            if isinstance(layer, dict) and layer.get("mediaType") == BUNDLE_MEDIA_TYPE:
                blob = self._read_blob(layer, MAX_MANIFEST_BYTES, "a signature bundle")
                if _sha256(blob) == layer.get("digest"):
                    bundles.append(blob)
        return bundles

    def _index(self, path: str) -> list[dict[str, Any]] | None:
        """The ``manifests`` of an OCI image index (a referrers list), or None when the registry has none there."""
        response = self._send("GET", f"{self.base}/{path}", headers={"Accept": OCI_INDEX})
        if response.status_code in (400, 404, 405):  # no referrers API (distribution 2.x), or no such tag
            return None
        if response.status_code != 200:
            raise self._error(response, f"GET {path} from {self.uri}")
        try:
            listed = json.loads(response.content)["manifests"]
        except (ValueError, KeyError, TypeError) as exc:
            raise OciRegistryError(f"{self.uri}: {path} is not an OCI image index ({exc}).") from None
        return [x for x in listed if isinstance(x, dict)] if isinstance(listed, list) else []

    def pull(self, digest: str, dest: Path, *, oci_digest: str | None = None) -> Path:
        """Fetch an artifact into ``dest``, verified; return ``dest``.

        An existing ``dest`` that verifies is kept; a damaged one is replaced. Every blob streams
        into a temporary directory beside ``dest``, hashed as it is written, and the directory is
        renamed into place only when everything matched.

        :param digest: the artifact digest.
        :param oci_digest: the OCI manifest's digest (what :meth:`push` returned); else the tag is resolved.
        :raises TamperedArtifact: anything differs from the artifact manifest or from ``digest``; names what.
        """
        parse_digest(digest)
        if dest.exists():
            try:
                verify_directory(dest, digest)
                return dest
            except ArtifactIntegrityError:
                shutil.rmtree(dest)
        where = f"{self.uri}@{oci_digest or tag_for(digest)}"
        document, files = self.read_manifest(digest, oci_digest=oci_digest)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.mkdir(parents=True)
            fetched = []
            for entry in files["files"]:
                target = tmp / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                sha, size = self._stream_blob(entry, target)
                fetched.append({"path": entry["path"], "sha256": sha, "size": size})
            problems = compare_manifests(files, canonical_manifest(fetched))
            if problems:
                raise TamperedArtifact(f"{where}: the files of {digest} do not match its manifest: "
                                       + "; ".join(problems) + ". Do not deploy it; push the artifact again.")
            (tmp / MANIFEST_NAME).write_bytes(canonical_bytes(document))
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("pulled %s (%s file(s)) from %s into %s", digest, len(files["files"]), where, dest)
        return dest


def _strict_token_auth(client: Registry) -> Any:
    """oras-py's token auth, made to fail at once when it cannot answer a challenge.

    oras-py raises a plain ``ValueError`` then, which its retry decorator retries for two minutes
    (3 s to 84 s apart); :class:`oras.auth.AuthenticationException` is the error it lets through.
    """
    from oras.auth import AuthenticationException, TokenAuth

    class StrictTokenAuth(TokenAuth):  # type: ignore[misc]
        def authenticate_request(self, original: requests.Response, headers: dict[str, str],
                                 refresh: bool = False) -> tuple[dict[str, str], bool]:
            headers, changed = super().authenticate_request(original, headers, refresh)
            if not changed:
                raise AuthenticationException(f"no token for the registry's challenge ({original.status_code}): "
                                              "wrong or missing credentials")
            return headers, changed

    auth = StrictTokenAuth()
    auth.session, auth.prefix, auth._tls_verify = client.session, client.prefix, client._tls_verify
    return auth


def _hash_body(response: requests.Response) -> tuple[str, int]:
    """The sha256 and size of a streamed response body, read as sent (nothing kept)."""
    return hash_stream(lambda n: bytes(response.raw.read(n, decode_content=False)))


def _canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _sha256(body: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(body).hexdigest()


__all__ = ["OciArtifactMissing", "OciRegistryError", "OciRepository", "layer_media_type", "parse_oci_uri", "tag_for"]


def push_stored(store: ArtifactStore, model: str, digest: str, repository: OciRepository) -> dict[str, Any]:
    """Push an artifact of a local store to a registry, its files read from their blobs (or legacy paths).

    From a store that is itself a registry (:class:`~model_delivery.store.oci_store.OciArtifactStore`), the
    artifact is pulled (verified) into a temporary directory and pushed from there; into its own repository
    that uploads nothing (every blob is there).

    Its signature bundle, when the store keeps one, is attached to it (:meth:`OciRepository.attach_signature`);
    ``signature`` in the result is the referrer's digest, or None (unsigned).
    """
    from model_delivery.store.oci_store import OciArtifactStore

    if isinstance(store, OciArtifactStore) and repository.same_repository(store.repository):
        oci_digest = repository.oci_digest(digest)
        if oci_digest is None:
            raise OciArtifactMissing(f"{repository.uri} has no artifact {tag_for(digest)} ({digest}). Fix: build it "
                                     "first (the build stage stores it there).")
        _, files = repository.read_manifest(digest, oci_digest=oci_digest)
        pushed = {"uri": f"{repository.uri}@{oci_digest}", "digest": digest, "oci_digest": oci_digest,
                  "tag": tag_for(digest), "reference": f"{repository.registry}/{repository.repository}:{tag_for(digest)}",
                  "uploaded": 0, "reused": len(files["files"]) + 2, "size_bytes": sum(e["size"] for e in files["files"]),
                  "uploaded_files": 0, "uploaded_bytes": 0}
    elif isinstance(store, OciArtifactStore):  # another registry: copy through a verified local pull
        with tempfile.TemporaryDirectory(prefix="md-oci-copy-") as scratch:
            fetched = store.fetch(model, digest, Path(scratch) / "artifact")
            pushed = repository.push(model, digest, (fetched / MANIFEST_NAME).read_bytes(), lambda rel: fetched / rel)
    elif not store.is_local:
        raise OciRegistryError(f"pushing {digest} to {repository.uri} reads the store's files in place, and "
                               f"{store.root} is not local. Fix: push from a worker with a file:// store.")
    else:
        manifest = store.read_manifest(model, digest)
        entries = {e["path"]: e for e in manifest["files"]}
        pushed = repository.push(model, digest, canonical_bytes(manifest),
                                 lambda rel: Path(store.locate(model, digest, entries[rel]).path))
    signature = store.layout.signature(model, digest)
    pushed["signature"] = (repository.attach_signature(digest, pushed["oci_digest"], signature.read_bytes())
                           if signature.exists() else None)
    return pushed
