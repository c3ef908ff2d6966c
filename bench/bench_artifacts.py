"""Artifact store, verify and fetch of one large file (1 GiB by default) against ``sha256sum``.

Baseline: ``sha256sum <file>`` (GNU coreutils), one read-and-hash pass.
Ours, each in its own fresh Python process:

* ``put``    ``ArtifactStore("file://<tmp>/store-N").put_directory(model, <dir holding the file>)``:
             copy into the store and hash, in one pass (a fresh store each time, so it is
             never the "already stored" path);
* ``verify`` ``ArtifactStore.verify(model, digest)``: re-hash the stored copy;
* ``fetch``  ``ArtifactStore.fetch(model, digest, <new dir>)``: copy out of the store,
             verifying as it streams.

Time of ours is the operation alone, timed inside the child after its imports; the
Python + Airflow import constant is reported on its own (``idle``: a process that only
imports ``model_delivery.store``). Peak RSS is the VmHWM of each process's own
address space (see ``_common.vm_hwm_kib`` for why not ``wait4``'s ru_maxrss); ours is
read by the child at the end, sha256sum's by polling /proc. The streaming claim is
checked by the peak-RSS delta of each operation over the idle import, against the file size.

The page cache cannot be dropped without root, so the file is read once before any
measurement: every operation reads from a warm cache (writes go to the page cache and
are flushed with ``sync`` between operations, untimed).

    .venv/bin/python bench/bench_artifacts.py [--quick] [--size-mib N] [--repeats N]
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
    finish,
    fmt_s,
    isolated_env,
    median,
    ratio_line,
    table,
    vm_hwm_kib,
    workdir,
)

NAME = "artifacts"
MODEL = "bench_model"
FILE_NAME = "weights.bin"
MIB = 1024 * 1024
GEN_CHUNK = 8 * MIB
OPS = ("put", "verify", "fetch")


# -- the child: one operation per process --------------------------------------------------------

def child(args: argparse.Namespace) -> int:
    """Import, run one operation, write timing and own peak RSS as JSON."""
    result: dict[str, Any] = {"op": args.child}
    import model_delivery.store as artifacts

    result["import_hwm_kib"] = vm_hwm_kib()
    if args.child != "idle":
        store = artifacts.ArtifactStore(args.store)
        start = time.perf_counter()
        if args.child == "put":
            stored = store.put_directory(MODEL, Path(args.src))
            result.update(stored.to_dict())
        elif args.child == "verify":
            store.verify(MODEL, args.digest)
        elif args.child == "fetch":
            dest = store.fetch(MODEL, args.digest, Path(args.dest))
            result["fetched_bytes"] = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        result["seconds"] = time.perf_counter() - start
        result["files_sha256"] = {f["path"]: f["sha256"] for f in store.read_manifest(
            MODEL, result.get("digest", args.digest))["files"]}
    result["hwm_kib"] = vm_hwm_kib()
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the parent ----------------------------------------------------------------------------------

def run_polled(cmd: list[str], env: dict[str, str], log: Path, program: str) -> dict[str, Any]:
    """Run ``cmd``; return wall time and the peak VmHWM seen while polling /proc (after exec)."""
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            try:  # before exec the child still shows the parent's memory: wait for the new program
                comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
            except OSError:
                comm = ""
            if comm == program[:15]:
                peak = max(peak, vm_hwm_kib(proc.pid) or 0)
            time.sleep(0.005)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "polled_hwm_kib": peak or None}


def run_op(op: str, env: dict[str, str], work: Path, **kw: str) -> dict[str, Any]:
    out = work / f"child-{op}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, "--out", str(out)]
    for key, value in kw.items():
        cmd += [f"--{key}", value]
    polled = run_polled(cmd, env, work / "children.log", Path(sys.executable).name)
    result = json.loads(out.read_text())
    out.unlink()
    result["process_wall_s"] = polled["wall_s"]
    result["peak_rss_mib"] = result["hwm_kib"] / 1024
    return result


def make_file(path: Path, size: int) -> None:
    """Random bytes (incompressible), written in chunks so this process stays small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(GEN_CHUNK, left)
            out.write(os.urandom(n))
            left -= n


