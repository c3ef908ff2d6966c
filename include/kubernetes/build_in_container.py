"""Run a model's build entrypoint inside its build container, then hand the outputs back.

The container build (``build.container`` in model.yaml) runs this with ``python -c`` in the
build image::

    --model-dir /workspace/model --entrypoint train.py --params '{...}' --output-dir /out
    [--upload-to <store URI of a staging directory>]

It runs ``python <model-dir>/<entrypoint> --output-dir OUT --params P`` (the same contract as a
local build) and, with ``--upload-to``, copies every output file there (``file://`` or any
fsspec scheme), writing ``_OUTPUTS.json`` (the list of files) last, as the commit marker.
Standard library only, plus fsspec for remote stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

MARKER = "_OUTPUTS.json"


def upload(out: Path, target: str) -> list[str]:
    """Copy the outputs to ``target``; the marker goes last."""
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    parts = urllib.parse.urlsplit(target)
    for rel in files:
        if parts.scheme in ("", "file"):
            dest = Path(parts.path if parts.scheme else target) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / rel, dest)
        else:
            import fsspec

            with open(out / rel, "rb") as src, fsspec.open(f"{target}/{rel}", "wb") as dst:
                shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    marker = json.dumps({"files": files})
    if parts.scheme in ("", "file"):
        (Path(parts.path if parts.scheme else target) / MARKER).write_text(marker)
    else:
        import fsspec

        with fsspec.open(f"{target}/{MARKER}", "w") as handle:
            handle.write(marker)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_in_container")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--upload-to")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(args.model_dir / args.entrypoint), "--output-dir", str(args.output_dir),
           "--params", args.params]
    print(f"build_in_container: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, cwd=os.environ.get("TMPDIR", "/tmp"))
    if code != 0:
        print(f"build_in_container: the entrypoint exited with code {code}", file=sys.stderr, flush=True)
        return code
    if args.upload_to:
        files = upload(args.output_dir, args.upload_to.rstrip("/"))
        print(f"build_in_container: uploaded {len(files)} file(s) to {args.upload_to}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
