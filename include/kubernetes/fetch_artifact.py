"""Fetch a model artifact into the pod and verify it, before the model server may start.

Runs as the init container of every model pod (shipped in the model's ConfigMap)::

    python fetch_artifact.py --uri URI --digest sha256:<hex> --dest /models/<hex>

``URI`` is the artifact's directory in the store: ``file:///...`` or a plain path (a mounted
volume), ``http(s)://...``, or any scheme fsspec knows (``s3://``, ``gs://``) when fsspec and
its filesystem package are installed in the image. Its files are the store's blobs
(``<root>/blobs/sha256/<sha256>``), or, in the legacy layout, beside ``MANIFEST.json``. Every
file listed in ``MANIFEST.json`` is copied into a temporary directory and hashed in the same
pass; the manifest must hash to ``--digest`` and every file to its manifest entry, or nothing
is put in place. The digest is defined once, in ``model_server.manifest``, which the serving
image carries; keys of the manifest beyond each file's path, sha256 and size are kept as given.

``URI`` may also be an OCI registry's repository, ``oci://host[:port]/repository``, optionally
``@sha256:<OCI manifest digest>`` (else the tag ``sha256-<hex of --digest>`` is resolved; the
layout is ``model_delivery.store.oci``'s). The OCI distribution API is spoken with urllib:
the OCI manifest, then our ``MANIFEST.json`` from its layer, whose layers must be exactly the
manifest's files, then each file's blob by its sha256, verified as above. HTTPS unless
``--insecure``; a bearer-token or Basic challenge is answered with ``OCI_USERNAME`` and
``OCI_PASSWORD`` from the environment when set (anonymously otherwise).

Files are fetched on a thread pool (every core: ``MODEL_DELIVERY_HASH_THREADS``, else the
CPU count, fewer when the container's memory limit would not hold 4 reads of 8 MiB per
thread). A file larger than one part (its manifest entry lists ``chunks``, per-part sha256 in
``chunk_size`` parts) is checked part by part: from a local source (``file://``, a mounted
store) its parts are copied with ``pread``/``pwrite`` and hashed in parallel; from a stream
(HTTP, a registry, fsspec) each part is hashed as it passes. A bad part is named by its byte
range. No file is ever held whole in memory.

With ``--signing required`` (or ``optional``) the fetched directory is also verified against
its OpenSSF model-signing bundle (``--public-key`` PEM: the key method; ``--ca`` PEM: the
certificate method) before it is put in place: every file, sha256 each, ``MANIFEST.json``
aside, as ``model_delivery.signing`` signs it. The bundle is ``--signature`` when given, else
the store's ``signature/model.sig`` in the artifact directory or, for ``oci://``, the
Sigstore bundle attached to the artifact's OCI manifest as a referrer (artifactType
``application/vnd.dev.sigstore.bundle.v0.3+json``, as cosign attaches bundles: the referrers
API, else the ``sha256-<hex of the OCI manifest digest>`` referrers tag). ``required`` and no
bundle is refused (``unsigned``) before any file is copied; ``optional`` and no bundle is
served, and said; a bundle
present must hold (``wrong-key``, ``changed-files``, ``bad-signature``,
``untrusted-certificate``). The image needs ``model-signing`` for this
(``include/serving/signing-requirements.txt``).

Exit codes: 0 verified and in place (or already there); 1 the store could not be read (the
kubelet restarts the container); 2 bad arguments or an unusable image; 3 integrity failure
(the files or the manifest do not match the digest, or the signature does not hold: never
retried into success, and nothing is left at ``--dest``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO, Any

EXIT_UNREADABLE = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3

# The OCI layout of model_delivery.store.oci (tests/integration/test_oci_store.py checks they agree).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.model-delivery.manifest.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
TITLE = "org.opencontainers.image.title"
TAG_PREFIX = "sha256-"
MAX_OCI_MANIFEST = 4 * 1024 * 1024
MAX_MANIFEST = 256 * 1024 * 1024
MAX_BUNDLE = 16 * 1024 * 1024
TIMEOUT = 60
SIGNATURE_PATH = "signature/model.sig"  # model_delivery.store.layout's StoreLayout.signature, in the artifact directory
READS_PER_THREAD = 4  # a thread holds up to this many 8 MiB reads at once (its read, the hash, the write)
CGROUP_MEMORY = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
INSTALL_SIGNING = ("the image has no model-signing, needed to verify the artifact's signature. Fix: install "
                   "model-signing 1.1.1 and pyOpenSSL in the serving image (pip install -r "
                   "include/serving/signing-requirements.txt), or set deploy.kubernetes.artifact_fetch.image to an "
                   "image that has them")


class Refused(Exception):
    """The artifact does not match its digest, or its signature does not hold."""


def say(message: str) -> None:
    print(f"fetch_artifact: {message}", file=sys.stderr, flush=True)


def open_uri(uri: str) -> IO[bytes]:
    """Open one file of the store for reading, by scheme."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("", "file"):
        return open(local_path(uri), "rb")
    if scheme in ("http", "https"):
        return urllib.request.urlopen(uri, timeout=60)  # noqa: S310 - the scheme is checked above
    try:
        import fsspec

        handle: IO[bytes] = fsspec.open(uri, "rb").open()
    except ImportError as exc:
        raise SystemExit(_usage(f"{uri}: scheme {scheme!r} needs fsspec and its filesystem package in the image "
                                f"({exc})")) from None
    return handle