def read_once(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(GEN_CHUNK):
            pass
    return time.perf_counter() - start


def choose_size(work: Path, requested_mib: int) -> int:
    """The file size in MiB: the request, made smaller if the disk is short (source + store + fetch copies)."""
    free_mib = shutil.disk_usage(work).free // MIB
    size = requested_mib
    if free_mib < 4096 or free_mib < 4 * requested_mib:
        size = max(0, min(requested_mib, free_mib // 4) // 64 * 64)
        print(f"WARNING: only {free_mib} MiB free under {work}; using a {size} MiB file instead of {requested_mib} MiB "
              "(the run needs about 3 copies on disk)", flush=True)
        if size < 64:
            raise SystemExit(f"not enough free disk space under {work} ({free_mib} MiB) for this benchmark")
    return size


def one_round(src_dir: Path, src: Path, env: dict[str, str], work: Path, r: int) -> dict[str, Any]:
    """sha256sum, cp (information), idle import, put, verify, fetch: one measurement each."""
    out: dict[str, Any] = {}
    sha = run_polled(["sha256sum", str(src)], env, work / "sha256sum.out", "sha256sum")
    out["sha256sum"] = {**sha, "seconds": sha["wall_s"], "peak_rss_mib": (sha["polled_hwm_kib"] or 0) / 1024}
    if shutil.which("openssl"):  # information: the same hash through OpenSSL, as Python's hashlib uses
        ossl = run_polled(["openssl", "dgst", "-sha256", str(src)], env, work / "openssl.out", "openssl")
        out["openssl"] = {**ossl, "seconds": ossl["wall_s"], "peak_rss_mib": (ossl["polled_hwm_kib"] or 0) / 1024}
    copy = work / "cp.bin"
    cp = run_polled(["cp", str(src), str(copy)], env, work / "cp.log", "cp")
    os.sync()
    out["cp"] = {**cp, "seconds": cp["wall_s"], "peak_rss_mib": (cp["polled_hwm_kib"] or 0) / 1024}
    copy.unlink()
    out["idle"] = run_op("idle", env, work)
    store = f"file://{work}/store-{r}"
    out["put"] = run_op("put", env, work, store=store, src=str(src_dir))
    os.sync()
    digest = out["put"]["digest"]
    out["verify"] = run_op("verify", env, work, store=store, digest=digest)
    dest = work / f"fetched-{r}"
    out["fetch"] = run_op("fetch", env, work, store=store, digest=digest, dest=str(dest))
    os.sync()
    shutil.rmtree(dest)
    shutil.rmtree(work / f"store-{r}")
    return out


def check(rounds: list[dict[str, Any]], size: int, work: Path) -> str:
    """Every operation must agree with sha256sum and move the whole file; return that sha."""
    line = (work / "sha256sum.out").read_text().split("\n")[0]
    expected = line.split()[0]
    for rnd in rounds:
        put = rnd["put"]
        if put["reused"] or put["size_bytes"] != size or put["files"] != 1:
            raise RuntimeError(f"unexpected put result: {put}")
        for op in OPS:
            if rnd[op]["files_sha256"].get(FILE_NAME) != expected:
                raise RuntimeError(f"{op}: manifest sha256 {rnd[op]['files_sha256']} != sha256sum {expected}")
        if rnd["fetch"]["fetched_bytes"] < size:
            raise RuntimeError(f"fetch copied {rnd['fetch']['fetched_bytes']} bytes, expected {size}")
    return expected


def summarise(rounds: list[dict[str, Any]], size_mib: int) -> dict[str, dict[str, float]]:
    summary = {}
    for name in ("sha256sum", "openssl", "cp", "idle", *OPS):
        runs = [r[name] for r in rounds if name in r]
        if not runs:
            continue
        entry = {"peak_rss_mib": median([x["peak_rss_mib"] for x in runs]),
                 "process_wall_s": median([x.get("process_wall_s", x.get("wall_s", 0.0)) for x in runs])}
        if name != "idle":
            secs = [x["seconds"] for x in runs]
            entry.update(seconds=median(secs), min_seconds=min(secs), max_seconds=max(secs),
                         mib_per_s=size_mib / median(secs))
        summary[name] = entry
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 MiB file, 2 repeats")
    parser.add_argument("--size-mib", type=int, default=None, help="file size in MiB (default 1024, quick 256)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5, quick 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (debugging)")
    for name in ("child", "out", "store", "src", "digest", "dest"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    requested = args.size_mib or (256 if args.quick else 1024)
    repeats = args.repeats or (2 if args.quick else 5)
    started = time.perf_counter()

    with workdir(NAME, keep=args.keep) as work:
        size_mib = choose_size(work, requested)
        size = size_mib * MIB
        env = isolated_env(work)
        src_dir = work / "model"
        src = src_dir / FILE_NAME
        print(f"writing a {size_mib} MiB file of random bytes: {src}", flush=True)
        gen = time.perf_counter()
        make_file(src, size)
        os.sync()
        print(f"  written and synced in {time.perf_counter() - gen:.1f} s; reading it once to warm the page cache "
              f"(all measurements read from a warm cache) ...", flush=True)
        print(f"  warm-up read: {read_once(src):.2f} s", flush=True)

        rounds = []
        for r in range(repeats):
            rnd = one_round(src_dir, src, env, work, r)
            rounds.append(rnd)
            print(f"round {r + 1}/{repeats}: " + ", ".join(
                f"{k} {fmt_s(rnd[k]['seconds'])}" for k in ("sha256sum", "openssl", "cp", *OPS) if k in rnd), flush=True)
        sha = check(rounds, size, work)

    s = summarise(rounds, size_mib)
    base_t, base_rss, idle_rss = s["sha256sum"]["seconds"], s["sha256sum"]["peak_rss_mib"], s["idle"]["peak_rss_mib"]
    rows = []
    for name, label in (("sha256sum", "sha256sum (baseline)"), ("openssl", "openssl dgst -sha256 (information)"),
                        ("cp", "cp (information: in-kernel copy)"),
                        ("idle", "python: import model_delivery.store"), ("put", "put_directory (copy+hash)"),
                        ("verify", "verify (re-hash store copy)"), ("fetch", "fetch (copy out+verify)")):
        if name not in s:
            continue
        e = s[name]
        timed = name != "idle"
        rows.append([label, fmt_s(e["seconds"]) if timed else "-", fmt_s(e["min_seconds"]) if timed else "-",
                     f"{e['mib_per_s']:.0f}" if timed else "-",
                     f"{e['seconds'] / base_t:.2f}x" if timed else "-", f"{e['peak_rss_mib']:.1f}",
                     f"{e['peak_rss_mib'] / base_rss:.1f}x",
                     f"{e['peak_rss_mib'] - idle_rss:+.1f}" if name in OPS else "-",
                     fmt_s(e["process_wall_s"])])
    print(f"\n{size_mib} MiB file, warm page cache, median of {repeats}; time of ours = the operation only "
          "(imports excluded, see process wall)")
    print(table(["operation", "time", "min", "MiB/s", "time vs sha256sum", "peak RSS MiB", "RSS vs sha256sum",
                 "RSS over idle MiB", "process wall"], rows))
    deltas = {op: s[op]["peak_rss_mib"] - idle_rss for op in OPS}
    worst = max(deltas, key=lambda k: deltas[k])
    streaming = deltas[worst] < 0.25 * size_mib
    print("\npeak RSS delta over the idle import: " + ", ".join(f"{op} {d:+.1f} MiB" for op, d in deltas.items())
          + f"; the largest ({worst}, {deltas[worst]:.1f} MiB) is {100 * deltas[worst] / size_mib:.1f}% of the "
          f"{size_mib} MiB file: " + ("nothing holds the file in memory (streamed in chunks)." if streaming else
                                       "WARNING: an operation holds a large part of the file in memory."))
    print(f"sha256 of the file, agreed by sha256sum and all manifests: {sha}")

    lines = [ratio_line(f"artifacts_{op}", s[op]["seconds"] / base_t,
                        f"ArtifactStore.{'put_directory' if op == 'put' else op} time / sha256sum time, "
                        f"{size_mib} MiB, warm cache; peak RSS {s[op]['peak_rss_mib'] / base_rss:.0f}x sha256sum's")
             for op in OPS]
    lines.append(ratio_line("artifacts_rss_delta", deltas[worst] / size_mib,
                            f"largest peak-RSS delta over idle import ({worst}) / file size"))
    elapsed = time.perf_counter() - started
    return finish(NAME, {"size_mib": size_mib, "requested_size_mib": requested, "repeats": repeats,
                                "quick": args.quick, "seconds": elapsed, "summary": s, "rss_delta_mib": deltas,
                                "streaming_ok": streaming, "sha256": sha, "rounds": rounds}, lines, elapsed)


if __name__ == "__main__":
    sys.exit(main())
