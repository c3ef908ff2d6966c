"""vLLM as the serving runtime: start-to-ready, time to first token and tokens per second.

Baseline, in the same run: the same tiny code_lm generating in-process with transformers
(greedy, the same prompt and token count). vLLM is started through the runtime unit
(``model_delivery.runtimes``) exactly as the local target starts it, and "ready" is the
runtime's own truthful check (listed, from this digest, a warm-up answered).

    .venv/bin/python bench/bench_vllm.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT, finish, fmt_s, median, ratio_line, table, workdir  # noqa: E402

PARAMS = {"layers": 2, "hidden": 64, "heads": 2, "steps": 60, "max_corpus_bytes": 600_000, "eval_blocks": 32,
          "train_blocks": 64}
ARGS = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": "512M"}
PROMPT = "def "


def build(out: Path) -> Path:
    from model_delivery.build_env import LAUNCHER, declare
    from model_delivery.spec import BuildSpec

    (out.parent / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(out.parent), "TMPDIR": str(out.parent / "tmp")}
    subprocess.run([sys.executable, str(LAUNCHER), "--model-dir", str(PROJECT / "include" / "models" / "code_lm"),
                    "--entrypoint", "train.py", "--params", json.dumps(PARAMS), "--env",
                    json.dumps(declare("code_lm", BuildSpec.model_validate({"threads": 2}))),
                    "--output-dir", str(out)], env=env, check=True, capture_output=True, timeout=900)
    return out / "model"


def in_process(model_dir: Path, tokens: int, repeats: int) -> dict[str, float]:
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # vLLM's CPU worker serves on one thread here too
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    ttft, rate = [], []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False, min_new_tokens=1)
            ttft.append(time.perf_counter() - start)
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            rate.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    return {"ttft_s": median(ttft), "tokens_per_s": median(rate)}


def served(url: str, tokens: int, repeats: int) -> dict[str, float]:
    import httpx

    ttft, rate = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        first = None
        count = 0
        with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                "model": "code_lm", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and first is None:
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    count = chunk["usage"]["completion_tokens"]
        total = time.perf_counter() - start
        assert first is not None and count == tokens, (first, count)
        ttft.append(first)
        rate.append((count - 1) / (total - first))
    return {"ttft_s": median(ttft), "tokens_per_s": median(rate)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tokens, repeats = (32, 5) if args.quick else (64, 15)
    started = time.perf_counter()
    from model_delivery.deploy.local.target import free_port
    from model_delivery.runtimes import get_runtime
    from model_delivery.store import ArtifactStore

    with workdir("vllm") as work:
        store = ArtifactStore(f"file://{work}/store")
        artifact = store.put_directory("code_lm", build(work / "build" / "out"))
        served_dir = store.fetch("code_lm", artifact.digest, work / "artifacts" / artifact.digest.split(":")[1])
        runtime = get_runtime("vllm")
        runtime.check_artifact(served_dir, artifact.digest)
        port = free_port("127.0.0.1")
        cmd = runtime.command(python=runtime.python(), artifact=str(served_dir), digest=artifact.digest,
                              model="code_lm", version="1", host="127.0.0.1", port=port, args=ARGS)
        url = f"http://127.0.0.1:{port}"
        log = open(work / "vllm.log", "wb")  # noqa: SIM115 - closed after the server stops
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **runtime.env(work / "runtime")})
        try:
            while (why := runtime.ready(url, "code_lm", artifact.digest)) is not None:
                if proc.poll() is not None or time.perf_counter() - start > 900:
                    raise SystemExit(f"vLLM did not get ready ({why}); see {work / 'vllm.log'}")
                time.sleep(0.5)
            ready_s = time.perf_counter() - start
            vllm = served(url, tokens, repeats)
        finally:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        baseline = in_process(served_dir, tokens, repeats)
    print(table(["", "start to ready", "TTFT (median)", "tokens/s (median)"], [
        ["vLLM (CPU) over HTTP", fmt_s(ready_s), f"{vllm['ttft_s'] * 1000:.1f} ms", f"{vllm['tokens_per_s']:.0f}"],
        ["transformers in-process", "—", f"{baseline['ttft_s'] * 1000:.1f} ms", f"{baseline['tokens_per_s']:.0f}"],
    ]))
    lines = [
        ratio_line("vllm_ttft", vllm["ttft_s"] / baseline["ttft_s"], "vLLM TTFT / in-process transformers"),
        ratio_line("vllm_tokens_per_s", vllm["tokens_per_s"] / baseline["tokens_per_s"],
                   "vLLM tokens/s / in-process transformers"),
    ]
    print(f"vLLM start-to-ready: {ready_s:.1f} s")
    return finish("vllm", {"tokens": tokens, "repeats": repeats, "start_to_ready_s": ready_s, "vllm": vllm,
                           "in_process": baseline}, lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
