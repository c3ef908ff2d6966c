"""The data of the "Model releases" page's three charts, as plain JSON-able dicts (no web framework here).

The page embeds :func:`chart_data` of each model as ``<script type="application/json">``; the browser draws
it with the vendored Apache ECharts (``static/vendor/``). Everything a chart says is decided here, so it is
unit-tested without a browser: one point per version with the production version marked by its alias,
runs per day by outcome, and one spelling per outcome (the key ``rolled-back``, the label "rolled back").
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from model_delivery.metrics import parse_time

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ECHARTS = "vendor/echarts-6.1.0/echarts.min.js"
"""The vendored charting library, under ``static/`` (see ``static/vendor/README.md``)."""

# key (as the release records spell it) -> label shown, colour on a light page, colour on a dark page
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "released": ("released", "#2e7d32", "#66bb6a"),
    "no-change": ("no change", "#78909c", "#b0bec5"),
    "dry-run": ("dry run", "#0277bd", "#4fc3f7"),
    "rejected": ("rejected", "#c77c00", "#ffb74d"),
    "rolled-back": ("rolled back", "#c62828", "#ef5350"),
    "failed": ("failed", "#6d1b1b", "#f06292"),
    "reverted": ("reverted", "#6a1b9a", "#ce93d8"),
    "refused": ("refused", "#8d6e63", "#bcaaa4"),
    "in-progress": ("in progress", "#546e7a", "#90a4ae"),
}
OTHER = ("#90a4ae", "#cfd8dc")
FAILURE_OUTCOMES = ("failed", "rolled-back", "reverted")
"""What the failures chart counts: failed runs, releases rolled back by their own run, manual rollbacks."""
WIDE_DAYS = 31
"""A bar chart of more days than this takes the page's whole width, so that its bars stay readable."""
COUNT_UNIT = "runs per day"
DAY_AXIS = "day (UTC)"


def outcome_key(outcome: str | None) -> str:
    """One spelling per outcome: ``rolled back``, ``Rolled_Back`` and ``rolled-back`` are all ``rolled-back``."""
    return "-".join(str(outcome or "in progress").strip().lower().replace("_", " ").replace("-", " ").split())


def outcome_label(outcome: str | None) -> str:
    """How the page shows an outcome: ``rolled back`` for ``rolled-back``; an unknown one in the same style."""
    key = outcome_key(outcome)
    return OUTCOMES[key][0] if key in OUTCOMES else key.replace("-", " ")


def per_day(runs: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str | None]) -> dict[date, dict[str, int]]:
    """Count runs per finishing day (UTC) into the series ``key(run)`` names (None: not counted)."""
    from datetime import UTC

    counts: dict[date, dict[str, int]] = {}
    for run in runs:
        when = parse_time(run.get("finished_at"))
        name = key(run)
        if when is None or name is None:
            continue
        day = counts.setdefault(when.astimezone(UTC).date(), {})
        day[name] = day.get(name, 0) + 1
    return counts


def days_shown(runs: Sequence[dict[str, Any]], *, end: date, window: int) -> list[date]:
    """The window's days, oldest first, from the model's first finished run on (a day before the model had any
    run says nothing, and leaving it out keeps the bars of a young model readable)."""
    from datetime import UTC

    first = min((w.astimezone(UTC).date() for r in runs if (w := parse_time(r.get("finished_at")))), default=end)
    start = max(end - timedelta(days=window - 1), min(first, end))
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _series(counts: dict[date, dict[str, int]], days: list[date], order: Sequence[str]) -> list[dict[str, Any]]:
    """One series per outcome that occurs in ``days``, in ``order`` (unknown outcomes last, by name)."""
    present = {name for day in days for name in counts.get(day, {})}
    names = [k for k in order if k in present] + sorted(present - set(order))
    out = []
    for name in names:
        label, light, dark = OUTCOMES.get(name, (outcome_label(name), *OTHER))
        out.append({"key": name, "label": label, "color": {"light": light, "dark": dark},
                    "counts": [counts.get(day, {}).get(name, 0) for day in days]})
    return out


def _bars(runs: Sequence[dict[str, Any]], history: Sequence[dict[str, Any]], *, key: Callable[[dict[str, Any]], str | None],
          order: Sequence[str], end: date, window: int, title: str, empty: str) -> dict[str, Any]:
    days = days_shown(history, end=end, window=window)
    series = _series(per_day(runs, key), days, order)
    return {
        "kind": "bars", "title": title, "days": [d.isoformat() for d in days], "series": series,
        "total": sum(sum(s["counts"]) for s in series), "x_title": DAY_AXIS, "y_title": COUNT_UNIT,
        "empty": empty, "wide": len(days) > WIDE_DAYS,
    }


def trend_chart(model: dict[str, Any]) -> dict[str, Any]:
    """The primary metric by version: one point per version (``model["trend"]``, oldest first); the production
    version is the point whose registry alias is ``production``."""
    metric = model.get("primary_metric") or "metric"
    points = []
    for p in model.get("trend") or []:
        when = parse_time(p.get("at"))
        points.append({"version": str(p["version"]), "label": f"v{p['version']}", "value": float(p["value"]),
                       "at": when.strftime("%Y-%m-%d %H:%M UTC") if when else None,
                       "production": bool(p.get("production"))})
    production = next((p["version"] for p in points if p["production"]), None)
    return {
        "kind": "trend", "title": f"{metric} of {model['model']} by version", "metric": metric, "points": points,
        "production": production, "x_title": "model version (oldest first)", "y_title": f"{metric} (registry tag)",
        "empty": "no evaluated version yet",
    }


def chart_data(model: dict[str, Any], *, window: int, today: datetime | date) -> dict[str, Any]:
    """The three charts of one model (``PageData.model``): metric trend by version, releases per day by outcome,
    failures and rollbacks per day; the day axes end on ``today`` and span at most ``window`` days."""
    end = today.date() if isinstance(today, datetime) else today
    runs: list[dict[str, Any]] = model.get("releases") or []
    releases = [r for r in runs if r.get("kind") == "release"]
    name = model["model"]

    def failure(run: dict[str, Any]) -> str | None:
        key = outcome_key(run.get("outcome"))
        return key if key in FAILURE_OUTCOMES else None

    return {
        "model": name,
        "window": window,
        "trend": trend_chart(model),
        "releases": _bars(releases, runs, key=lambda r: outcome_key(r.get("outcome")), order=list(OUTCOMES),
                          end=end, window=window, title=f"releases of {name} per day by outcome",
                          empty=f"no release finished in the last {window} days"),
        "failures": _bars(runs, runs, key=failure, order=FAILURE_OUTCOMES, end=end, window=window,
                          title=f"failures and rollbacks of {name} per day",
                          empty=f"no failure or rollback in the last {window} days"),
    }
