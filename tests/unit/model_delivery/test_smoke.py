"""Smoke checks: answers, percentiles, golden files, and run_smoke against a real model server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.smoke import Expect, GoldenCase, check_answer, load_golden, percentile, run_smoke
from tests.helpers.models import PROJECT

if TYPE_CHECKING:
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds, Servers

MODELS = PROJECT / "include" / "models"


def _body(name: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"outputs": [{"name": name, "datatype": "FP64", "shape": shape or [len(data)], "data": data}]}


@pytest.mark.parametrize(
    ("expect", "body", "problem"),
    [
        pytest.param({"output": "predict", "equals": [1, 0]}, _body("predict", [1, 0]), None, id="equals-ok"),
        pytest.param({"output": "predict", "equals": [1, 0]}, _body("predict", [1, 1]), "!= expected", id="equals-differs"),
        pytest.param(
            {"output": "p", "allclose": [0.1, 0.9], "atol": 0.01}, _body("p", [0.105, 0.895]), None,
            id="allclose-within-atol",
        ),
        pytest.param(
            {"output": "p", "allclose": [0.1, 0.9], "atol": 0.01}, _body("p", [0.2, 0.8]), "not within 0.01",
            id="allclose-outside-atol",
        ),
        pytest.param(
            {"output": "p", "allclose": [0.1, 0.9]}, _body("p", [0.1]), "not within", id="allclose-length-differs",
        ),
        pytest.param({"output": "predict", "one_of": [0, 1]}, _body("predict", [0, 1, 1]), None, id="one-of-ok"),
        pytest.param(
            {"output": "predict", "one_of": [0, 1]}, _body("predict", [0, 2]), "outside [0, 1]", id="one-of-outside",
        ),
        pytest.param({"output": "predict", "shape": [2]}, _body("predict", [0, 1]), None, id="shape-ok"),
        pytest.param(
            {"output": "predict", "shape": [1, 2]}, _body("predict", [0, 1]), "shape [2] != [1, 2]", id="shape-mismatch",
        ),
        pytest.param(
            {"output": "predict_proba", "equals": [1]}, _body("predict", [1]), "'predict_proba' missing",
            id="output-missing",
        ),
        pytest.param({"output": "predict", "equals": [1]}, {}, "missing (got [])", id="no-outputs-at-all"),
    ],
)
def test_check_answer(expect: dict[str, Any], body: dict[str, Any], problem: str | None) -> None:
    problems = check_answer(Expect.model_validate(expect), body)

    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([5.0], 95, 5.0, id="single"),
        pytest.param([float(v) for v in range(1, 101)], 95, 95.0, id="p95-of-1-to-100"),
        pytest.param([float(v) for v in range(1, 101)], 50, 50.0, id="p50-of-1-to-100"),
        pytest.param([4.0, 1.0, 3.0, 2.0], 50, 2.0, id="unsorted-median"),
        pytest.param([4.0, 1.0, 3.0, 2.0], 100, 4.0, id="p100-is-max"),
        pytest.param([4.0, 1.0, 3.0, 2.0], 0, 1.0, id="p0-is-min"),
        pytest.param([1.0, 2.0, 3.0, 1000.0], 95, 1000.0, id="nearest-rank-takes-the-outlier"),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


_CASE = {
    "name": "one",
    "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}],
    "expect": {"output": "predict", "equals": [1]},
}


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        pytest.param("[{not json", ["cannot read golden requests", "Fix:"], id="not-json"),
        pytest.param("[]", ["non-empty JSON list"], id="empty-list"),
        pytest.param(json.dumps(_CASE), ["non-empty JSON list"], id="object-not-list"),
        pytest.param(
            json.dumps([_CASE, {k: v for k, v in _CASE.items() if k != "expect"}]), ["case 1", "field 'expect'"],
            id="case-missing-expect",
        ),
        pytest.param(json.dumps([{**_CASE, "inputs": []}]), ["case 0", "field 'inputs'"], id="case-without-inputs"),
        pytest.param(
            json.dumps([{**_CASE, "expect": {"output": "predict", "equal": [1]}}]), ["case 0", "field 'expect.equal'"],
            id="case-with-misspelt-check",
        ),
    ],
)
def test_load_golden_errors(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = tmp_path / "golden.json"
    path.write_text(text)

    with pytest.raises(InvalidModelSpec) as caught:
        load_golden(path)

    assert str(path) in str(caught.value)
    for part in parts:
        assert part in str(caught.value)


def test_load_golden_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelSpec, match="cannot read golden requests"):
        load_golden(tmp_path / "absent.json")


@pytest.mark.parametrize("model", [pytest.param("breast_cancer", id="breast_cancer"), pytest.param("wine", id="wine")])
def test_load_golden_on_the_demo_models(model: str) -> None:
    cases = load_golden(MODELS / model / "golden.json")

    assert len(cases) >= 2
    assert len({case.name for case in cases}) == len(cases)
    assert all(case.inputs and case.expect.output for case in cases)


@pytest.fixture
def served(builds: Builds, servers: Servers, tmp_path: Path) -> str:
    """A real model server for the v1 build, started from a verified fetch out of the store."""
    artifact = builds.store.fetch("breast_cancer", builds.v1.digest, tmp_path / "artifact")
    return servers.start(artifact, builds.v1.digest)


def _golden() -> list[GoldenCase]:
    return load_golden(MODELS / "breast_cancer" / "golden.json")


def _wrong(cases: list[GoldenCase]) -> list[GoldenCase]:
    first = cases[0]
    wrong = [1 - v for v in first.expect.equals or [0]]
    changed = first.model_copy(update={"expect": first.expect.model_copy(update={"equals": wrong, "shape": None})})
    return [changed, *cases[1:]]


@pytest.mark.parametrize(
    ("make_cases", "budget_ms", "expect_v1_digest", "failure"),
    [
        pytest.param(_golden, 60_000.0, True, None, id="golden-cases-pass"),
        pytest.param(lambda: _wrong(_golden()), 60_000.0, True, "!= expected", id="wrong-expectation"),
        pytest.param(_golden, 0.0001, True, "exceeds the budget", id="latency-budget"),
        pytest.param(_golden, 60_000.0, False, "served by digest", id="digest-mismatch"),
    ],
)
def test_run_smoke_against_a_real_server(
    served: str, builds: Builds, make_cases: Any, budget_ms: float, expect_v1_digest: bool, failure: str | None
) -> None:
    cases = make_cases()
    digest = builds.v1.digest if expect_v1_digest else builds.v2.digest

    report = run_smoke(served, "breast_cancer", cases, repeats=3, budget_ms=budget_ms, expect_digest=digest)

    assert report["url"] == served
    assert report["latency_ms"]["budget_p95"] == budget_ms
    if failure is None:
        assert report["passed"] is True, report["failures"]
        assert report["failures"] == []
        assert report["requests"] == 3 * len(cases)
        assert all(case["ok"] for case in report["cases"])
        assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]
    else:
        assert report["passed"] is False
        assert any(failure in f for f in report["failures"]), report["failures"]
    if failure in ("!= expected", "served by digest"):
        assert report["failures"][0].startswith(f"{cases[0].name}: ")
        assert report["cases"][0]["ok"] is False


def test_run_smoke_when_nothing_listens() -> None:
    from tests.helpers.models import free_port

    report = run_smoke(f"http://127.0.0.1:{free_port()}", "breast_cancer", _golden()[:1], repeats=2, budget_ms=250)

    assert report["passed"] is False
    assert report["requests"] == 0
    assert "request failed" in report["failures"][0]
    assert report["latency_ms"]["p95"] is None
