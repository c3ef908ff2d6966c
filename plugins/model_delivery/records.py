"""The release record: ``release.json`` and ``report.md`` for every run, failed ones too.

Each stage adds its entry (status, times, result or error) as it ends; the final
``record`` task of the DAG decides the outcome and writes the report. Both files live
in the store beside the artifacts: ``<root>/<model>/releases/<run_id>/``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_delivery.artifacts import ArtifactStore

RECORD = "release.json"
REPORT = "report.md"
STAGES = (
    "build",
    "validate_data",
    "evaluate",
    "gate",
    "deploy_staging",
    "smoke",
    "deploy_production",
    "verify",
    "promote",
    "rollback",
)


def now() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReleaseRecord:
    """Read and update one run's record in the artifact store."""

    def __init__(self, store: ArtifactStore, model: str, run_id: str) -> None:
        self.store = store
        self.dir = store.release_dir(model, run_id)
        self.path = self.dir / RECORD
        self.model = model
        self.run_id = run_id

    def load(self) -> dict[str, Any]:
        if self.path.exists():
            return json.loads(self.path.read_text())
        return {"model": self.model, "run_id": self.run_id, "created_at": now(), "stages": {}}

    def update(self, **fields: Any) -> dict[str, Any]:
        record = self.load()
        record.update(fields)
        self.store.write_json(self.path, record)
        return record

    def add_stage(self, stage: str, entry: dict[str, Any]) -> None:
        """Record one stage's outcome (re-running a stage replaces its entry)."""
        record = self.load()
        record.setdefault("stages", {})[stage] = entry
        self.store.write_json(self.path, record)

    def finalize(self, *, dag_id: str, conf: dict[str, Any], page_url: str | None = None) -> dict[str, Any]:
        """Decide the outcome from the stage entries and write ``release.json`` and ``report.md``."""
        record = self.load()
        stages = record.get("stages", {})
        outcome, reasons = decide_outcome(stages)
        record.update(
            dag_id=dag_id,
            conf=conf,
            outcome=outcome,
            reasons=reasons,
            finished_at=now(),
            artifact=_artifact(stages.get("build", {}).get("result")),
            metrics=(stages.get("evaluate", {}).get("result") or {}).get("metrics"),
            gate=(stages.get("gate", {}).get("result") or {}).get("decision"),
            deployments=[
                {"stage": s, **(stages[s].get("result") or {})}
                for s in ("deploy_staging", "deploy_production")
                if s in stages and stages[s].get("status") == "success"
            ],
            report=str(self.dir / REPORT),
        )
        self.store.write_json(self.path, record)
        self.store.write_text(self.dir / REPORT, render_report(record))
        return record


def _artifact(build: dict[str, Any] | None) -> dict[str, Any] | None:
    if not build:
        return None
    keys = ("digest", "uri", "version", "size_bytes", "files", "git_sha", "spec_digest", "data")
    return {key: build.get(key) for key in keys}


def decide_outcome(stages: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """``released``, ``rejected``, ``rolled-back`` or ``failed``, with the reasons."""
    failed = [(name, entry) for name, entry in stages.items() if entry.get("status") == "failed"]
    reasons = [f"{name}: {entry.get('error', 'failed')}" for name, entry in failed]
    rollback = stages.get("rollback", {})
    if rollback.get("status") == "success" and (rollback.get("result") or {}).get("action") != "none":
        return "rolled-back", reasons
    if stages.get("gate", {}).get("status") == "failed":
        return "rejected", reasons
    if failed or stages.get("promote", {}).get("status") != "success":
        return "failed", reasons or ["the release did not reach promote"]
    return "released", []


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def render_report(record: dict[str, Any]) -> str:
    """A short markdown report of one release."""
    artifact = record.get("artifact") or {}
    lines = [
        f"# Release of `{record['model']}`: **{record['outcome']}**",
        "",
        f"- Run: `{record.get('dag_id')}` / `{record['run_id']}`",
        f"- Reason given: {record.get('conf', {}).get('reason') or '—'}; force: {record.get('conf', {}).get('force', False)}",
        f"- Artifact: `{artifact.get('digest', '—')}` ({artifact.get('uri', 'not built')})",
        f"- Registry version: {artifact.get('version', '—')}",
        f"- Finished: {record.get('finished_at')}",
    ]
    if record.get("reasons"):
        lines += ["", "## Why", ""] + [f"- {r}" for r in record["reasons"]]
    gate = record.get("gate") or {}
    if gate.get("checks") or record.get("metrics"):
        lines += ["", f"## Metrics and gate (verdict: {gate.get('verdict', '—')})", "", "| metric | value | bound | ok |", "|---|---|---|---|"]
        checked = {c["metric"] for c in gate.get("checks", [])}
        for check in gate.get("checks", []):
            bound = f"{check['bound']} {check['threshold']}"
            lines.append(f"| {check['metric']} | {_fmt(check['value'])} | {bound} | {'yes' if check['ok'] else 'NO'} |")
        for metric, value in (record.get("metrics") or {}).items():
            if metric not in checked:
                lines.append(f"| {metric} | {_fmt(value)} | — | — |")
    lines += ["", "## Stages", "", "| stage | status | started | seconds | note |", "|---|---|---|---|---|"]
    for name in STAGES:
        entry = record.get("stages", {}).get(name)
        if entry:
            note = (entry.get("error") or entry.get("note") or "").replace("\n", " ")[:160]
            lines.append(f"| {name} | {entry['status']} | {entry.get('started_at', '')} | {_fmt(entry.get('seconds'))} | {note} |")
        else:
            lines.append(f"| {name} | not run | | | |")
    for deployment in record.get("deployments") or []:
        lines.append("")
        lines.append(f"- {deployment['stage']}: {deployment.get('url', '')} (version {deployment.get('version', '—')})")
    return "\n".join(lines) + "\n"
