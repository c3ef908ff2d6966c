"""Small inline SVG plots for the "Model releases" page, drawn on the server (no JavaScript).

Each function returns one ``<svg>`` element as a string; every text in it is escaped.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

WIDTH, HEIGHT, PAD = 360, 120, 28
OUTCOME_COLOURS = {
    "released": "#2e7d32", "rejected": "#f9a825", "rolled-back": "#c62828", "failed": "#6d1b1b",
    "no-change": "#9e9e9e", "reverted": "#6a1b9a", "refused": "#bdbdbd",
}
OTHER = "#90a4ae"


def _svg(body: list[str], title: str, *, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _empty(title: str, message: str) -> str:
    return _svg([f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="empty">{escape(message)}</text>'],
                title)


def _label(x: float, y: float, text: str, anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def trend(points: Sequence[tuple[datetime | None, float, str]], *, title: str, production: str | None = None) -> str:
    """A metric by version: ``(when, value, version)`` points, one per version in the order given, joined by a
    line; the production version's point is ringed. ``when`` (the version's release) goes in the tooltip."""
    if not points:
        return _empty(title, "no evaluated version yet")
    values = [v for _, v, _ in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    left, right, top, bottom = PAD + 18, WIDTH - 10, 14, HEIGHT - PAD
    step = (right - left) / max(1, len(points) - 1)

    def xy(i: int, value: float) -> tuple[float, float]:
        x = left + i * step if len(points) > 1 else (left + right) / 2
        y = bottom - (value - low) / span * (bottom - top) if high > low else (top + bottom) / 2
        return x, y

    coords = [xy(i, v) for i, (_, v, _) in enumerate(points)]
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>']
    if high > low:
        body += [_label(left - 4, top + 4, f"{high:.4g}", "end"), _label(left - 4, bottom, f"{low:.4g}", "end")]
    else:  # one value: one label, at its height
        body.append(_label(left - 4, (top + bottom) / 2 + 4, f"{high:.4g}", "end"))
    if len(coords) > 1:
        body.append('<polyline class="line" fill="none" points="'
                    + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
    for (x, y), (when, value, version) in zip(coords, points, strict=True):
        ring = ' class="production"' if production is not None and version == production else ""
        at = f' ({escape(when.strftime("%Y-%m-%d %H:%M"))})' if when else ""
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5"{ring}><title>v{escape(version)}: {value:.4f}{at}'
                    '</title></circle>')
        body.append(_label(x, bottom + 12, f"v{version}", "middle"))
    return _svg(body, title)


def _days(end: date, days: int) -> list[date]:
    return [end - timedelta(days=days - 1 - i) for i in range(days)]


def stacked_bars(counts: dict[date, dict[str, int]], *, end: date, days: int, title: str,
                 colours: dict[str, str] | None = None) -> str:
    """One bar per day for the last ``days`` days, stacked by series (e.g. outcome), with a legend."""
    colours = colours or OUTCOME_COLOURS
    series = sorted({name for day in counts.values() for name in day})
    if not series:
        return _empty(title, f"nothing in the last {days} days")
    dates = _days(end, days)
    top_value = max(1, *(sum(counts.get(d, {}).values()) for d in dates))
    left, right, top, bottom = PAD, WIDTH - 10, 14, HEIGHT - PAD
    width = (right - left) / len(dates)
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>',
            _label(left - 4, top + 4, str(top_value), "end"), _label(left - 4, bottom, "0", "end"),
            _label(left, bottom + 12, dates[0].isoformat()), _label(right, bottom + 12, dates[-1].isoformat(), "end")]
    for i, day in enumerate(dates):
        y = float(bottom)
        for name in series:
            n = counts.get(day, {}).get(name, 0)
            if not n:
                continue
            h = n / top_value * (bottom - top)
            y -= h
            body.append(f'<rect x="{left + i * width + 0.5:.1f}" y="{y:.1f}" width="{max(1.0, width - 1):.1f}" '
                        f'height="{h:.1f}" fill="{colours.get(name, OTHER)}" data-series="{escape(name)}">'
                        f'<title>{escape(day.isoformat())}: {n} {escape(name)}</title></rect>')
    x = float(left)
    for name in series:
        body.append(f'<rect x="{x:.1f}" y="{HEIGHT - 9}" width="8" height="8" fill="{colours.get(name, OTHER)}"/>')
        body.append(_label(x + 11, HEIGHT - 1, name))
        x += 16 + 6.5 * len(name)
    return _svg(body, title)


def per_day(runs: Sequence[dict[str, Any]], key: Any) -> dict[date, dict[str, int]]:
    """Count runs per finishing day into the series ``key(run)`` names (None: not counted)."""
    from model_delivery.metrics import parse_time

    counts: dict[date, dict[str, int]] = {}
    for run in runs:
        when = parse_time(run.get("finished_at"))
        name = key(run)
        if when is None or name is None:
            continue
        day = counts.setdefault(when.date(), {})
        day[name] = day.get(name, 0) + 1
    return counts
