"""The gate's decide() on thresholds: every verdict, bounds inclusive, fails closed, forcing needs a reason."""

from __future__ import annotations

from typing import Any

import pytest

from model_delivery.spec import GateSpec
from model_delivery.validation.gate import decide

BREAST_CANCER_GATE: dict[str, Any] = {
    "thresholds": {"accuracy": {"min": 0.93}, "roc_auc": {"min": 0.97}, "log_loss": {"max": 0.25}}
}
GOOD = {"accuracy": 0.96, "roc_auc": 0.99, "log_loss": 0.1, "f1": 0.97}
CHAMPION = {"version": "3", "metrics": dict(GOOD), "same_as_candidate": False}


@pytest.mark.parametrize(
    ("gate", "metrics", "champion", "verdict", "passed", "reason_parts"),
    [
        pytest.param(BREAST_CANCER_GATE, GOOD, CHAMPION, "blessed", True, [], id="all-met"),
        pytest.param(
            BREAST_CANCER_GATE, GOOD, None, "first-release", True, [["no production version"]],
            id="all-met-first-release",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "accuracy": 0.9}, CHAMPION, "rejected", False,
            [["accuracy", "0.9000", ">= 0.93"]], id="min-missed",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "log_loss": 0.4}, None, "rejected", False,
            [["log_loss", "0.4000", "<= 0.25"]], id="max-exceeded",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "accuracy": 0.5, "log_loss": 0.9}, CHAMPION, "rejected", False,
            [["accuracy", "0.5000", ">= 0.93"], ["log_loss", "0.9000", "<= 0.25"]], id="two-missed",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {"accuracy": 0.96, "log_loss": 0.1}, CHAMPION, "rejected", False,
            [["roc_auc", "not measured", "min 0.97"]], id="metric-not-measured",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {**GOOD, "roc_auc": float("nan")}, CHAMPION, "rejected", False,
            [["roc_auc", "not measured"]], id="metric-is-nan",
        ),
        pytest.param(
            BREAST_CANCER_GATE, {"accuracy": 0.93, "roc_auc": 0.97, "log_loss": 0.25}, CHAMPION, "blessed", True, [],
            id="values-equal-to-bounds-pass",
        ),
        pytest.param(
            {"thresholds": {"accuracy": {"min": 0.5, "max": 0.9}}}, {"accuracy": 0.95}, CHAMPION, "rejected", False,
            [["accuracy", "0.9500", "<= 0.9"]], id="range-above-max",
        ),
        pytest.param(
            {}, GOOD, CHAMPION, "rejected", False, [["nothing to judge by", "fails closed"]],
            id="no-thresholds-fails-closed",
        ),
        pytest.param(
            {}, GOOD, None, "rejected", False, [["nothing to judge by", "fails closed"]],
            id="no-thresholds-first-release-fails-closed",
        ),
        pytest.param(
            {"allow_no_thresholds": True}, GOOD, None, "no-thresholds", True, [["nothing to judge by"]],
            id="no-thresholds-allowed",
        ),
        pytest.param(
            BREAST_CANCER_GATE, GOOD, {**CHAMPION, "same_as_candidate": True}, "no-change", True,
            [["already production"]], id="candidate-is-production",
        ),
    ],
)
def test_decide(
    gate: dict[str, Any], metrics: dict[str, float], champion: dict[str, Any] | None, verdict: str, passed: bool,
    reason_parts: list[list[str]],
) -> None:
    decision = decide(GateSpec.model_validate(gate), metrics, champion=champion)

    assert decision.verdict == verdict
    assert decision.passed is passed
    assert decision.forced is False and decision.force_reason is None
    assert len(decision.reasons) == len(reason_parts), decision.reasons
    for reason, parts in zip(decision.reasons, reason_parts, strict=True):
        for part in parts:
            assert part in reason, (part, reason)
    assert decision.to_dict()["passed"] is passed
    assert decision.baseline_version == (champion or {}).get("version")
    thresholds = gate.get("thresholds", {})
    bounds = sum((t.get("min") is not None) + (t.get("max") is not None) for t in thresholds.values())
    threshold_checks = [c for c in decision.checks if c["kind"] == "threshold"]
    assert len(threshold_checks) == bounds
    assert [c["ok"] for c in threshold_checks].count(False) == (len(reason_parts) if verdict == "rejected" and bounds else 0)


def test_force_with_a_reason_releases_a_rejected_candidate_and_records_why() -> None:
    decision = decide(
        GateSpec.model_validate(BREAST_CANCER_GATE), {**GOOD, "accuracy": 0.5}, force=True, reason="hotfix INC-42",
        champion=CHAMPION,
    )

    assert decision.verdict == "forced"
    assert decision.passed is True
    assert decision.forced is True
    assert decision.force_reason == "hotfix INC-42"
    assert decision.reasons and "accuracy" in decision.reasons[0]  # the findings are still recorded
    assert [c["ok"] for c in decision.checks if c["metric"] == "accuracy"] == [False]
    assert decision.to_dict()["force_reason"] == "hotfix INC-42"


def test_force_on_a_candidate_that_passes_keeps_its_verdict() -> None:
    decision = decide(
        GateSpec.model_validate(BREAST_CANCER_GATE), GOOD, force=True, reason="just in case", champion=CHAMPION
    )

    assert decision.verdict == "blessed"
    assert decision.passed is True
    assert decision.force_reason == "just in case"


@pytest.mark.parametrize("reason", [pytest.param("", id="empty"), pytest.param("   ", id="blank")])
def test_force_without_a_reason_is_refused(reason: str) -> None:
    with pytest.raises(ValueError, match="'reason' is empty"):
        decide(GateSpec.model_validate(BREAST_CANCER_GATE), {**GOOD, "accuracy": 0.5}, force=True, reason=reason)