def local_path(uri: str) -> str:
    """The path of a ``file://`` URI or a plain path."""
    return urllib.parse.urlsplit(uri).path if urllib.parse.urlsplit(uri).scheme else uri


def read_optional(uri: str, limit: int) -> bytes | None:
    """A small file of the store, or None when it is not there."""
    try:
        with open_uri(uri) as handle:
            body = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    if len(body) > limit:
        raise Refused(f"{uri} is larger than {limit} bytes: not a signature bundle")
    return body


def _usage(message: str) -> int:
    say(message)
    return EXIT_USAGE


def child(base: str, rel: str) -> str:
    """The URI of file ``rel`` under the artifact directory ``base`` (quoted for HTTP)."""
    if urllib.parse.urlsplit(base).scheme in ("http", "https"):
        rel = urllib.parse.quote(rel)
    return f"{base}/{rel}"


def safe_relative(path: str) -> str:
    """A manifest path must stay inside the artifact directory."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise Refused(f"manifest lists an unsafe path {path!r}")
    return path


def fetch_workers() -> int:
    """Threads that fetch and hash at once: every core (``MODEL_DELIVERY_HASH_THREADS``), within the memory limit."""
    from model_server.manifest import CHUNK_SIZE, hash_workers

    workers = hash_workers()
    for name in CGROUP_MEMORY:
        try:
            limit = int(Path(name).read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        return max(1, min(workers, limit // (READS_PER_THREAD * CHUNK_SIZE)))
    return workers


class DirectorySource:
    """An artifact directory of the store, ``<root>/<model>/sha256/<hex>``, holding ``MANIFEST.json``.

    Each file is read from the store's blobs, ``<blobs>/<its sha256>`` (``--blobs``, which the
    manifests take from ``model_delivery.store.layout``), or, in the legacy layout, beside the
    manifest. Its signature bundle is ``signature/model.sig`` in the artifact directory.
    """

    def __init__(self, uri: str, blobs: str | None = None) -> None:
        self.base = uri.rstrip("/")
        self.where = self.base
        self.blobs = blobs.rstrip("/") if blobs else None
        self.local = urllib.parse.urlsplit(self.base).scheme in ("", "file")

    def manifest(self, name: str) -> bytes:
        with open_uri(f"{self.base}/{name}") as handle:
            return handle.read()

    def check(self, files: dict[str, Any]) -> None:
        """Nothing beyond the manifest to compare."""

    def path(self, entry: dict[str, Any]) -> Path | None:
        """Where a file is on this machine (a local or mounted store), for reading its parts in parallel."""
        if not self.local:
            return None
        if self.blobs is not None:
            blob = Path(local_path(f"{self.blobs}/{entry['sha256']}"))
            if blob.is_file():
                return blob
        return Path(local_path(child(self.base, entry["path"])))

    def open(self, entry: dict[str, Any]) -> IO[bytes]:
        if self.blobs is not None:
            try:
                return open_uri(f"{self.blobs}/{entry['sha256']}")
            except FileNotFoundError:
                pass
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
        return open_uri(child(self.base, entry["path"]))

    def signatures(self) -> list[bytes]:
        """The artifact's signature bundle kept beside it in the store (none: empty)."""
        bundle = read_optional(f"{self.base}/{SIGNATURE_PATH}", MAX_BUNDLE)
        return [bundle] if bundle is not None else []


