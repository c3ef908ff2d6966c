"""Run a model's build entrypoint in the declared build environment, then hand the outputs back.

Every kind of build runs this same launcher: a process build on the worker
(``python launch.py``), a Docker build and a build pod (``python -c`` in the build image)::

    --model-dir DIR --entrypoint train.py --params '{...}' --output-dir OUT
    --env '{"pass": [...], "set": {...}}'  [--cwd DIR] [--upload-to <store URI of a staging directory>]

It runs ``python <model-dir>/<entrypoint> --output-dir OUT --params P`` with exactly the
environment ``--env`` declares (``model_delivery.build_env``): the ``pass`` variables taken
from this process's environment when set, then the ``set`` values. Nothing else of this
process's environment reaches the entrypoint (a build pod's store credentials stay here,
for the upload). It then probes what the build ran on, in the same environment, into
``OUT/build_env.json``. With ``--upload-to`` it copies every output file there (``file://``
or any fsspec scheme), writing ``_OUTPUTS.json`` (the list of files) last, as the commit marker.
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
ENV_FILE = "build_env.json"
KEY_LIBRARIES = ("numpy", "scipy", "scikit-learn", "pandas", "joblib", "torch", "transformers", "tokenizers",
                 "safetensors", "xgboost", "lightgbm")

# Runs in the build environment, after the build: what the entrypoint ran on.
PROBE = r"""
import importlib.metadata as md, json, os, platform, sys
found = {"python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                    "machine": platform.machine(), "executable": sys.executable},
         "platform": platform.platform(), "cpu_count": os.cpu_count(), "libraries": {}, "blas": [],
         "env": {k: os.environ[k] for k in sorted(os.environ) if k.endswith(("_NUM_THREADS", "_MAXIMUM_THREADS"))
                 or k.startswith("OPENBLAS_") or k in ("PYTHONHASHSEED", "MODEL_DELIVERY_SEED")}}
for name in json.loads(sys.argv[1]):
    try:
        found["libraries"][name] = md.version(name)
    except md.PackageNotFoundError:
        pass
try:
    import numpy
    try:
        import scipy.linalg
    except ImportError:
        pass
    from threadpoolctl import threadpool_info
    seen = set()
    for lib in threadpool_info():
        entry = {k: lib.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads",
                                         "threading_layer")}
        key = json.dumps(entry, sort_keys=True)
        if key not in seen:
            seen.add(key)
            found["blas"].append(entry)
except ImportError as exc:
    found["blas_error"] = str(exc)
print(json.dumps(found, sort_keys=True))
"""


def entrypoint_env(declared: dict[str, object]) -> dict[str, str]:
    """The entrypoint's whole environment: the passed-through variables that are set here, then the fixed ones."""
    env = {name: os.environ[name] for name in declared.get("pass", []) if name in os.environ}  # type: ignore[attr-defined]
    env.update({str(k): str(v) for k, v in dict(declared.get("set", {})).items()})  # type: ignore[call-overload]
    return env


def probe(env: dict[str, str], cwd: str) -> dict[str, object]:
    """What the build ran on, seen from the build's own Python and environment."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(KEY_LIBRARIES)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:] or f"the probe exited with code {done.returncode}"}
    return dict(json.loads(done.stdout))


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
    parser = argparse.ArgumentParser(prog="launch")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--env", default='{"pass": [], "set": {}}', help="the declared build environment (JSON)")
    parser.add_argument("--cwd", type=Path, help="the entrypoint's working directory (default: TMPDIR)")
    parser.add_argument("--upload-to")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    env = entrypoint_env(json.loads(args.env))
    cwd = str(args.cwd or env.get("TMPDIR") or "/tmp")
    cmd = [sys.executable, str(args.model_dir / args.entrypoint), "--output-dir", str(args.output_dir),
           "--params", args.params]
    print(f"launch: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, cwd=cwd, env=env)
    if code != 0:
        print(f"launch: the entrypoint exited with code {code}", file=sys.stderr, flush=True)
        return code
    (args.output_dir / ENV_FILE).write_text(json.dumps(probe(env, cwd), indent=2, sort_keys=True))
    if args.upload_to:
        files = upload(args.output_dir, args.upload_to.rstrip("/"))
        print(f"launch: uploaded {len(files)} file(s) to {args.upload_to}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
