"""A release of a multi-GB code_lm: wall time per stage, which stage dominates, against moving the bytes.

The stages run as ``bench/plain_release.py`` runs them (the DAG's order, no scheduler), on a
copy of the code_lm spec whose build makes a Llama of about 2.1 GB in float32 (10 layers,
hidden 2048, untrained: ``steps: 0``; the size is what is measured, not the quality). The copy's
gate, golden prompts and latency budgets are opened up so that an untrained model is released;
everything else (sandboxed scoring on held-out blocks, the store, the registry, a real vLLM
behind the front port, the smoke test over the OpenAI API, verify, promote) is what a release does.

Baseline, in the same run: what the bytes alone cost on this machine, ``cp -r`` of the stored
artifact plus ``openssl dgst -sha256`` of its files. RATIO = release wall / baseline wall.

    .venv/bin/python bench/bench_lm_release.py [--quick]     # --quick: about 0.5 GB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, copy_models, finish, fmt_s, isolated_env, ratio_line, table, workdir  # noqa: E402

NAME = "lm_release"
MODEL = "code_lm"
SIZES = {
    "full": {"layers": 10, "hidden": 2048, "heads": 16, "intermediate": 5632},  # ~522 M parameters, ~2.1 GB
    "quick": {"layers": 4, "hidden": 1024, "heads": 8, "intermediate": 2816},  # ~52 M parameters, ~0.2 GB
}


def bench_spec(models: Path, size: dict[str, int]) -> None:
    """The code_lm copy: a big untrained model, a gate and a smoke test an untrained model passes."""
    sys.path.insert(0, str(BENCH.parent))
    from tests.helpers.models import edit_spec

    def change(spec: dict[str, Any]) -> None:
        spec["build"]["params"].update(size, steps=0, eval_perplexity=False, eval_blocks=16, train_blocks=32,
                                       shard_size="1GB")
        spec["build"]["timeout_seconds"] = 3600
        spec["gate"] = {"thresholds": {"perplexity": {"max": 1e12}}}
        spec["smoke"].update(repeats=1, concurrency=2, ttft_budget_ms=600000, tpot_budget_ms=600000)
        spec["deploy"]["local"]["ready_timeout_seconds"] = 1800
    edit_spec(models / MODEL, change)
    (models / MODEL / "golden.json").write_text(json.dumps([
        {"name": "any text", "prompt": "def ", "max_tokens": 8, "expect": {"max_length": 100000}}]))


def baseline(artifact: Path, scratch: Path) -> dict[str, float]:
    """``cp -r`` of the stored artifact and ``openssl dgst -sha256`` of its files, timed."""
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(artifact), str(scratch / "copy")], check=True)
    copied = time.perf_counter() - start
    files = sorted(str(p) for p in artifact.rglob("*") if p.is_file())
    start = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", *files], check=True, capture_output=True)
    return {"cp": copied, "sha256": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 0.2 GB model instead of 2.1 GB")
    args = parser.parse_args()
    started = time.perf_counter()
    size = SIZES["quick" if args.quick else "full"]
    with workdir(NAME) as work:
        models = copy_models(work / "models", (MODEL,))
        bench_spec(models, size)
        env = isolated_env(work, models_dir=models, HF_HUB_OFFLINE="1")
        log = work / "release.log"
        out = work / "result.json"
        subprocess.run(["bash", str(BENCH.parent / "scripts" / "vllm-venv.sh")], check=True)
        print(f"releasing a code_lm of {size} (untrained), log {log}", flush=True)
        start = time.perf_counter()
        with log.open("w") as handle:
            done = subprocess.run([sys.executable, str(BENCH / "plain_release.py"), "--model", MODEL, "--out",
                                   str(out)], env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=7200)
        wall = time.perf_counter() - start
        result = json.loads(out.read_text()) if out.exists() else {}
        if done.returncode != 0 or result.get("error"):
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
            print(f"the release failed: {result.get('error')}", file=sys.stderr)
            return 1
        digest = result["digest"]
        artifact = work / "md" / "artifacts" / MODEL / "sha256" / digest.split(":", 1)[1]
        size_bytes = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
        base = baseline(artifact, work)
        stages: dict[str, float] = result["stages"]
        dominant = max(stages, key=lambda name: stages[name])
        rows = [[name, fmt_s(seconds), f"{100 * seconds / wall:.0f}%"] for name, seconds in stages.items()]
        lines = [
            f"artifact: {size_bytes / 1e9:.2f} GB ({digest[:19]}…), release wall {fmt_s(wall)}",
            table(["stage", "seconds", "of the wall"], rows),
            f"dominant stage: {dominant} ({fmt_s(stages[dominant])})",
            f"baseline: cp -r {fmt_s(base['cp'])}, openssl dgst -sha256 {fmt_s(base['sha256'])}",
            ratio_line(NAME, wall / (base["cp"] + base["sha256"]),
                       "release wall / (cp -r + openssl dgst of the artifact)"),
        ]
        document = {"size_bytes": size_bytes, "params": size, "wall_s": wall, "stages": stages,
                    "dominant": dominant, "baseline_s": base, "digest": digest}
        return finish(NAME, document, lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
