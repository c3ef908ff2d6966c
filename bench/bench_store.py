"""The store's data path at the machine's limit: put, verify and fetch of a sharded artifact and
of one large file, dedup, and resume after a kill, each against its baseline in the same run.

Cases (sizes by flag; the issue's are the defaults: 16 x 1 GiB shards, one 8 GiB file):

* baseline ``hash``: ``openssl dgst -sha256`` of every file, one process per file, up to the
  core count at once (``xargs -P``), so the baseline uses every core too;
* baseline ``cp``: ``cp -r`` of the source directory, then ``sync`` (untimed, for both sides);
* ``put``: ``ArtifactStore.put_directory`` into a fresh store (hash in place, upload, verify
  every part as it is copied); its baseline is ``cp`` followed by ``hash``;
* ``verify``: ``ArtifactStore.verify`` (every part on every core); its baseline is ``hash``;
* ``fetch``: ``ArtifactStore.fetch`` with ``link="copy"`` (a real verified copy) and, as a
  second row, ``link="hardlink"`` (the same filesystem: no bytes move, every part hashed);
  its baseline is ``cp`` followed by ``hash``;
* peak RSS of each operation's process over an idle process that only imports the store
  (the goal: within 64 MiB at any size);
* dedup: the bytes a put uploads for a version that changes 1 shard of N;
* resume: a put killed with SIGKILL at 50% of its upload, then run again: the time to finish
  against a full put.

Each of ours runs in a fresh Python process (timed inside it, after its imports). Every file
is read once before anything is timed: all runs read from a warm page cache when it fits.

    .venv/bin/python bench/bench_store.py [--quick] [--shards N] [--shard-mib N] [--single-mib N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import finish, fmt_s, isolated_env, ratio_line, table, vm_hwm_kib, workdir  # noqa: E402

NAME = "store"
MODEL = "bench_model"
MIB = 1024 * 1024


def child(args: argparse.Namespace) -> int:
    """One operation in this process; write its time and own peak RSS as JSON."""
    import model_delivery.store.artifacts as artifacts
    from model_delivery.store import ArtifactStore

    result: dict[str, Any] = {"op": args.child, "import_hwm_kib": vm_hwm_kib()}
    if args.child != "idle":
        store = ArtifactStore(args.store, link=args.link)
        if args.kill_at:  # die with SIGKILL once this much has been uploaded: no clean-up runs
            real, seen, limit = artifacts.copy_verified, [0], int(args.kill_at)

            def copy_then_die(src: Any, dst: Any, entry: Any, chunk_size: Any, *, done: Any = None,
                              workers: Any = None) -> int:
                def count(n: int) -> None:
                    done(n)
                    seen[0] += n
                    if seen[0] >= limit:
                        os.kill(os.getpid(), signal.SIGKILL)
                return int(real(src, dst, entry, chunk_size, done=count, workers=workers))

            artifacts.copy_verified = copy_then_die  # type: ignore[assignment]
        start = time.perf_counter()
        if args.child == "put":
            result.update(store.put_directory(MODEL, Path(args.src)).to_dict())
        elif args.child == "verify":
            store.verify(MODEL, args.digest)
        elif args.child == "fetch":
            store.fetch(MODEL, args.digest, Path(args.dest))
        result["seconds"] = time.perf_counter() - start
    result["hwm_kib"] = vm_hwm_kib()
    Path(args.out).write_text(json.dumps(result))
    return 0


def ours(op: str, env: dict[str, str], work: Path, **kw: str) -> dict[str, Any]:
    out = work / f"child-{op}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, "--out", str(out)]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    with open(work / "children.log", "ab") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code == -signal.SIGKILL:
        return {"killed": True}
    if code != 0:
        raise RuntimeError(f"{op} exited {code}: {(work / 'children.log').read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    subprocess.run(["sync"], check=True)
    return result


def timed(cmd: list[str] | str, shell: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    subprocess.run(["sync"], check=True)
    return took


def parallel_openssl(directory: Path) -> float:
    files = " ".join(f"'{p}'" for p in sorted(directory.rglob("*")) if p.is_file())
    return timed(f"printf '%s\\n' {files} | xargs -P {os.cpu_count() or 1} -n 1 openssl dgst -sha256", shell=True)


def make_source(directory: Path, files: dict[str, int]) -> None:
    """Incompressible files, each MiB different, written without holding a file in memory."""
    directory.mkdir(parents=True)
    block = os.urandom(MIB)
    for name, size in files.items():
        with open(directory / name, "wb") as out:
            for i in range(size // MIB):
                out.write(f"{name}:{i}:".encode().ljust(32, b".") + block[32:])
    for path in directory.iterdir():  # warm the page cache
        with open(path, "rb", buffering=0) as handle:
            while handle.read(8 * MIB):
                pass


def one_case(label: str, files: dict[str, int], work: Path, env: dict[str, str],
             idle_mib: float) -> tuple[list[list[Any]], list[str], dict[str, Any]]:
    src = work / f"src-{label}"
    make_source(src, files)
    total = sum(files.values())
    gib = total / 1024**3
    hash_s = parallel_openssl(src)
    cp_s = timed(["cp", "-r", str(src), str(work / "cp-copy")])
    shutil.rmtree(work / "cp-copy")
    store = f"file://{work}/store-{label}"
    put = ours("put", env, work, store=store, src=str(src), link="copy")
    verify = ours("verify", env, work, store=store, digest=put["digest"], link="copy")
    fetch = ours("fetch", env, work, store=store, digest=put["digest"], dest=str(work / "fetched"), link="copy")
    shutil.rmtree(work / "fetched")
    linked = ours("fetch", env, work, store=store, digest=put["digest"], dest=str(work / "linked"), link="hardlink")
    shutil.rmtree(work / "linked")
    rows = [
        [label, "openssl dgst -sha256 (parallel)", fmt_s(hash_s), f"{gib / hash_s:.2f}", "", ""],
        [label, "cp -r", fmt_s(cp_s), f"{gib / cp_s:.2f}", "", ""],
    ]
    for name, run, base in (("put", put, cp_s + hash_s), ("verify", verify, hash_s),
                            ("fetch (copy)", fetch, cp_s + hash_s), ("fetch (hardlink)", linked, cp_s + hash_s)):
        rss = run["hwm_kib"] / 1024 - idle_mib
        rows.append([label, name, fmt_s(run["seconds"]), f"{gib / run['seconds']:.2f}", f"{base / run['seconds']:.2f}x",
                     f"{rss:+.0f}"])
    lines = [
        ratio_line(f"store_verify_{label}", hash_s / verify["seconds"],
                   f"throughput of verify / parallel openssl dgst, {gib:.1f} GiB (goal >= 0.9)"),
        ratio_line(f"store_put_{label}", (cp_s + hash_s) / put["seconds"],
                   f"throughput of put / cp then parallel openssl, {gib:.1f} GiB (goal >= 0.9)"),
        ratio_line(f"store_fetch_{label}", (cp_s + hash_s) / fetch["seconds"],
                   f"throughput of a copying fetch / cp then parallel openssl, {gib:.1f} GiB (goal >= 0.9)"),
    ]
    worst = max(run["hwm_kib"] for run in (put, verify, fetch, linked)) / 1024 - idle_mib
    lines.append(ratio_line(f"store_rss_{label}", worst / 64, "peak RSS over an idle process / 64 MiB (goal <= 1)"))
    document = {"bytes": total, "hash_s": hash_s, "cp_s": cp_s, "put": put, "verify": verify, "fetch": fetch,
                "fetch_hardlink": linked, "peak_rss_over_idle_mib": worst}
    return rows, lines, document


def dedup_and_resume(shards: int, shard: int, work: Path, env: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    src = work / "src-sharded"
    store = f"file://{work}/store-sharded"
    victim = sorted(src.iterdir())[0]
    with open(victim, "r+b") as handle:  # a retrained shard: same size, new bytes
        handle.write(os.urandom(MIB))
    changed = ours("put", env, work, store=store, src=str(src), link="copy")
    resume_store = f"file://{work}/store-resume"
    full = ours("put", env, work, store=resume_store, src=str(src), link="copy")
    shutil.rmtree(work / "store-resume")
    killed = ours("put", env, work, store=resume_store, src=str(src), link="copy", kill_at=str(shards * shard // 2))
    resumed = ours("put", env, work, store=resume_store, src=str(src), link="copy")
    lines = [
        ratio_line("store_dedup", changed["uploaded_bytes"] / (shards * shard),
                   f"bytes uploaded for a version changing 1 of {shards} shards / the artifact's bytes"),
        ratio_line("store_resume", resumed["seconds"] / full["seconds"],
                   "time to finish a put killed at 50% / a full put (goal about 0.5)"),
    ]
    return lines, {"changed_one_shard": changed, "full_put": full, "killed": killed, "resumed": resumed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for flag in ("--out", "--store", "--src", "--digest", "--dest", "--link", "--kill-at"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 x 64 MiB shards and one 256 MiB file")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-mib", type=int, default=1024)
    parser.add_argument("--single-mib", type=int, default=8192)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.shards, args.shard_mib, args.single_mib = 4, 64, 256
    started = time.perf_counter()
    with workdir(NAME) as work:
        env = isolated_env(work)
        idle = ours("idle", env, work)["hwm_kib"] / 1024
        shard = args.shard_mib * MIB
        rows, lines, document = one_case("sharded", {f"model-{i:05d}.safetensors": shard for i in range(args.shards)},
                                         work, env, idle)
        more, dedup = dedup_and_resume(args.shards, shard, work, env)
        shutil.rmtree(work / "src-sharded")
        shutil.rmtree(work / "store-sharded")
        shutil.rmtree(work / "store-resume")
        single_rows, single_lines, single = one_case("single", {"weights.bin": args.single_mib * MIB}, work, env, idle)
    print(table(["case", "operation", "time", "GiB/s", "vs baseline", "RSS over idle MiB"], rows + single_rows))
    document = {"idle_rss_mib": idle, "sharded": document, "single": single, "dedup_resume": dedup,
                "shards": args.shards, "shard_mib": args.shard_mib, "single_mib": args.single_mib}
    return finish(NAME, document, lines + more + single_lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
