"""The gate: does the candidate meet the spec's thresholds? It fails closed.

Verdicts, each stated in the release record:

``blessed``        every threshold is met.
``rejected``       at least one threshold is not met; the reasons name each one.
``no-thresholds``  the spec has no thresholds and says ``allow_no_thresholds: true``.
``forced``         ``force=true`` with a ``reason``: the gate's findings are recorded, not enforced.

A spec without thresholds that does not allow it is rejected: nothing passes by default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_delivery.spec import GateSpec

PASSING = ("blessed", "no-thresholds", "forced")


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and everything it looked at."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False
    force_reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict in PASSING

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def check_thresholds(gate: GateSpec, metrics: dict[str, float]) -> list[dict[str, Any]]:
    """One check per bound: metric, bound, value, ok, and a reason when not ok."""
    checks = []
    for metric, threshold in sorted(gate.thresholds.items()):
        value = metrics.get(metric)
        for kind, bound in (("min", threshold.min), ("max", threshold.max)):
            if bound is None:
                continue
            if value is None:
                ok, reason = False, f"{metric} was not measured (threshold {kind} {bound})"
            else:
                ok = value >= bound if kind == "min" else value <= bound
                sign = ">=" if kind == "min" else "<="
                reason = "" if ok else f"{metric} = {value:.4f}, must be {sign} {bound}"
            checks.append({"metric": metric, "bound": kind, "threshold": bound, "value": value, "ok": ok, "reason": reason})
    return checks


def decide(gate: GateSpec, metrics: dict[str, float], *, force: bool = False, reason: str = "") -> GateDecision:
    """Decide on a candidate from its metrics.

    :param gate: the spec's gate section.
    :param metrics: the candidate's measured metrics.
    :param force: release even if rejected; requires ``reason``.
    :param reason: why the release is forced (recorded).
    :raises ValueError: ``force`` without a ``reason``.
    """
    if force and not reason.strip():
        raise ValueError("conf 'force' is true but 'reason' is empty: say why the gate is overridden")
    checks = check_thresholds(gate, metrics)
    reasons = [c["reason"] for c in checks if not c["ok"]]
    if not checks:
        verdict = "no-thresholds" if gate.allow_no_thresholds else "rejected"
        if not gate.allow_no_thresholds:
            reasons = ["the spec defines no gate.thresholds and does not set allow_no_thresholds: the gate fails closed"]
    else:
        verdict = "rejected" if reasons else "blessed"
    if force and verdict == "rejected":
        return GateDecision("forced", reasons, checks, forced=True, force_reason=reason)
    return GateDecision(verdict, reasons, checks, forced=force, force_reason=reason if force else None)
