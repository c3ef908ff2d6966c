"""The release report: ``report.md`` and ``report.html``, read like a model card for one version.

Built only from ``release.json``, so a report can be re-rendered at any time.
"""

from __future__ import annotations

import html
from typing import Any

from model_delivery.build_env import summary as build_env_summary

STAGE_ORDER = (
    "resolve",
    "build",
    "validate_data",
    "evaluate",
    "gate",
    "approve",
    "deploy_staging",
    "smoke",
    "deploy_production",
    "verify",
    "promote",
    "rollback",
)
CSS = (
    "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}"
    "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #d0d7de;padding:.25rem .6rem;"
    "text-align:left;font-size:.9rem}th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem}"
    "h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}"
)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"
    return "—" if value is None or value == "" else str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _stage_result(record: dict[str, Any], stage: str) -> dict[str, Any]:
    return (record.get("stages", {}).get(stage) or {}).get("result") or {}


def _summary(record: dict[str, Any]) -> list[str]:
    artifact = record.get("artifact") or {}
    data = artifact.get("data") or {}
    conf = record.get("conf") or {}
    gate = record.get("gate") or {}
    rows: list[list[Any]] = [
        ["Outcome", f"**{record.get('outcome', 'in progress')}**"],
        ["Gate verdict", gate.get("verdict")],
        ["Run", f"`{record.get('dag_id')}` / `{record['run_id']}`"],
        ["Triggered by", record.get("triggered_by") or "the schedule or an asset (no user)"],
        ["Reason given", conf.get("reason")],
        ["Forced", conf.get("force", False)],
        ["Registry version", artifact.get("version")],
        ["Artifact digest", f"`{artifact['digest']}`" if artifact.get("digest") else None],
        ["Artifact", f"{artifact.get('uri')} ({artifact.get('size_bytes')} bytes, {artifact.get('files')} files)"
         if artifact.get("uri") else "not built"],
        ["Code", f"git `{artifact.get('git_sha')}`, spec `{(artifact.get('spec_digest') or '')[:19]}…`"
         if artifact.get("git_sha") else None],
        ["Built on", build_env_summary(artifact.get("build_env"))],
    ]
    rows += [[f"Data: {name}", f"sha256 `{d.get('sha256', '')[:16]}…`, {d.get('size_bytes')} bytes"] for name, d in data.items()]
    champion = _stage_result(record, "evaluate").get("champion") or {}
    baseline = gate.get("baseline_version") or champion.get("version")
    rows += [["Baseline (production)", f"version {baseline}" if baseline else "none (first release)"],
             ["Finished", record.get("finished_at")]]
    return _table(["", ""], rows)


def _data_checks(record: dict[str, Any]) -> list[str]:
    stage = record.get("stages", {}).get("validate_data")
    if not stage:
        return []
    result = stage.get("result") or {}
    lines = ["## Data checks", ""]
    if not result:
        return lines + [f"Not completed: {stage.get('error', stage.get('status'))}", ""]
    drift_rows: dict[str, dict[str, Any]] = {}
    for name, dataset in (result.get("datasets") or {}).items():
        failed = dataset.get("failed_expectations") or []
        lines.append(f"**{name}**: {dataset['rows']} rows, {dataset['expectations_evaluated']} expectations, "
                     f"{len(failed)} failed, {len(dataset.get('schema_changes') or [])} schema changes.")
        lines.append("")
        lines += [f"- schema change: {change}" for change in dataset.get("schema_changes") or []]
        if failed:
            lines += _table(["expectation", "column", "unexpected", "of rows", "sample values"],
                            [[f["expectation"], f["column"], f["unexpected_count"], f["element_count"],
                              f["sample"] or f.get("observed") or f.get("error")] for f in failed])
        for d in dataset.get("drift") or []:
            drift_rows.setdefault(d["feature"], {"test": d["test"], "threshold": d["threshold"]})[name] = d
    if drift_rows:
        names = list((result.get("datasets") or {}).keys())
        lines += ["### Drift against the reference data", ""]
        rows = []
        for feature, found in drift_rows.items():
            stats = [found[n]["statistic"] if n in found else None for n in names]
            drifted = any(found[n]["drifted"] for n in names if n in found)
            rows.append([feature, found["test"], *stats, found["threshold"], "DRIFT" if drifted else "ok"])
        lines += _table(["feature", "test", *names, "threshold", ""], rows)
    return lines


