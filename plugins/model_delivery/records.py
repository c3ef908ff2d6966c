"""The release record: ``release.json`` and ``report.md`` for every run, failed ones too.

Each stage adds its entry (status, times, result or error) as it ends; the final
``record`` task of the DAG decides the outcome and writes the report. Both files live
in the store beside the artifacts: ``<root>/<model>/releases/<run_id>/``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from model_delivery.report import render_html, render_markdown

if TYPE_CHECKING:
    from model_delivery.store import ArtifactStore

RECORD = "release.json"
REPORT = "report.md"
REPORT_HTML = "report.html"


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

    def finalize(self, *, dag_id: str, conf: dict[str, Any], page_url: str | None = None,
                 triggered_by: str | None = None) -> dict[str, Any]:
        """Decide the outcome from the stage entries and write ``release.json`` and ``report.md``.

        :param triggered_by: the Airflow user who triggered the run (None for a scheduled or asset-triggered run).
        """
        record = self.load()
        stages = record.get("stages", {})
        outcome, reasons = decide_outcome(stages)
        record.update(
            dag_id=dag_id,
            triggered_by=triggered_by,
            conf=conf,
            outcome=outcome,
            reasons=reasons,
            finished_at=now(),
            artifact=_artifact(stages.get("build", {}).get("result") or stages.get("resolve", {}).get("result")),
            metrics=(stages.get("evaluate", {}).get("result") or {}).get("metrics"),
            gate=(stages.get("gate", {}).get("result") or {}).get("decision"),
            deployments=[
                {"stage": s, **(stages[s].get("result") or {})}
                for s in ("deploy_staging", "deploy_production")
                if s in stages and stages[s].get("status") == "success"
            ],
            report=str(self.dir / REPORT),
        )
        record["report_html"] = str(self.dir / REPORT_HTML)
        record["page_url"] = page_url or _page_url(self.model, self.run_id)
        self.store.write_json(self.path, record)
        markdown = render_report(record)
        self.store.write_text(self.dir / REPORT, markdown)
        self.store.write_text(self.dir / REPORT_HTML, render_html(markdown, f"{self.model} {self.run_id}"))
        return record


def _page_url(model: str, run_id: str) -> str:
    """This release's row on the "Model releases" page of the Airflow UI."""
    from model_delivery.page import page_url

    return page_url(model, run_id)


def _artifact(build: dict[str, Any] | None) -> dict[str, Any] | None:
    if not build:
        return None
    keys = ("digest", "uri", "version", "size_bytes", "files", "git_sha", "spec_digest", "data", "build_env")
    return {key: build.get(key) for key in keys}


SUCCESS_OUTCOMES = ("released", "no-change", "reverted", "dry-run")
"""Outcomes of a run that did what was asked: the ``outcome`` task succeeds, the CLI exits 0."""


def _failures(stages: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The failed stages that decide an outcome: all but ``retire``, which runs after promote (see :func:`_notes`)."""
    return [(name, entry) for name, entry in stages.items() if entry.get("status") == "failed" and name != "retire"]


def _notes(stages: dict[str, dict[str, Any]]) -> list[str]:
    retire = stages.get("retire") or {}
    if retire.get("status") != "failed":
        return []
    return [f"retire: {retire.get('error', 'failed')} (the release stands; the previous version may still run warm)"]


def _rollback_outcome(stages: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """A manual rollback: ``refused``, ``no-change``, ``reverted`` or ``failed``."""
    resolve = stages["resolve"]
    target = resolve.get("result") or {}
    failed = [f"{name}: {entry.get('error', 'failed')}" for name, entry in _failures(stages)]
    if resolve.get("status") == "failed":
        return "refused", failed
    if target.get("no_op"):
        return "no-change", [target.get("note") or "that version already serves"]
    if stages.get("promote", {}).get("status") == "success" and not failed:
        return "reverted", [f"version {target.get('from_version')} → version {target.get('version')}", *_notes(stages)]
    return "failed", failed or ["the rollback did not reach promote"]


def decide_outcome(stages: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """``released``, ``rejected``, ``rolled-back``, ``failed``, ``no-change`` or ``dry-run``, with the reasons."""
    if "resolve" in stages:
        return _rollback_outcome(stages)
    build = stages.get("build", {})
    if (build.get("result") or {}).get("no_change") and "validate_data" not in stages:
        version = build["result"].get("version")
        return "no-change", [f"version {version} is production already, from the same spec and data: nothing to do"]
    staging = stages.get("deploy_staging", {})
    if staging.get("status") == "dry-run":
        return "dry-run", [staging.get("note") or "dry run: nothing was changed"]
    failed = _failures(stages)
    reasons = [f"{name}: {entry.get('error', 'failed')}" for name, entry in failed]
    if stages.get("gate", {}).get("status") == "failed" or stages.get("approve", {}).get("status") == "failed":
        return "rejected", reasons
    rollback = stages.get("rollback", {})
    if rollback.get("status") == "success" and (rollback.get("result") or {}).get("action") != "none":
        return "rolled-back", reasons
    if failed or stages.get("promote", {}).get("status") != "success":
        return "failed", reasons or ["the release did not reach promote"]
    return "released", _notes(stages)


def render_report(record: dict[str, Any]) -> str:
    """The markdown report; if rendering itself fails, a minimal report that says so (never no report)."""
    try:
        return render_markdown(record)
    except Exception as exc:  # noqa: BLE001 - a report bug must not lose the record
        return (f"# Release of `{record.get('model')}`: **{record.get('outcome')}**\n\n"
                f"The full report could not be rendered ({type(exc).__name__}: {exc}); see release.json.\n")
