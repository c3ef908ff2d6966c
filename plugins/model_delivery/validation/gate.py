"""The gate: may the candidate be deployed? It fails closed.

It judges three kinds of checks, all recorded with their numbers:

- ``threshold``: absolute bounds on the candidate's metrics;
- ``slice``: the same bounds on each slice of the evaluation data (values of a column);
- ``regression``: no regression against the ``production`` version, measured on the same
  evaluation rows, with a tolerance (absolute or relative) and a direction. With
  bootstrap intervals, only a regression that the whole interval of
  (candidate - production) confirms counts, so noise alone cannot flip the verdict.

Verdicts:

``blessed``        every check passed, against a production baseline.
``first-release``  no production version exists: thresholds alone decided, and passed.
``no-change``      the candidate *is* the production version: nothing is compared with itself.
``rejected``       a check failed, or there was nothing to judge by (fails closed).
``no-thresholds``  nothing to judge by, and the spec says ``allow_no_thresholds: true``.
``forced``         ``force`` with a ``reason`` overrode a rejection; both are recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from model_delivery.spec import LOWER_IS_BETTER

if TYPE_CHECKING:
    from model_delivery.spec import GateSpec, RegressionCheck, Threshold

PASSING = ("blessed", "first-release", "no-change", "no-thresholds", "forced")


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and everything it looked at."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False
    force_reason: str | None = None
    baseline_version: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict in PASSING

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _bound_checks(kind: str, thresholds: dict[str, Threshold], metrics: dict[str, float], where: str = "") -> list[dict[str, Any]]:
    checks = []
    for metric, threshold in sorted(thresholds.items()):
        value = metrics.get(metric)
        for bound, limit in (("min", threshold.min), ("max", threshold.max)):
            if limit is None:
                continue
            label = f"{metric}{where}"
            if value is None or value != value:
                ok, reason = False, f"{label} was not measured (threshold {bound} {limit})"
            else:
                ok = value >= limit if bound == "min" else value <= limit
                reason = "" if ok else f"{label} = {value:.4f}, must be {'>=' if bound == 'min' else '<='} {limit}"
            checks.append({"kind": kind, "metric": metric, "where": where.strip(" ()") or None, "bound": bound,
                           "threshold": limit, "value": value, "ok": ok, "reason": reason})
    return checks


def check_thresholds(gate: GateSpec, metrics: dict[str, float]) -> list[dict[str, Any]]:
    """One check per bound of ``gate.thresholds``."""
    return _bound_checks("threshold", gate.thresholds, metrics)


def check_slices(gate: GateSpec, slices: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Bounds per slice; slices below ``min_rows`` are listed as not judged (``ok`` is None)."""
    checks = []
    for slice_gate in gate.slices:
        for value, found in sorted(slices.get(slice_gate.column, {}).items()):
            where = f" ({slice_gate.column}={value})"
            if found["rows"] < slice_gate.min_rows:
                checks.append({"kind": "slice", "metric": None, "where": where.strip(" ()"), "ok": None,
                               "reason": f"slice{where} has {found['rows']} rows < min_rows {slice_gate.min_rows}: not judged"})
                continue
            checks += _bound_checks("slice", slice_gate.thresholds, found["metrics"], where)
    return checks


def _regression(metric: str, rule: RegressionCheck, value: float, base: float, ci: list[float] | None) -> dict[str, Any]:
    direction = rule.direction or ("lower" if metric in LOWER_IS_BETTER else "higher")
    tolerance = rule.tolerance * abs(base) if rule.relative else rule.tolerance
    delta = value - base
    sign = 1 if direction == "higher" else -1  # positive "gain" is better
    if ci:
        best_case_gain = max(sign * ci[0], sign * ci[1])
        ok = best_case_gain >= -tolerance
        evidence = f"the confidence interval of the change is [{ci[0]:+.4f}, {ci[1]:+.4f}]"
    else:
        ok = sign * delta >= -tolerance
        evidence = f"the change is {delta:+.4f}"
    reason = "" if ok else (
        f"{metric} regressed against production: {value:.4f} vs {base:.4f} ({direction} is better); "
        f"{evidence}, tolerance {tolerance:.4f}"
    )
    return {"kind": "regression", "metric": metric, "direction": direction, "value": value, "baseline": base,
            "delta": delta, "tolerance": tolerance, "ci": ci, "ok": ok, "reason": reason}


def check_regressions(
    gate: GateSpec, metrics: dict[str, float], baseline: dict[str, float], intervals: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """No-regression checks against the baseline's metrics (CI of the paired delta when given)."""
    checks = []
    for metric, rule in sorted(gate.no_regression.items()):
        if metric not in metrics or metric not in baseline:
            checks.append({"kind": "regression", "metric": metric, "ok": False,
                           "reason": f"{metric} is missing for the candidate or for production; cannot compare"})
            continue
        ci = ((intervals or {}).get(metric) or {}).get("delta") or None
        checks.append(_regression(metric, rule, metrics[metric], baseline[metric], ci))
    return checks


def decide(
    gate: GateSpec,
    metrics: dict[str, float],
    *,
    force: bool = False,
    reason: str = "",
    champion: dict[str, Any] | None = None,
    slices: dict[str, Any] | None = None,
    intervals: dict[str, Any] | None = None,
) -> GateDecision:
    """Decide on a candidate from the evaluate stage's findings.

    :param gate: the spec's gate section.
    :param metrics: the candidate's metrics.
    :param force: release even if rejected; requires ``reason``.
    :param reason: why the release is forced (recorded).
    :param champion: the production version (``version``, ``metrics`` on the same data,
        ``same_as_candidate``), or None when there is no production version yet.
    :param slices: per-slice metrics by column and value.
    :param intervals: bootstrap intervals by metric (``candidate``, ``delta``).
    :raises ValueError: ``force`` without a ``reason``.
    """
    if force and not reason.strip():
        raise ValueError("conf 'force' is true but 'reason' is empty: say why the gate is overridden")
    checks = check_thresholds(gate, metrics) + check_slices(gate, slices or {})
    same = bool(champion and champion.get("same_as_candidate"))
    if champion and not same:
        checks += check_regressions(gate, metrics, champion.get("metrics") or {}, intervals)
    judged = [c for c in checks if c["ok"] is not None]
    reasons = [c["reason"] for c in judged if not c["ok"]]
    baseline = champion.get("version") if champion else None
    if reasons:
        verdict = "rejected"
    elif same:
        verdict, reasons = "no-change", [f"the candidate is version {baseline}, which is already production"]
    elif not judged:
        verdict = "no-thresholds" if gate.allow_no_thresholds else "rejected"
        reasons = ["the gate has nothing to judge by (no thresholds, slices or regression checks that apply)"
                   + ("" if gate.allow_no_thresholds else " and allow_no_thresholds is false: it fails closed")]
    elif champion is None:
        verdict, reasons = "first-release", ["no production version exists: thresholds alone decided"]
    else:
        verdict = "blessed"
    if force and verdict == "rejected":
        return GateDecision("forced", reasons, checks, True, reason, baseline)
    return GateDecision(verdict, reasons, checks, force, reason if force else None, baseline)
