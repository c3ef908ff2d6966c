"""Fetch a model artifact into the pod and verify it, before the model server may start.

Runs as the init container of every model pod (shipped in the model's ConfigMap)::

    python fetch_artifact.py --uri URI --digest sha256:<hex> --dest /models/<hex>

``URI`` is the artifact's directory in the store: ``file:///...`` or a plain path (a mounted
volume), ``http(s)://...``, or any scheme fsspec knows (``s3://``, ``gs://``) when fsspec and
its filesystem package are installed in the image. Its files are the store's blobs
(``<root>/blobs/sha256/<sha256>``), or, in the legacy layout, beside ``MANIFEST.json``. Every
file listed in ``MANIFEST.json`` is streamed into a temporary directory and hashed in the same
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

Exit codes: 0 verified and in place (or already there); 1 the store could not be read (the
kubelet restarts the container); 2 bad arguments or an unusable image; 3 integrity failure
(the files or the manifest do not match the digest: never retried into success).
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
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path, PurePosixPath
from typing import IO, Any

EXIT_UNREADABLE = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3

# The OCI layout of model_delivery.store.oci (tests/integration/test_oci_store.py checks they agree).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.model-delivery.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
TAG_PREFIX = "sha256-"
MAX_OCI_MANIFEST = 4 * 1024 * 1024
MAX_MANIFEST = 256 * 1024 * 1024
TIMEOUT = 60


class Refused(Exception):
    """The artifact does not match its digest."""


def say(message: str) -> None:
    print(f"fetch_artifact: {message}", file=sys.stderr, flush=True)


def open_uri(uri: str) -> IO[bytes]:
    """Open one file of the store for reading, by scheme."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("", "file"):
        return open(urllib.parse.urlsplit(uri).path if scheme else uri, "rb")
    if scheme in ("http", "https"):
        return urllib.request.urlopen(uri, timeout=60)  # noqa: S310 - the scheme is checked above
    try:
        import fsspec

        handle: IO[bytes] = fsspec.open(uri, "rb").open()
    except ImportError as exc:
        raise SystemExit(_usage(f"{uri}: scheme {scheme!r} needs fsspec and its filesystem package in the image "
                                f"({exc})")) from None
    return handle


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


class DirectorySource:
    """An artifact directory of the store, ``<root>/<model>/sha256/<hex>``, holding ``MANIFEST.json``.

    Each file is read from the store's blobs, ``<blobs>/<its sha256>`` (``--blobs``, which the
    manifests take from ``model_delivery.store.layout``), or, in the legacy layout, beside the
    manifest.
    """

    def __init__(self, uri: str, blobs: str | None = None) -> None:
        self.base = uri.rstrip("/")
        self.where = self.base
        self.blobs = blobs.rstrip("/") if blobs else None

    def manifest(self, name: str) -> bytes:
        with open_uri(f"{self.base}/{name}") as handle:
            return handle.read()

    def check(self, files: dict[str, Any]) -> None:
        """Nothing beyond the manifest to compare."""

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

    def manifest(self, name: str) -> bytes:
        body = self._small(f"manifests/{self.reference}", MAX_OCI_MANIFEST, OCI_MANIFEST)
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if self.pinned and actual != self.pinned:
            raise Refused(f"{self.where}: the registry answered with an OCI manifest that hashes to {actual}")
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

    def open(self, entry: dict[str, Any]) -> IO[bytes]:
        return self._request(f"blobs/sha256:{entry['sha256']}")


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
    """The manifest document and its canonical file list, once it hashes to ``digest``.

    Keys beyond each file's path, sha256 and size (part digests, a part size) are kept as they
    are: the digest covers them, and the document is written back in its canonical form.
    """
    from model_server.manifest import ArtifactIntegrityError, canonical_manifest, manifest_digest

    try:
        document = json.loads(raw)
        if manifest_digest(document) != digest:
            raise Refused(f"the manifest at {where} hashes to {manifest_digest(document)}, not {digest}")
        files = canonical_manifest(
            [{"path": e["path"], "sha256": e["sha256"], "size": e["size"]} for e in document["files"]])
    except (ValueError, KeyError, TypeError, AttributeError, ArtifactIntegrityError) as exc:
        raise Refused(f"{where}/MANIFEST.json is not a valid manifest: {exc}") from None
    return document, files


def fetch(uri: str, digest: str, dest: Path, *, insecure: bool = False, blobs: str | None = None) -> dict[str, Any]:
    """Copy and verify the artifact at ``uri`` into ``dest``; return its manifest."""
    from model_server.manifest import (
        MANIFEST_NAME,
        ArtifactIntegrityError,
        canonical_manifest,
        compare_manifests,
        hash_stream,
        manifest_bytes,
        verify_directory,
    )

    if dest.exists():
        try:
            manifest = verify_directory(dest, digest)
            say(f"{dest} already holds {digest}")
            return manifest
        except ArtifactIntegrityError:
            shutil.rmtree(dest)
    source = (OciSource(uri, digest, insecure) if urllib.parse.urlsplit(uri).scheme == "oci"
              else DirectorySource(uri, blobs))
    document, manifest = checked_manifest(source.manifest(MANIFEST_NAME), digest, source.where)
    source.check(manifest)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.mkdir(parents=True)
        fetched = []
        for entry in manifest["files"]:
            rel = safe_relative(entry["path"])
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with source.open(entry) as src, open(target, "wb") as out:
                sha, size = hash_stream(src.read, out.write)
            fetched.append({"path": rel, "sha256": sha, "size": size})
        problems = compare_manifests(manifest, canonical_manifest(fetched))
        if problems:
            raise Refused("; ".join(problems))
        (tmp / MANIFEST_NAME).write_bytes(manifest_bytes(document))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch_artifact.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True, help="the artifact directory in the store")
    parser.add_argument("--digest", required=True, help="expected digest, sha256:<64 hex>")
    parser.add_argument("--dest", required=True, type=Path, help="directory to create")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to an oci:// registry")
    parser.add_argument("--blobs", help="where the store keeps each file by its sha256 (a store directory --uri)")
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
        manifest = fetch(args.uri, args.digest, args.dest, insecure=args.insecure, blobs=args.blobs)
    except ValueError as exc:  # an oci:// URI that names no repository
        return _usage(str(exc))
    except (Refused, ArtifactIntegrityError) as exc:
        say(f"refusing the artifact {args.digest} from {args.uri}: {exc}")
        return EXIT_INTEGRITY
    except OSError as exc:
        say(f"cannot read {args.uri}: {type(exc).__name__}: {exc}")
        return EXIT_UNREADABLE
    say(f"verified {len(manifest['files'])} file(s) of {args.digest} into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
