"""OCI registry: push and pull throughput of a sharded artifact against ``cp`` of the same data.

The registry is Debian's ``docker-registry`` (CNCF distribution) on 127.0.0.1, started the way
the tests start it (``tests/helpers/oci_registry.oci_registry``: filesystem storage in this
benchmark's temp dir, plain HTTP, no auth).

* setup, untimed: N shards of incompressible bytes, put into a ``file://`` store
  (``ArtifactStore.put_directory``), read once so that every run reads from a warm page cache;
* ``push``: ``store.oci.push_stored`` into a repository that does not hold the blobs yet (a new
  repository name each round), i.e. every byte goes over HTTP, the registry hashes it and writes it
  into its storage;
* ``pull``: ``OciRepository.pull`` of that artifact into a new directory: every byte streamed from
  the registry, hashed as it is written, renamed into place when all matched;
* baseline: ``cp -r`` of the store's blobs of the artifact (the same bytes) into a new directory.

Each of ours runs in a fresh Python process and is timed inside it, after its imports; the
registry and ``cp`` both write into the page cache, and ``sync`` runs before and after each
operation, untimed, for ours and for ``cp`` alike (before, with a pause: see ``bench_store.SETTLE_S``). Ratio = cp's time / ours (above 1: faster than cp).

    .venv/bin/python bench/bench_oci.py [--quick] [--shards N] [--shard-mib N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PROJECT,
    finish,
    fmt_s,
    isolated_env,
    median,
    ratio_line,
    run_child,
    table,
    vm_hwm_kib,
    workdir,
)
from _common import settle as common_settle

NAME = "oci"
MODEL = "bench_model"
MIB = 1024 * 1024
SETTLE_S = 5.0  # before every timed operation, after `sync`: see bench_store.SETTLE_S (this VM's memory balloon)


def settle() -> None:
    common_settle(SETTLE_S)


def child(args: argparse.Namespace) -> int:
    """One push or pull in this process; write its time and own peak RSS as JSON."""
    from model_delivery.store import ArtifactStore
    from model_delivery.store.oci import OciRepository, push_stored

    result: dict[str, Any] = {"op": args.child}
    repository = OciRepository(args.uri, insecure=True)
    start = time.perf_counter()
    if args.child == "push":
        result.update(push_stored(ArtifactStore(args.store), MODEL, args.digest, repository))
    else:
        repository.pull(args.digest, Path(args.dest), oci_digest=args.oci_digest)
    result["seconds"] = time.perf_counter() - start
    result["hwm_kib"] = vm_hwm_kib()
    Path(args.out).write_text(json.dumps(result))
    return 0


def ours(op: str, env: dict[str, str], work: Path, **kw: str) -> dict[str, Any]:
    return run_child(str(Path(__file__).resolve()), op, env, work, SETTLE_S, **kw)


def timed_cp(src: list[Path], dest: Path) -> float:
    dest.mkdir()
    settle()
    start = time.perf_counter()
    subprocess.run(["cp", *map(str, src), str(dest)], check=True)
    took = time.perf_counter() - start
    subprocess.run(["sync"], check=True)
    shutil.rmtree(dest)
    return took


def setup(work: Path, shards: int, shard: int) -> tuple[str, str, list[Path]]:
    """A sharded artifact in a file:// store; its digest, the store URI and its blobs."""
    from model_delivery.store import ArtifactStore

    src = work / "src"
    src.mkdir()
    block = os.urandom(MIB)
    for index in range(shards):
        with open(src / f"model-{index:05d}.safetensors", "wb") as out:
            for i in range(shard // MIB):
                out.write(f"{index}:{i}:".encode().ljust(32, b".") + block[32:])
    uri = f"file://{work}/store"
    store = ArtifactStore(uri)
    stored = store.put_directory(MODEL, src)
    shutil.rmtree(src)
    manifest = store.read_manifest(MODEL, stored.digest)
    blobs = [Path(store.locate(MODEL, stored.digest, e).path) for e in manifest["files"]]
    for blob in blobs:  # warm the page cache
        with open(blob, "rb", buffering=0) as handle:
            while handle.read(8 * MIB):
                pass
    subprocess.run(["sync"], check=True)
    return uri, stored.digest, blobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for flag in ("--out", "--uri", "--store", "--digest", "--oci-digest", "--dest"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 x 64 MiB shards, 1 round")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.shards, args.shard_mib, args.rounds = 4, 64, 1
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    from tests.helpers.oci_registry import oci_registry

    started = time.perf_counter()
    samples: dict[str, list[dict[str, Any]]] = {"push": [], "pull": [], "cp": []}
    with workdir(NAME) as work:
        os.environ.update({k: v for k, v in isolated_env(work).items() if k.startswith(("AIRFLOW", "MODEL_DELIVERY"))})
        env = isolated_env(work)
        store, digest, blobs = setup(work, args.shards, args.shard_mib * MIB)
        total = sum(blob.stat().st_size for blob in blobs)
        with oci_registry(work / "registry") as registry:
            for index in range(args.rounds):  # interleaved: cp, push, pull, each round
                samples["cp"].append({"seconds": timed_cp(blobs, work / "cp-copy")})
                uri = registry.uri(f"bench/round-{index}")
                pushed = ours("push", env, work, uri=uri, store=store, digest=digest)
                pulled = ours("pull", env, work, uri=uri, digest=digest, oci_digest=pushed["oci_digest"],
                              dest=str(work / "pulled"))
                shutil.rmtree(work / "pulled")
                samples["push"].append(pushed)
                samples["pull"].append(pulled)
    gib = total / 1024**3
    times = {op: median([s["seconds"] for s in runs]) for op, runs in samples.items()}
    label = f"{args.shards} x {args.shard_mib} MiB"
    rows = [[label, op, fmt_s(times[op]), f"{gib / times[op]:.2f}",
             "" if op == "cp" else f"{times['cp'] / times[op]:.2f}x",
             "" if op == "cp" else f"{max(s['hwm_kib'] for s in samples[op]) / 1024:.0f}"]
            for op in ("cp", "push", "pull")]
    print(table(["case", "operation", f"time (median of {args.rounds})", "GiB/s", "cp / ours", "peak RSS MiB"], rows))
    lines = [ratio_line(f"oci_{op}", times["cp"] / times[op],
                        f"throughput of an OCI {op} to/from docker-registry on 127.0.0.1 / cp of the same "
                        f"{gib:.1f} GiB, median of {args.rounds}") for op in ("push", "pull")]
    document = {"bytes": total, "shards": args.shards, "shard_mib": args.shard_mib, "rounds": args.rounds,
                "samples": samples, "median_seconds": times}
    return finish(NAME, document, lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
