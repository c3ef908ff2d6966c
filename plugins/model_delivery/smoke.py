"""Smoke tests: golden requests against a deployed server, checks on answers, a latency budget.

A golden file (``smoke.golden`` in the spec) is a JSON list of cases::

    [{"name": "a benign tumour",
      "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 30], "data": [...]}],
      "expect": {"output": "predict", "equals": [1]}}]

``expect`` takes ``output`` and any of: ``equals`` (exact values), ``allclose`` with
``atol``, ``one_of`` (every value must be one of these), ``shape``.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_delivery.exceptions import InvalidModelSpec

if TYPE_CHECKING:
    from pathlib import Path


class Expect(BaseModel):
    """What a golden answer must satisfy."""

    model_config = ConfigDict(extra="forbid")
    output: str = Field(description="Name of the output to check.")
    equals: list[Any] | None = None
    allclose: list[float] | None = None
    atol: float = 1e-6
    one_of: list[Any] | None = None
    shape: list[int] | None = None


CaseT = TypeVar("CaseT", bound=BaseModel)


class GoldenCase(BaseModel):
    """One golden request."""

    model_config = ConfigDict(extra="forbid")
    name: str
    inputs: list[dict[str, Any]] = Field(min_length=1)
    expect: Expect


def load_golden(path: Path) -> list[GoldenCase]:
    """Load golden cases; a malformed file raises ``InvalidModelSpec`` naming the case and field."""
    return load_cases(path, GoldenCase, "golden requests", "case")


def load_cases(path: Path, model: type[CaseT], what: str, noun: str) -> list[CaseT]:
    """A non-empty JSON list of ``model`` items; ``InvalidModelSpec`` names the item and the field otherwise."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelSpec(f"{path}: cannot read {what} ({exc}). Fix: a JSON list of {noun}s.") from None
    if not isinstance(raw, list) or not raw:
        raise InvalidModelSpec(f"{path}: must be a non-empty JSON list of {noun}s.")
    cases = []
    for index, item in enumerate(raw):
        try:
            cases.append(model.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InvalidModelSpec(f"{path}: {noun} {index}, field '{field}': {first['msg']}.") from None
    return cases


def check_answer(expect: Expect, body: dict[str, Any]) -> list[str]:
    """Problems with one inference response (empty when it passes)."""
    outputs = {o.get("name"): o for o in body.get("outputs", [])}
    if expect.output not in outputs:
        return [f"output {expect.output!r} missing (got {sorted(outputs)})"]
    out = outputs[expect.output]
    data = out.get("data", [])
    problems = []
    if expect.shape is not None and list(out.get("shape", [])) != expect.shape:
        problems.append(f"shape {out.get('shape')} != {expect.shape}")
    if expect.equals is not None and data != expect.equals:
        problems.append(f"{expect.output} = {data[:10]} != expected {expect.equals[:10]}")
    if expect.allclose is not None and (
        len(data) != len(expect.allclose)
        or any(abs(float(a) - float(b)) > expect.atol for a, b in zip(data, expect.allclose, strict=True))
    ):
        problems.append(f"{expect.output} = {data[:10]} not within {expect.atol} of {expect.allclose[:10]}")
    if expect.one_of is not None and any(v not in expect.one_of for v in data):
        problems.append(f"{expect.output} = {data[:10]} has values outside {expect.one_of}")
    return problems


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def run_smoke(
    base_url: str,
    model: str,
    cases: list[GoldenCase],
    *,
    repeats: int,
    budget_ms: float,
    expect_digest: str | None = None,
    timeout: float = 10.0,
    token: str | None = None,
) -> dict[str, Any]:
    """Send every golden case ``repeats`` times; check answers, the serving digest and p95 latency.

    :param token: the servers' bearer token (``model_delivery.serving_auth``), sent with every request; never
        in the report.
    :return: a JSON-able report with ``passed``, per-case results, latencies and ``failures``.
    """
    import httpx

    from model_delivery.serving_auth import auth_headers

    results, latencies, failures = [], [], []
    with httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(token)) as client:
        for case in cases:
            problems: list[str] = []
            for _ in range(repeats):
                start = time.perf_counter()
                try:
                    response = client.post(f"/v2/models/{model}/infer", json={"inputs": case.inputs})
                except httpx.HTTPError as exc:
                    problems.append(f"request failed: {type(exc).__name__}: {exc}")
                    break
                latencies.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    problems.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    break
                served = response.headers.get("x-model-digest")
                if expect_digest and served != expect_digest:
                    problems.append(f"served by digest {served}, expected {expect_digest}")
                    break
                problems += check_answer(case.expect, response.json())
                if problems:
                    break
            results.append({"name": case.name, "ok": not problems, "problems": problems})
            failures += [f"{case.name}: {p}" for p in problems]
    p95 = percentile(latencies, 95) if latencies else None
    if p95 is not None and p95 > budget_ms:
        failures.append(f"p95 latency {p95:.1f} ms exceeds the budget of {budget_ms} ms")
    return {
        "url": base_url,
        "passed": not failures,
        "cases": results,
        "requests": len(latencies),
        "latency_ms": {
            "p50": percentile(latencies, 50) if latencies else None,
            "p95": p95,
            "max": max(latencies) if latencies else None,
            "budget_p95": budget_ms,
        },
        "failures": failures,
    }
