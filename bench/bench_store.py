"""The store's data path at the machine's limit: put, verify and fetch of a sharded artifact and
of one large file, dedup, and resume after a kill, each against its baseline in the same run.

Cases (sizes by flag; the issue's are the defaults: 16 x 1 GiB shards, one 8 GiB file):

* baseline ``hash``: ``openssl dgst -sha256`` of every file, one process per file, up to the
  core count at once (``xargs -P``), so the baseline uses every core too;
* baseline ``cp``: ``cp -r`` of the source directory; ``sync`` after it, untimed, as after each of ours
  (neither side's time includes the flush to disk), and before each, with a pause
  (:data:`SETTLE_S`, for this VM's memory balloon);
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

    .venv/bin/python bench/bench_store.py [--quick] [--shards N] [--shard-mib N] [--single-mib N] [--repeats N]
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

from _common import finish, fmt_s, isolated_env, median, ratio_line, run_child, table, vm_hwm_kib, workdir  # noqa: E402
from _common import settle as common_settle

NAME = "store"
MODEL = "bench_model"
MIB = 1024 * 1024
# This VM's balloon reports freed memory to the host (virtio-balloon free page reporting, ~2 s
# after it is freed); the first write into such memory faults it back in on the host. Without a
# pause, whichever operation came right after a large deletion paid for it (the put, after the
# cp copy was removed: 2-5x slower, all of it system time). So every timed operation, ours and
# the baselines alike, starts after `sync` and this pause, with nothing freed in between.
SETTLE_S = 5.0


def settle() -> None:
    common_settle(SETTLE_S)


def child(args: argparse.Namespace) -> int:
    """One operation in this process; write its time and own peak RSS as JSON."""
    import model_delivery.store.artifacts as artifacts
    from model_delivery.store import ArtifactStore

    result: dict[str, Any] = {"op": args.child, "import_hwm_kib": vm_hwm_kib()}
    if args.child != "idle":
        store = ArtifactStore(args.store, link=args.link)
        if args.kill_at:  # die with SIGKILL once this much has been uploaded: no clean-up runs
            seen, limit = [0], int(args.kill_at)

            def count(done: Any) -> Any:
                def counted(n: int) -> None:
                    done(n)
                    seen[0] += n
                    if seen[0] >= limit:
                        os.kill(os.getpid(), signal.SIGKILL)
                return counted

            copy_files, copy_hashing = artifacts.copy_files_verified, artifacts.copy_hashing
            artifacts.copy_files_verified = (  # type: ignore[assignment]
                lambda files, size, *, done, pool=None: copy_files(files, size, done=count(done), pool=pool))
            artifacts.copy_hashing = (  # type: ignore[assignment]
                lambda src, dst, size, *, done: copy_hashing(src, dst, size, done=count(done)))
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
    return run_child(str(Path(__file__).resolve()), op, env, work, SETTLE_S, **kw)


def timed(cmd: list[str] | str, shell: bool = False) -> float:
    settle()
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


def one_case(label: str, files: dict[str, int], work: Path, env: dict[str, str], idle_mib: float,
             repeats: int) -> tuple[list[list[Any]], list[str], dict[str, Any]]:
    """Every operation and both baselines, interleaved, ``repeats`` rounds; medians compared."""
    src = work / f"src-{label}"
    make_source(src, files)
    total = sum(files.values())
    gib = total / 1024**3
    store = f"file://{work}/store-{label}"
    runs: dict[str, list[dict[str, Any]]] = {op: [] for op in ("hash", "cp", "put", "verify", "fetch", "linked")}
    for _ in range(repeats):
        runs["hash"].append({"seconds": parallel_openssl(src)})
        runs["cp"].append({"seconds": timed(["cp", "-r", str(src), str(work / "cp-copy")])})
        shutil.rmtree(work / "cp-copy")
        shutil.rmtree(work / f"store-{label}", ignore_errors=True)  # every put into a fresh store
        runs["put"].append(ours("put", env, work, store=store, src=str(src), link="copy"))
        digest = runs["put"][-1]["digest"]
        runs["verify"].append(ours("verify", env, work, store=store, digest=digest, link="copy"))
        runs["fetch"].append(ours("fetch", env, work, store=store, digest=digest, dest=str(work / "fetched"),
                                  link="copy"))
        shutil.rmtree(work / "fetched")
        runs["linked"].append(ours("fetch", env, work, store=store, digest=digest, dest=str(work / "linked"),
                                   link="hardlink"))
        shutil.rmtree(work / "linked")
    t = {op: median([run["seconds"] for run in samples]) for op, samples in runs.items()}
    hash_s, cp_s = t["hash"], t["cp"]
    rows = [
        [label, "openssl dgst -sha256 (parallel)", fmt_s(hash_s), f"{gib / hash_s:.2f}", "", ""],
        [label, "cp -r", fmt_s(cp_s), f"{gib / cp_s:.2f}", "", ""],
    ]
    for name, op, base in (("put", "put", cp_s + hash_s), ("verify", "verify", hash_s),
                           ("fetch (copy)", "fetch", cp_s + hash_s), ("fetch (hardlink)", "linked", cp_s + hash_s)):
        rss = max(run["hwm_kib"] for run in runs[op]) / 1024 - idle_mib
        rows.append([label, name, fmt_s(t[op]), f"{gib / t[op]:.2f}", f"{base / t[op]:.2f}x", f"{rss:+.0f}"])
    of = f"{gib:.1f} GiB, median of {repeats}"
    lines = [
        ratio_line(f"store_verify_{label}", hash_s / t["verify"],
                   f"throughput of verify / parallel openssl dgst, {of} (goal >= 0.9)"),
        ratio_line(f"store_put_{label}", (cp_s + hash_s) / t["put"],
                   f"throughput of put / cp then parallel openssl, {of} (goal >= 0.9)"),
        ratio_line(f"store_fetch_{label}", (cp_s + hash_s) / t["fetch"],
                   f"throughput of a copying fetch / cp then parallel openssl, {of} (goal >= 0.9)"),
    ]
    worst = max(run["hwm_kib"] for op in ("put", "verify", "fetch", "linked") for run in runs[op]) / 1024 - idle_mib
    lines.append(ratio_line(f"store_rss_{label}", worst / 64, "peak RSS over an idle process / 64 MiB (goal <= 1)"))
    document = {"bytes": total, "median_seconds": t, "runs": runs, "peak_rss_over_idle_mib": worst}
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
                   "time to finish a put killed at 50% / a full put (0.5 only if the stored half cost nothing to "
                   "re-check: it is hashed in place again; see bench/README.md)"),
    ]
    return lines, {"changed_one_shard": changed, "full_put": full, "killed": killed, "resumed": resumed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for flag in ("--out", "--store", "--src", "--digest", "--dest", "--link", "--kill-at"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 x 64 MiB shards and one 256 MiB file, 1 round")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-mib", type=int, default=1024)
    parser.add_argument("--single-mib", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every operation and baseline (medians)")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.shards, args.shard_mib, args.single_mib, args.repeats = 4, 64, 256, 1
    started = time.perf_counter()
    with workdir(NAME) as work:
        env = isolated_env(work)
        idle = ours("idle", env, work)["hwm_kib"] / 1024
        shard = args.shard_mib * MIB
        rows, lines, document = one_case("sharded", {f"model-{i:05d}.safetensors": shard for i in range(args.shards)},
                                         work, env, idle, args.repeats)
        more, dedup = dedup_and_resume(args.shards, shard, work, env)
        shutil.rmtree(work / "src-sharded")
        shutil.rmtree(work / "store-sharded")
        shutil.rmtree(work / "store-resume")
        single_rows, single_lines, single = one_case("single", {"weights.bin": args.single_mib * MIB}, work, env, idle,
                                                        args.repeats)
    print(table(["case", "operation", "time", "GiB/s", "vs baseline", "RSS over idle MiB"], rows + single_rows))
    document = {"idle_rss_mib": idle, "sharded": document, "single": single, "dedup_resume": dedup,
                "shards": args.shards, "shard_mib": args.shard_mib, "single_mib": args.single_mib,
                "repeats": args.repeats}
    return finish(NAME, document, lines + more + single_lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
