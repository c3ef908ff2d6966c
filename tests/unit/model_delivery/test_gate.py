"""The gate's decide(): every verdict, bounds inclusive, fails closed, forcing needs a reason."""

from __future__ import annotations

from typing import Any

import pytest

from model_delivery.spec import GateSpec
from model_delivery.validation.gate import decide

BREAST_CANCER_GATE: dict[str, Any] = {
    "thresholds": {"accuracy": {"min": 0.93}, "roc_auc": {"min": 0.97}, "log_loss": {"max": 0.25}}
}
GOOD = {"accuracy": 0.96, "roc_auc": 0.99, "log_loss": 0.1, "f1": 0.97}


@pytest.mark.parametrize(
    ("gate", "metrics", "verdict", "passed", "reason_parts"),
    [
        pytest.param(BREAST_CANCER_GATE, GOOD, "blessed", True, [], id="all-met"),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "accuracy": 0.9}, "rejected", False, [["accuracy", "0.9000", ">= 0.93"]],
            id="min-missed",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "log_loss": 0.4}, "rejected", False, [["log_loss", "0.4000", "<= 0.25"]],
            id="max-exceeded",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "accuracy": 0.5, "log_loss": 0.9}, "rejected", False,
            [["accuracy", "0.5000", ">= 0.93"], ["log_loss", "0.9000", "<= 0.25"]], id="two-missed",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {"accuracy": 0.96, "log_loss": 0.1}, "rejected", False,
            [["roc_auc", "not measured", "min 0.97"]], id="metric-not-measured",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {"accuracy": 0.93, "roc_auc": 0.97, "log_loss": 0.25}, "blessed", True, [],
            id="values-equal-to-bounds-pass",
        ),
        pytest.param(
            {"thresholds": {"r2": {"min": 0.5, "max": 0.9}}}, {"r2": 0.95}, "rejected", False,
            [["r2", "0.9500", "<= 0.9"]], id="range-above-max",
        ),
        pytest.param({}, GOOD, "rejected", False, [["fails closed", "allow_no_thresholds"]], id="no-thresholds-fails-closed"),
        pytest.param({"allow_no_thresholds": True}, GOOD, "no-thresholds", True, [], id="no-thresholds-allowed"),
    ],
)
def test_decide(
    gate: dict[str, Any], metrics: dict[str, float], verdict: str, passed: bool, reason_parts: list[list[str]]
) -> None:
    decision = decide(GateSpec.model_validate(gate), metrics)

    assert decision.verdict == verdict
    assert decision.passed is passed
    assert decision.forced is False and decision.force_reason is None
    assert len(decision.reasons) == len(reason_parts)
    for reason, parts in zip(decision.reasons, reason_parts, strict=True):
        for part in parts:
            assert part in reason, (part, reason)
    assert decision.to_dict()["passed"] is passed
    checks = decision.checks
    assert len(checks) == sum(
        (t.get("min") is not None) + (t.get("max") is not None) for t in gate.get("thresholds", {}).values()
    )
    assert all(c["ok"] for c in checks) is (verdict == "blessed" or not checks)


def test_force_with_a_reason_releases_a_rejected_candidate_and_records_why() -> None:
    decision = decide(
        GateSpec.model_validate(BREAST_CANCER_GATE), {**GOOD, "accuracy": 0.5}, force=True, reason="hotfix INC-42"
    )

    assert decision.verdict == "forced"
    assert decision.passed is True
    assert decision.forced is True
    assert decision.force_reason == "hotfix INC-42"
    assert decision.reasons and "accuracy" in decision.reasons[0]  # the findings are still recorded
    assert [c["ok"] for c in decision.checks if c["metric"] == "accuracy"] == [False]
    assert decision.to_dict()["force_reason"] == "hotfix INC-42"


def test_force_on_a_candidate_that_passes_keeps_its_verdict() -> None:
    decision = decide(GateSpec.model_validate(BREAST_CANCER_GATE), GOOD, force=True, reason="just in case")

    assert decision.verdict == "blessed"
    assert decision.passed is True
    assert decision.force_reason == "just in case"


@pytest.mark.parametrize("reason", [pytest.param("", id="empty"), pytest.param("   ", id="blank")])
def test_force_without_a_reason_is_refused(reason: str) -> None:
    with pytest.raises(ValueError, match="'reason' is empty"):
        decide(GateSpec.model_validate(BREAST_CANCER_GATE), {**GOOD, "accuracy": 0.5}, force=True, reason=reason)
