"""Fetch a model artifact into the pod and verify it, before the model server may start.

Runs as the init container of every model pod (shipped in the model's ConfigMap)::

    python fetch_artifact.py --uri URI --digest sha256:<hex> --dest /models/<hex>

``URI`` is the artifact's directory in the store: ``file:///...`` or a plain path (a mounted
volume), ``http(s)://...``, or any scheme fsspec knows (``s3://``, ``gs://``) when fsspec and
its filesystem package are installed in the image. Every file listed in ``MANIFEST.json`` is
streamed into a temporary directory and hashed in the same pass; the manifest must hash to
``--digest`` and every file to its manifest entry, or nothing is put in place. The digest is
defined once, in ``model_server.manifest``, which the serving image carries.

Exit codes: 0 verified and in place (or already there); 1 the store could not be read (the
kubelet restarts the container); 2 bad arguments or an unusable image; 3 integrity failure
(the files or the manifest do not match the digest: never retried into success).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path, PurePosixPath
from typing import IO, Any

EXIT_UNREADABLE = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3


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


def fetch(uri: str, digest: str, dest: Path) -> dict[str, Any]:
    """Copy and verify the artifact at ``uri`` into ``dest``; return its manifest."""
    from model_server.manifest import (
        MANIFEST_NAME,
        ArtifactIntegrityError,
        canonical_manifest,
        compare_manifests,
        hash_stream,
        manifest_bytes,
        manifest_digest,
        verify_directory,
    )

    if dest.exists():
        try:
            manifest = verify_directory(dest, digest)
            say(f"{dest} already holds {digest}")
            return manifest
        except ArtifactIntegrityError:
            shutil.rmtree(dest)
    base = uri.rstrip("/")
    with open_uri(f"{base}/{MANIFEST_NAME}") as handle:
        raw = handle.read()
    try:
        manifest = canonical_manifest(json.loads(raw)["files"])
    except (ValueError, KeyError, TypeError, ArtifactIntegrityError) as exc:
        raise Refused(f"{base}/{MANIFEST_NAME} is not a valid manifest: {exc}") from None
    if manifest_digest(manifest) != digest:
        raise Refused(f"the manifest at {base} hashes to {manifest_digest(manifest)}, not {digest}")
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        fetched = []
        for entry in manifest["files"]:
            rel = safe_relative(entry["path"])
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_uri(child(base, rel)) as src, open(target, "wb") as out:
                sha, size = hash_stream(src.read, out.write)
            fetched.append({"path": rel, "sha256": sha, "size": size})
        problems = compare_manifests(manifest, canonical_manifest(fetched))
        if problems:
            raise Refused("; ".join(problems))
        (tmp / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
        verify_directory(tmp, digest)
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
        manifest = fetch(args.uri, args.digest, args.dest)
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
