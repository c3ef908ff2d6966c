"""Run every benchmark in sequence (one at a time: the machine stays usable) and summarise.

Each benchmark is its own process with its own temporary environment; their ``RATIO``
lines are collected into one summary at the end. Exits non-zero only if a benchmark
failed (an error, never a slow result). ``make bench`` runs it without flags.

    .venv/bin/python bench/run_all.py [--quick] [--only parse,artifacts,store,oci,release,validation,ansible,vllm,lm_release,ledger,oip]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, PROJECT, table, write_results  # noqa: E402

BENCHMARKS = ("parse", "artifacts", "store", "oci", "release", "validation", "ansible", "vllm", "lm_release", "ledger",
              "oip")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="passed to each benchmark: 256 MiB artifact, fewer repeats")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}")

    started = time.perf_counter()
    ratios: list[str] = []
    rows = []
    failed = []
    for name in chosen:
        cmd = [sys.executable, "-u", str(BENCH / f"bench_{name}.py"), *(["--quick"] if args.quick else [])]
        print(f"\n===== bench_{name}.py {'--quick ' if args.quick else ''}=====", flush=True)
        start = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if line.startswith("RATIO "):
                    ratios.append(line.rstrip("\n"))
        seconds = time.perf_counter() - start
        rows.append([f"bench_{name}.py", "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})",
                     f"{seconds:.0f} s"])
        if proc.returncode != 0:
            failed.append(name)

    total = time.perf_counter() - started
    print("\n===== summary =====")
    print(table(["benchmark", "result", "time"], rows))
    print(f"total {total:.0f} s{' (quick)' if args.quick else ''}\n")
    for line in ratios:
        print(line)
    write_results("run_all", {"quick": args.quick, "seconds": total, "benchmarks": rows, "ratio_lines": ratios,
                              "failed": failed})
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (see the output above); results of the others are in "
              f"{(BENCH / 'results').relative_to(PROJECT)}/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