class OciSource:
    """An artifact in an OCI registry, read through the distribution API (``GET /v2/<repo>/...``)."""

    def __init__(self, uri: str, digest: str, insecure: bool) -> None:
        parts = urllib.parse.urlsplit(uri)
        repository, _, reference = parts.path.strip("/").partition("@")
        if not parts.netloc or not repository or parts.query or parts.fragment:
            raise ValueError(f"{uri}: not of the form oci://host[:port]/repository[@sha256:<OCI manifest digest>]")
        if reference and not re.fullmatch(r"sha256:[0-9a-f]{64}", reference):
            raise ValueError(f"{uri}: {reference!r} is not an OCI manifest digest (sha256:<64 hex digits>)")
        self.pinned = reference or None
        self.reference = reference or TAG_PREFIX + digest.removeprefix("sha256:")
        self.base = f"{'http' if insecure else 'https'}://{parts.netloc}/v2/{repository}"
        self.where = f"oci://{parts.netloc}/{repository}@{self.reference}"
        self.authorization: str | None = None
        self.layers: list[dict[str, Any]] = []
        self.oci_digest: str | None = None
        self.local = False

    def _request(self, path: str, accept: str | None = None) -> IO[bytes]:
        """GET ``path`` under the repository, answering one auth challenge (then keeping the answer)."""
        for attempt in (1, 2):
            request = urllib.request.Request(f"{self.base}/{path}")
            if accept:
                request.add_header("Accept", accept)
            if self.authorization:  # not sent on to a redirect's host (blobs are often served from a bucket)
                request.add_unredirected_header("Authorization", self.authorization)
            try:
                response: IO[bytes] = urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310
                return response
            except urllib.error.HTTPError as exc:
                if exc.code != 401 or attempt == 2:
                    raise
                self.authorization = authorize(exc.headers.get("WWW-Authenticate", ""), f"{self.base}/{path}")
        raise AssertionError("unreachable")

    def _small(self, path: str, limit: int, accept: str | None = None) -> bytes:
        with self._request(path, accept) as handle:
            body = handle.read(limit + 1)
        if len(body) > limit:
            raise Refused(f"{self.where}: {path} is larger than {limit} bytes")
        return body

    def _oci_manifest(self) -> bytes:
        body = self._small(f"manifests/{self.reference}", MAX_OCI_MANIFEST, OCI_MANIFEST)
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if self.pinned and actual != self.pinned:
            raise Refused(f"{self.where}: the registry answered with an OCI manifest that hashes to {actual}")
        self.oci_digest = actual
        return body

    def manifest(self, name: str) -> bytes:
        body = self._oci_manifest()
        try:
            self.layers = [x for x in json.loads(body)["layers"] if isinstance(x, dict)]
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(f"{self.where} is not an OCI image manifest: {exc}") from None
        ours = [x for x in self.layers if x.get("mediaType") == MANIFEST_MEDIA_TYPE]
        if len(ours) != 1:
            raise Refused(f"{self.where} has {len(ours)} layers of type {MANIFEST_MEDIA_TYPE}, not 1: not a "
                          "model-delivery artifact")
        self.layers.remove(ours[0])
        return self._small(f"blobs/{ours[0].get('digest')}", MAX_MANIFEST)

    def check(self, files: dict[str, Any]) -> None:
        """The OCI manifest's layers must be exactly the manifest's files, by path, sha256 and size."""
        by_title = {str((x.get("annotations") or {}).get(TITLE)): x for x in self.layers}
        want = {f["path"]: f for f in files["files"]}
        problems = [f"no layer for {p}" for p in sorted(want.keys() - by_title.keys())]
        problems += [f"unexpected layer {p}" for p in sorted(by_title.keys() - want.keys())]
        if len(by_title) != len(self.layers):
            problems.append("layers without a title, or with the same title")
        for path in sorted(want.keys() & by_title.keys()):
            layer, entry = by_title[path], want[path]
            if layer.get("digest") != "sha256:" + entry["sha256"] or layer.get("size") != entry["size"]:
                problems.append(f"{path}: layer {str(layer.get('digest'))[:19]}… of {layer.get('size')} bytes != "
                                f"sha256:{entry['sha256'][:12]}… of {entry['size']} bytes in the manifest")
        if problems:
            raise Refused(f"{self.where} does not hold the files of its manifest: " + "; ".join(problems))

    def path(self, entry: dict[str, Any]) -> Path | None:
        return None

    def open(self, entry: dict[str, Any]) -> IO[bytes]:
        return self._request(f"blobs/sha256:{entry['sha256']}")

    def _index(self, path: str) -> list[dict[str, Any]] | None:
        """The ``manifests`` of an OCI image index (the referrers list), or None when the registry has none there."""
        try:
            body = self._small(path, MAX_OCI_MANIFEST, OCI_INDEX)
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 404):  # no referrers API (distribution 2.x), or no such tag
                return None
            raise
        try:
            listed = json.loads(body)["manifests"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(f"{self.where}: {path} is not an OCI image index: {exc}") from None
        return [x for x in listed if isinstance(x, dict)] if isinstance(listed, list) else []

    def signatures(self) -> list[bytes]:
        """Sigstore bundles attached to the artifact's OCI manifest as referrers, as cosign attaches them.

        The referrers API (``GET referrers/<digest>``), else the referrers tag schema
        (``sha256-<hex>``, an image index); each referrer's manifest must name the artifact as its
        ``subject``, and its bundle layer must hash to its descriptor.
        """
        if self.oci_digest is None:
            self._oci_manifest()
        assert self.oci_digest is not None
        listed = self._index(f"referrers/{self.oci_digest}?artifactType={urllib.parse.quote(BUNDLE_MEDIA_TYPE)}")
        if listed is None:
            listed = self._index(f"manifests/{TAG_PREFIX}{self.oci_digest.removeprefix('sha256:')}") or []
        bundles: list[bytes] = []
        for item in listed:
            if item.get("artifactType") == BUNDLE_MEDIA_TYPE:
                bundles += self._referrer_bundles(str(item.get("digest")))
        return bundles

    def _referrer_bundles(self, reference: str) -> list[bytes]:
        """The bundle layers of one referrer, if its ``subject`` is this artifact; each checked against its digest."""
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", reference):
            raise Refused(f"{self.where}: a referrer has no valid digest ({reference[:80]!r})")
        body = self._small(f"manifests/{reference}", MAX_OCI_MANIFEST, OCI_MANIFEST)
        if "sha256:" + hashlib.sha256(body).hexdigest() != reference:
            raise Refused(f"{self.where}: the signature manifest {reference} does not hash to its digest")
        try:
            document = json.loads(body)
            subject, layers = (document.get("subject") or {}).get("digest"), list(document["layers"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Refused(f"{self.where}: the signature manifest {reference} is malformed: {exc}") from None
        if subject != self.oci_digest:
            return []  # about another artifact
        bundles = []
        for layer in layers:
            if isinstance(layer, dict) and layer.get("mediaType") == BUNDLE_MEDIA_TYPE:
                blob = self._small(f"blobs/{layer.get('digest')}", MAX_BUNDLE)
                if "sha256:" + hashlib.sha256(blob).hexdigest() != layer.get("digest"):
                    raise Refused(f"{self.where}: the signature bundle of {reference} does not hash to "
                                  f"{layer.get('digest')}")
                bundles.append(blob)
        return bundles


def authorize(challenge: str, url: str) -> str:
    """The Authorization header that answers a registry's ``WWW-Authenticate`` challenge."""
    scheme, _, rest = challenge.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    username, password = os.environ.get("OCI_USERNAME"), os.environ.get("OCI_PASSWORD", "")
    basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode() if username else None
    if scheme.lower() == "basic":
        if basic is None:
            raise PermissionError(f"{url} asks for a login: set OCI_USERNAME and OCI_PASSWORD (from a Secret)")
        return basic
    if scheme.lower() != "bearer" or not params.get("realm", "").startswith(("http://", "https://")):
        raise PermissionError(f"{url}: cannot answer the challenge {challenge[:200]!r}")
    query = urllib.parse.urlencode({k: params[k] for k in ("service", "scope") if k in params})
    request = urllib.request.Request(f"{params['realm']}?{query}" if query else params["realm"])
    if basic:
        request.add_unredirected_header("Authorization", basic)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as handle:  # noqa: S310 - http(s) checked above
        try:
            answer = json.loads(handle.read(1024 * 1024))
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
    if not token:
        raise PermissionError(f"the token service {params['realm']} gave no token for {url}")
    return f"Bearer {token}"


def checked_manifest(raw: bytes, digest: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest document and its canonical form (with part digests), once it hashes to ``digest``.

    Keys beyond each file's path, sha256, size and parts are kept as they are: the digest covers
    them, and the document is written back in its canonical form.
    """
    from model_server.manifest import ArtifactIntegrityError, manifest_digest, parse_manifest

    try:
        document = json.loads(raw)
        if manifest_digest(document) != digest:
            raise Refused(f"the manifest at {where} hashes to {manifest_digest(document)}, not {digest}")
        files = parse_manifest(document)
    except (ValueError, KeyError, TypeError, AttributeError, ArtifactIntegrityError) as exc:
        raise Refused(f"{where}/MANIFEST.json is not a valid manifest: {exc}") from None
    return document, files


# -- copying and verifying, on every core -----------------------------------------------------------


def stream_checked(src: IO[bytes], target: Path, entry: dict[str, Any], chunk_size: int | None) -> list[str]:
    """Copy a stream into ``target``, hashing each part of the file (or the whole file) as it passes."""
    from model_server.manifest import CHUNK_SIZE, describe_part, entry_checks

    problems: list[str] = []
    with open(target, "wb") as out:
        for offset, length, want in entry_checks(entry, chunk_size):
            digest, done = hashlib.sha256(), 0
            while done < length and (chunk := src.read(min(CHUNK_SIZE, length - done))):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
            if done < length:
                return [*problems, f"{entry['path']}: size {offset + done} != {entry['size']} in manifest"]
            if digest.hexdigest() != want:
                problems.append(f"{describe_part(entry, offset, length)}: sha256 {digest.hexdigest()[:12]}… != "
                                f"{want[:12]}…")
        if src.read(1):
            problems.append(f"{entry['path']}: larger than the {entry['size']} bytes in manifest")
    return problems


def copy_part(src: int, dst: int, entry: dict[str, Any], offset: int, length: int, want: str) -> list[str]:
    """Copy one part of a local file with ``pread``/``pwrite``, hashing it as it is written."""
    from model_server.manifest import ArtifactIntegrityError, describe_part, hash_range

    try:
        have = hash_range(src, offset, length, lambda position, chunk: os.pwrite(dst, chunk, position))
    except ArtifactIntegrityError as exc:  # the file shrank while it was read
        return [f"{describe_part(entry, offset, length)}: {exc}"]
    return [] if have == want else [f"{describe_part(entry, offset, length)}: sha256 {have[:12]}… != {want[:12]}…"]


class Copier:
    """Fetches the files of one manifest into a directory on a thread pool; collects every difference."""

    def __init__(self, source: DirectorySource | OciSource, manifest: dict[str, Any], tmp: Path,
                 pool: ThreadPoolExecutor) -> None:
        self.source, self.manifest, self.tmp, self.pool = source, manifest, tmp, pool
        self.chunk_size = manifest.get("chunk_size")
        self.jobs: list[Future[list[str]]] = []
        self.problems: list[str] = []
        self.descriptors: list[int] = []
        self.parallel_parts = 0

    def submit(self, entry: dict[str, Any]) -> None:
        from model_server.manifest import entry_checks

        target = self.tmp / safe_relative(entry["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        path = self.source.path(entry) if entry.get("chunks") else None
        if path is None:
            self.jobs.append(self.pool.submit(self._stream, entry, target))
            return
        size = path.stat().st_size  # missing: unreadable, as a stream that cannot be opened
        if size != entry["size"]:
            self.problems.append(f"{entry['path']}: size {size} != {entry['size']} in manifest")
            return
        src = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.descriptors.append(src)
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.descriptors.append(dst)
        os.ftruncate(dst, size)
        for offset, length, want in entry_checks(entry, self.chunk_size):
            self.jobs.append(self.pool.submit(copy_part, src, dst, entry, offset, length, want))
            self.parallel_parts += 1

    def _stream(self, entry: dict[str, Any], target: Path) -> list[str]:
        with self.source.open(entry) as src:
            return stream_checked(src, target, entry, self.chunk_size)

    def run(self) -> list[str]:
        """Copy every file; return every difference (an unreadable source raises ``OSError``)."""
        try:
            for entry in self.manifest["files"]:
                self.submit(entry)
            for job in self.jobs:
                self.problems += job.result()
        except BaseException:
            for job in self.jobs:
                job.cancel()
            raise
        finally:
            for job in self.jobs:  # no descriptor is closed under a running part
                if not job.cancelled():
                    job.exception()
            for fd in self.descriptors:
                os.close(fd)
        return self.problems


# -- the signature ------------------------------------------------------------------------------------

_SIGNATURE_FIX = "Fix: deploy an artifact signed by the release's key (run the release again with signing configured)"


def signature_problem(directory: Path, bundle: bytes, public_key: Path | None, ca: Path | None) -> str | None:
    """Why ``directory`` does not match a model-signing bundle (None when it does): ``model_server.signature``,
    the same check as ``md_supervise.py install-artifact`` on a host and ``model_delivery.signing`` on Airflow."""
    from model_server.signature import problem

    with tempfile.TemporaryDirectory(prefix="md-signature-") as scratch:
        signature = Path(scratch) / "model.sig"
        signature.write_bytes(bundle)
        return problem(directory, signature, public_key, ca, who="this pod", workers=fetch_workers())


class SignatureCheck:
    """What the pod verifies the artifact's signature against (``--signing``, ``--public-key`` / ``--ca``)."""

    def __init__(self, mode: str, public_key: Path | None, ca: Path | None, signature: str | None) -> None:
        self.mode, self.public_key, self.ca, self.signature = mode, public_key, ca, signature

    def bundles(self, source: DirectorySource | OciSource) -> tuple[list[bytes], str]:
        """The candidate bundles, and where they were looked for."""
        if self.signature:
            bundle = read_optional(self.signature, MAX_BUNDLE)
            return ([bundle] if bundle is not None else []), self.signature
        if isinstance(source, OciSource):
            return source.signatures(), f"the referrers of {source.where} (artifactType {BUNDLE_MEDIA_TYPE})"
        return source.signatures(), f"{source.base}/{SIGNATURE_PATH}"

    def found(self, source: DirectorySource | OciSource) -> tuple[list[bytes], str]:
        """The bundles, looked up before any file is copied: ``required`` and none is refused at once."""
        bundles, where = self.bundles(source)
        if not bundles and self.mode == "required":
            raise Refused(f"signature unsigned: signing is required and no signature came with the artifact "
                          f"(looked at {where}). {_SIGNATURE_FIX}")
        return bundles, where

    def verify(self, directory: Path, found: tuple[list[bytes], str]) -> str:
        """What was found (``signature verified ...``, or unsigned when optional); raises :class:`Refused` when the
        artifact must not be served."""
        bundles, where = found
        if not bundles:
            return f"signing is optional and the artifact has no signature ({where}): served unsigned"
        problems = []
        for bundle in bundles:  # several referrers: one that holds is enough, as cosign does
            problem = signature_problem(directory, bundle, self.public_key, self.ca)
            if problem is None:
                return f"signature verified ({'certificate' if self.ca else 'key'} method, {where})"
            problems.append(problem)
        raise Refused(f"signature {'; '.join(problems)}. {_SIGNATURE_FIX}")


def fetch(uri: str, digest: str, dest: Path, *, insecure: bool = False, blobs: str | None = None,
          signing: SignatureCheck | None = None) -> tuple[dict[str, Any], list[str]]:
    """Copy and verify the artifact at ``uri`` into ``dest`` (and its signature, when asked).

    :return: its manifest, and notes on how it was verified (threads, parts, signature).
    """
    from model_server.manifest import MANIFEST_NAME, ArtifactIntegrityError, manifest_bytes, verify_directory

    source = (OciSource(uri, digest, insecure) if urllib.parse.urlsplit(uri).scheme == "oci"
              else DirectorySource(uri, blobs))
    if dest.exists():
        try:
            manifest = verify_directory(dest, digest)
        except ArtifactIntegrityError:
            shutil.rmtree(dest)
        else:
            try:
                notes = [signing.verify(dest, signing.found(source))] if signing is not None else []
            except Refused:
                shutil.rmtree(dest, ignore_errors=True)
                raise
            say(f"{dest} already holds {digest}")
            return manifest, notes
    document, manifest = checked_manifest(source.manifest(MANIFEST_NAME), digest, source.where)
    source.check(manifest)
    found = signing.found(source) if signing is not None else None
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.mkdir(parents=True)
        workers = fetch_workers()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="md-fetch") as pool:
            copier = Copier(source, manifest, tmp, pool)
            problems = copier.run()
        if problems:
            raise Refused("; ".join(problems))
        (tmp / MANIFEST_NAME).write_bytes(manifest_bytes(document))
        notes = [f"hashed on {workers} thread(s)"
                 + (f", {copier.parallel_parts} part(s) of large files in parallel" if copier.parallel_parts else "")]
        if signing is not None and found is not None:
            notes.append(signing.verify(tmp, found))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, notes


def signature_check(args: argparse.Namespace) -> SignatureCheck | None:
    """The signature check the arguments ask for; ``SystemExit`` (2) when they do not fit or the image cannot."""
    if args.signing is None:
        if args.public_key or args.ca or args.signature:
            raise SystemExit(_usage("--public-key, --ca and --signature need --signing required|optional"))
        return None
    if (args.public_key is None) == (args.ca is None):
        raise SystemExit(_usage(f"--signing {args.signing} needs one of --public-key (key method) or --ca "
                                "(certificate method)"))
    for path in (args.public_key, args.ca):
        if path is not None and not path.is_file():
            raise SystemExit(_usage(f"{path} does not exist: the ConfigMap should carry it (signing in the spec)"))
    try:
        import model_signing  # noqa: F401
    except ImportError as exc:
        raise SystemExit(_usage(f"{INSTALL_SIGNING} ({exc})")) from None
    return SignatureCheck(args.signing, args.public_key, args.ca, args.signature)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch_artifact.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True, help="the artifact directory in the store")
    parser.add_argument("--digest", required=True, help="expected digest, sha256:<64 hex>")
    parser.add_argument("--dest", required=True, type=Path, help="directory to create")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to an oci:// registry")
    parser.add_argument("--blobs", help="where the store keeps each file by its sha256 (a store directory --uri)")
    parser.add_argument("--signing", choices=("required", "optional"),
                        help="verify the artifact's model-signing signature before it is put in place")
    parser.add_argument("--public-key", type=Path, help="verify with this EC public key (PEM): the key method")
    parser.add_argument("--ca", type=Path, help="verify the signing certificate against these CAs (PEM)")
    parser.add_argument("--signature", help="the bundle (URI or path); default: signature/model.sig in the "
                        "artifact directory, or the bundle attached to an oci:// artifact")
    args = parser.parse_args(argv)
    try:
        from model_server.manifest import ArtifactIntegrityError, parse_digest
    except ImportError:
        return _usage("the image has no model_server package: use the serving image (deploy.kubernetes.image)")
    try:
        parse_digest(args.digest)
    except ValueError as exc:
        return _usage(str(exc))
    try:
        signing = signature_check(args)
    except SystemExit as exc:
        return int(exc.code or EXIT_USAGE)
    try:
        manifest, notes = fetch(args.uri, args.digest, args.dest, insecure=args.insecure, blobs=args.blobs,
                                signing=signing)
    except ValueError as exc:  # an oci:// URI that names no repository
        return _usage(str(exc))
    except (Refused, ArtifactIntegrityError) as exc:
        say(f"refusing the artifact {args.digest} from {args.uri}: {exc}")
        return EXIT_INTEGRITY
    except OSError as exc:
        say(f"cannot read {args.uri}: {type(exc).__name__}: {exc}")
        return EXIT_UNREADABLE
    say(f"verified {len(manifest['files'])} file(s) of {args.digest} into {args.dest}"
        + "".join(f"; {note}" for note in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
