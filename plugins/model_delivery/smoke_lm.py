"""Smoke tests of a language model over the OpenAI-compatible API (the ``openai`` protocol of a runtime).

A golden file of a language model is a JSON list of prompts with checks::

    [{"name": "a function header", "prompt": "def ", "max_tokens": 16,
      "expect": {"contains": "(", "regex": "^\\\\(", "equals": "(self):", "min_length": 1, "max_length": 400}}]

Every prompt is sent with greedy decoding (temperature 0), plain and streamed: both answers
must pass the checks, and under greedy decoding they must be the same text. Then a small
concurrent load (``concurrency`` streams at once, ``repeats`` per prompt) measures the time to
first token (TTFT) and the time per output token (TPOT) at p50 and p95, held to budgets. The
artifact that answers is checked too (the runtime's ``served_digest``).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.smoke import load_cases, percentile

if TYPE_CHECKING:
    from pathlib import Path


class PromptExpect(BaseModel):
    """What a golden completion must satisfy (all that are given)."""

    model_config = ConfigDict(extra="forbid")
    contains: str | None = None
    regex: str | None = None
    equals: str | None = Field(None, description="The exact text under greedy decoding.")
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=0)


class GoldenPrompt(BaseModel):
    """One golden prompt."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, le=4096)
    expect: PromptExpect


def load_golden_prompts(path: Path) -> list[GoldenPrompt]:
    """Load golden prompts; a malformed file raises ``InvalidModelSpec`` naming the prompt and the field."""
    cases = load_cases(path, GoldenPrompt, "golden prompts", "prompt")
    for index, case in enumerate(cases):
        try:
            if case.expect.regex is not None:
                re.compile(case.expect.regex)
        except re.error as exc:
            raise InvalidModelSpec(f"{path}: prompt {index}, field 'expect.regex': not a regular expression "
                                   f"({exc}).") from None
    return cases


def check_text(expect: PromptExpect, text: str) -> list[str]:
    """Problems with one completion (empty when it passes)."""
    shown = repr(text[:80])
    problems = []
    if expect.contains is not None and expect.contains not in text:
        problems.append(f"{shown} does not contain {expect.contains!r}")
    if expect.regex is not None and not re.search(expect.regex, text):
        problems.append(f"{shown} does not match /{expect.regex}/")
    if expect.equals is not None and text != expect.equals:
        problems.append(f"{shown} != expected {expect.equals[:80]!r}")
    if expect.min_length is not None and len(text) < expect.min_length:
        problems.append(f"{len(text)} characters, fewer than min_length {expect.min_length}")
    if expect.max_length is not None and len(text) > expect.max_length:
        problems.append(f"{len(text)} characters, more than max_length {expect.max_length}")
    return problems


def _body(model: str, case: GoldenPrompt, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": case.prompt, "max_tokens": case.max_tokens, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def complete(client: Any, model: str, case: GoldenPrompt) -> str:
    """A plain completion's text."""
    response = client.post("/v1/completions", json=_body(model, case, stream=False))
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    return str(response.json()["choices"][0]["text"])


def stream(client: Any, model: str, case: GoldenPrompt) -> dict[str, Any]:
    """A streamed completion: its text, tokens, time to first token and time per output token (seconds)."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    with client.stream("POST", "/v1/completions", json=_body(model, case, stream=True)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:200]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if first is None:
                    first = time.perf_counter() - start
                parts.append(choice.get("text") or "")
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    total = time.perf_counter() - start
    ttft = first if first is not None else total
    return {"text": "".join(parts), "tokens": tokens, "ttft_s": ttft,
            "tpot_s": (total - ttft) / (tokens - 1) if tokens > 1 else None}


def _check_prompts(client: Any, model: str, cases: list[GoldenPrompt]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each prompt plain and streamed: the checks, and the same text under greedy decoding."""
    import httpx

    results, failures = [], []
    for case in cases:
        problems: list[str] = []
        try:
            plain = complete(client, model, case)
            streamed = stream(client, model, case)["text"]
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
            problems.append(f"request failed: {type(exc).__name__}: {exc}")
        else:
            problems += [f"plain: {p}" for p in check_text(case.expect, plain)]
            problems += [f"streamed: {p}" for p in check_text(case.expect, streamed)]
            if plain != streamed:
                problems.append(f"streamed {streamed[:60]!r} differs from plain {plain[:60]!r} under greedy decoding")
        results.append({"name": case.name, "ok": not problems, "problems": problems})
        failures += [f"{case.name}: {p}" for p in problems]
    return results, failures


def _load(client: Any, model: str, cases: list[GoldenPrompt], repeats: int, concurrency: int
          ) -> tuple[list[dict[str, Any]], list[str]]:
    """``repeats`` streams of every prompt, ``concurrency`` at once: their timings, and what failed."""
    import httpx

    timings: list[dict[str, Any]] = []
    errors: list[str] = []

    def one(case: GoldenPrompt) -> None:
        try:
            timings.append(stream(client, model, case))
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            errors.append(f"under load: {case.name}: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, [case for case in cases for _ in range(repeats)]))
    return timings, errors[:5]


def _latency(timings: list[dict[str, Any]], budgets: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    """p50 and p95 of TTFT and TPOT in milliseconds, and the budgets they exceed."""
    values = {"ttft": [t["ttft_s"] * 1000 for t in timings],
              "tpot": [t["tpot_s"] * 1000 for t in timings if t["tpot_s"] is not None]}
    latency: dict[str, Any] = {f"{name}_p{q}": percentile(found, q) if found else None
                               for name, found in values.items() for q in (50, 95)}
    latency.update({f"{name}_budget_p95": budget for name, budget in budgets.items()})
    words = {"ttft": "time to first token", "tpot": "time per output token"}
    failures = [f"p95 {words[name]} {latency[f'{name}_p95']:.1f} ms exceeds the budget of {budget} ms"
                for name, budget in budgets.items()
                if latency[f"{name}_p95"] is not None and latency[f"{name}_p95"] > budget]
    return latency, failures


def run_smoke_lm(base_url: str, model: str, cases: list[GoldenPrompt], *, repeats: int, concurrency: int,
                 ttft_budget_ms: float, tpot_budget_ms: float, expect_digest: str | None = None,
                 served_digest: Any = None, timeout: float = 120.0, token: str | None = None) -> dict[str, Any]:
    """Check every golden prompt, plain and streamed, then measure TTFT and TPOT under a small concurrent load.

    :param served_digest: ``(url, model, token=...) -> digest`` of the runtime, to check which artifact answers.
    :param token: the servers' bearer token (``model_delivery.serving_auth``), sent with every request.
    :return: a JSON-able report with ``passed``, per-prompt results, latencies and ``failures``.
    """
    import httpx

    from model_delivery.serving_auth import auth_headers

    failures: list[str] = []
    timings: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(token)) as client:
        if expect_digest and served_digest is not None:
            served = served_digest(base_url, model, **({"token": token} if token else {}))
            if served != expect_digest:
                failures.append(f"served by digest {served}, expected {expect_digest}")
        results, problems = _check_prompts(client, model, cases)
        failures += problems
        if not problems:
            timings, errors = _load(client, model, cases, repeats, concurrency)
            failures += errors
    latency, over = _latency(timings, {"ttft": ttft_budget_ms, "tpot": tpot_budget_ms})
    latency["concurrency"] = concurrency
    return {"url": base_url, "protocol": "openai", "passed": not failures and not over, "cases": results,
            "requests": len(timings) + 2 * len(cases), "latency_ms": latency, "failures": failures + over}