def _metrics(record: dict[str, Any]) -> list[str]:
    evaluation = _stage_result(record, "evaluate")
    metrics = evaluation.get("metrics") or record.get("metrics") or {}
    if not metrics:
        return []
    champion = evaluation.get("champion") or {}
    base = champion.get("metrics") or {}
    intervals = (evaluation.get("bootstrap") or {}).get("intervals") or {}
    gate = record.get("gate") or {}
    bounds: dict[str, list[str]] = {}
    for check in gate.get("checks") or []:
        if check.get("kind", "threshold") == "threshold":
            bounds.setdefault(check["metric"], []).append(f"{check['bound']} {check['threshold']}")
    rows = []
    for name, value in metrics.items():
        ci = (intervals.get(name) or {}).get("candidate")
        rows.append([name, value, base.get(name), f"{value - base[name]:+.4f}" if name in base else None,
                     ", ".join(bounds.get(name, [])) or None, f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else None])
    who = f"production v{champion.get('version')}" if champion.get("version") else "production"
    paired = "" if not champion or champion.get("paired", True) else " (recorded metrics: not measured on these rows)"
    unit = "blocks" if evaluation.get("unit") == "blocks" else "rows"
    tokens = f" ({evaluation['tokens']} tokens)" if evaluation.get("tokens") else ""
    lines = ["## Metrics", "", f"On {evaluation.get('rows', '?')} held-out {unit}{tokens}; {who}{paired}.", ""]
    return lines + _table(["metric", "candidate", who, "delta", "threshold", "candidate CI"], rows)


def _gate(record: dict[str, Any]) -> list[str]:
    gate = record.get("gate")
    if not gate:
        return []
    lines = ["## Gate", "", f"Verdict: **{gate['verdict']}**" + (f" (forced: {gate['force_reason']})" if gate.get("forced") else ""), ""]
    lines += [f"- {reason}" for reason in gate.get("reasons") or []]
    lines.append("")
    rows = []
    for check in gate.get("checks") or []:
        rule = (f"{check.get('bound')} {check.get('threshold')}" if check.get("kind") != "regression"
                else f"{check.get('direction')} is better, tolerance {_fmt(check.get('tolerance'))}")
        ci = check.get("ci")
        rows.append([check.get("kind", "threshold"), check.get("metric"), check.get("where"), check.get("value"), check.get("baseline"),
                     check.get("delta"), f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else None, rule,
                     "not judged" if check.get("ok") is None else check["ok"]])
    if rows:
        lines += _table(["check", "metric", "slice", "value", "production", "delta", "delta CI", "rule", "ok"], rows)
    return lines


def _smoke(record: dict[str, Any]) -> list[str]:
    lines = []
    for stage in ("smoke", "verify"):
        entry = record.get("stages", {}).get(stage) or {}
        result = entry.get("result") or {}
        if not result:
            continue
        latency = result.get("latency_ms") or {}
        verdict = "passed" if result.get("passed") else "FAILED"
        if result.get("protocol") == "openai":
            lines.append(f"- {stage} against {result.get('url')} (OpenAI completions, greedy, plain and streamed): "
                         f"{verdict}, {result.get('requests')} requests, {latency.get('concurrency')} streams at once")
            lines += [f"  - {what}: p50 {_fmt(latency.get(f'{key}_p50'))} ms, p95 {_fmt(latency.get(f'{key}_p95'))} ms "
                      f"(budget {latency.get(f'{key}_budget_p95')} ms)"
                      for key, what in (("ttft", "time to first token"), ("tpot", "time per output token"))]
            lines += [f"  - prompt {case['name']!r}: {'ok' if case['ok'] else 'FAILED'}"
                      for case in result.get("cases") or []]
        else:
            lines.append(f"- {stage} against {result.get('url')}: {verdict}, "
                         f"{result.get('requests')} requests, p50 {_fmt(latency.get('p50'))} ms, "
                         f"p95 {_fmt(latency.get('p95'))} ms (budget {latency.get('budget_p95')} ms)")
        lines += [f"  - {failure}" for failure in result.get("failures") or []]
    return ["## Smoke tests", "", *lines, ""] if lines else []


def _stages(record: dict[str, Any]) -> list[str]:
    rows = []
    for name in STAGE_ORDER:
        entry = record.get("stages", {}).get(name)
        if entry:
            note = entry.get("error") or entry.get("note") or ""
            rows.append([name, entry["status"], entry.get("started_at"), entry.get("seconds"), note[:200]])
        elif name not in ("approve", "resolve"):
            rows.append([name, "not run", None, None, None])
    deployments = [f"- {d['stage']}: {d.get('url')} (version {d.get('version')})" for d in record.get("deployments") or []]
    return ["## Stages", "", *_table(["stage", "status", "started", "seconds", "note"], rows), *deployments]


def render_markdown(record: dict[str, Any]) -> str:
    """The whole report as markdown."""
    version = (record.get("artifact") or {}).get("version")
    title = f"# Release of `{record['model']}`" + (f" version {version}" if version else "")
    lines = [f"{title}: **{record.get('outcome', 'in progress')}**", ""]
    if record.get("reasons"):
        lines += ["## Why", "", *[f"- {r}" for r in record["reasons"]], ""]
    for part in (_summary, _data_checks, _metrics, _gate, _smoke, _stages):
        lines += part(record)
    if record.get("page_url"):
        lines += ["", f"[Model releases page]({record['page_url']})"]
    return "\n".join(lines).rstrip() + "\n"


def render_html(markdown: str, title: str) -> str:
    """The markdown report as a standalone HTML page, its URLs clickable."""
    from markdown_it import MarkdownIt

    # linkify: the servers' and stores' URLs in the text become links (http, https and file only)
    body = MarkdownIt("commonmark", {"html": False, "linkify": True}).enable(["table", "linkify"]).render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
