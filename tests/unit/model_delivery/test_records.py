"""The release record: outcome decisions, release.json and report.md in a real file store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.records import REPORT, ReleaseRecord, decide_outcome, render_report
from model_delivery.report import STAGE_ORDER as STAGES
from model_delivery.store import ArtifactStore

if TYPE_CHECKING:
    from pathlib import Path

OK = {"status": "success"}


def _stages(**overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """A run where every stage up to promote succeeded, with ``overrides`` (None removes a stage)."""
    stages: dict[str, dict[str, Any]] = {
        name: dict(OK) for name in ("build", "evaluate", "gate", "deploy_staging", "smoke", "deploy_production",
                                    "verify", "promote")
    }  # fmt: skip
    for name, entry in overrides.items():
        if entry is None:
            stages.pop(name, None)
        else:
            stages[name] = entry
    return stages


def _failed(error: str) -> dict[str, Any]:
    return {"status": "failed", "error": error}


@pytest.mark.parametrize(
    ("stages", "outcome", "reason_parts"),
    [
        pytest.param(_stages(), "released", [], id="all-success"),
        pytest.param(
            _stages(gate=_failed("gate rejected version 2"), deploy_staging=None, smoke=None, deploy_production=None,
                    verify=None, promote=None),
            "rejected", ["gate: gate rejected version 2"], id="gate-failed",
        ),
        pytest.param(
            _stages(smoke=_failed("smoke test failed"), deploy_production=None, verify=None, promote=None,
                    rollback={"status": "success", "result": {"action": "stopped-candidate"}}),
            "rolled-back", ["smoke: smoke test failed"], id="smoke-failed-rolled-back",
        ),
        pytest.param(
            _stages(verify=_failed("verify failed"), promote=None,
                    rollback={"status": "success", "result": {"action": "switched-back"}}),
            "rolled-back", ["verify: verify failed"], id="verify-failed-switched-back",
        ),
        pytest.param(
            _stages(smoke=_failed("smoke test failed"), deploy_production=None, verify=None, promote=None,
                    rollback={"status": "success", "result": {"action": "none"}}),
            "failed", ["smoke: smoke test failed"], id="rollback-did-nothing",
        ),
        pytest.param(
            _stages(build=_failed("exited with code 3"), evaluate=None, gate=None, deploy_staging=None, smoke=None,
                    deploy_production=None, verify=None, promote=None),
            "failed", ["build: exited with code 3"], id="build-failed",
        ),
        pytest.param(_stages(promote=None), "failed", ["did not reach promote"], id="promote-missing"),
        pytest.param(_stages(promote={"status": "skipped"}), "failed", ["did not reach promote"], id="promote-skipped"),
        pytest.param({}, "failed", ["did not reach promote"], id="nothing-ran"),
        pytest.param(
            _stages(deploy_staging={"status": "dry-run", "note": "dry run on the ansible target: host1: 5"},
                    smoke={"status": "skipped"}, deploy_production=None, verify=None, promote=None),
            "dry-run", ["dry run on the ansible target: host1: 5"], id="dry-run",
        ),
    ],
)
def test_decide_outcome(stages: dict[str, dict[str, Any]], outcome: str, reason_parts: list[str]) -> None:
    decided, reasons = decide_outcome(stages)

    assert decided == outcome
    assert len(reasons) == len(reason_parts)
    for reason, part in zip(reasons, reason_parts, strict=True):
        assert part in reason


BUILD_RESULT = {
    "digest": "sha256:" + "a" * 64, "uri": "file:///store/demo/sha256/" + "a" * 64, "version": "3",
    "size_bytes": 1234, "files": 2, "git_sha": "abc", "spec_digest": "sha256:" + "b" * 64, "data": {},
    "reused": False,
}  # fmt: skip
GATE_DECISION = {
    "verdict": "rejected",
    "reasons": ["accuracy = 0.5000, must be >= 0.93"],
    "checks": [
        {"metric": "accuracy", "bound": "min", "threshold": 0.93, "value": 0.5, "ok": False, "reason": "x"},
        {"metric": "log_loss", "bound": "max", "threshold": 0.25, "value": 0.125, "ok": True, "reason": ""},
    ],
}


def test_record_round_trip_writes_release_json_and_report(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}/store")
    record = ReleaseRecord(store, "demo", "manual__2026-01-01T00:00:00+00:00")
    record.add_stage("build", {"status": "success", "started_at": "t0", "seconds": 1.5, "result": BUILD_RESULT})
    record.add_stage("evaluate", {"status": "success", "result": {"metrics": {"accuracy": 0.5, "log_loss": 0.125,
                                                                              "f1": 0.61}}})  # fmt: skip
    record.add_stage("gate", {"status": "failed", "error": "gate rejected version 3",
                              "result": {"decision": GATE_DECISION}})  # fmt: skip
    record.add_stage("gate", {"status": "failed", "error": "gate rejected version 3 (re-run)",
                              "result": {"decision": GATE_DECISION}})  # fmt: skip

    final = record.finalize(dag_id="release__demo", conf={"reason": "weekly", "force": False})

    release_dir = tmp_path / "store" / "demo" / "releases" / "manual__2026-01-01T00_00_00_00_00"
    assert sorted(p.name for p in release_dir.iterdir()) == sorted([REPORT, "report.html", "release.json"])
    assert "<table>" in (release_dir / "report.html").read_text()
    on_disk = json.loads((release_dir / "release.json").read_text())
    assert on_disk == json.loads(json.dumps(final, default=str))
    assert ReleaseRecord(store, "demo", "manual__2026-01-01T00:00:00+00:00").load() == on_disk
    assert on_disk["outcome"] == "rejected"
    assert on_disk["reasons"] == ["gate: gate rejected version 3 (re-run)"]
    assert on_disk["artifact"]["digest"] == BUILD_RESULT["digest"]
    assert "reused" not in on_disk["artifact"]
    assert on_disk["metrics"] == {"accuracy": 0.5, "log_loss": 0.125, "f1": 0.61}
    assert on_disk["gate"]["verdict"] == "rejected"
    assert on_disk["dag_id"] == "release__demo"
    assert on_disk["report"].endswith(f"{release_dir.name}/{REPORT}")
    report = (release_dir / REPORT).read_text()
    assert report == render_report(on_disk)
    assert "**rejected**" in report


def test_render_report_shows_outcome_stages_metrics_and_reasons() -> None:
    record = {
        "model": "demo", "run_id": "run-7", "dag_id": "release__demo", "outcome": "rolled-back",
        "reasons": ["smoke: p95 latency 900.0 ms exceeds the budget of 250.0 ms"],
        "conf": {"reason": "try C=0.5", "force": False}, "finished_at": "2026-01-01T00:00:00",
        "artifact": {"digest": "sha256:" + "c" * 64, "uri": "file:///s", "version": "4", "build_env": {
            "python": {"version": "3.11.7", "machine": "x86_64"}, "libraries": {"scikit-learn": "1.9.1", "numpy": "2.4.6"},
            "blas": [{"internal_api": "openblas", "version": "0.3.30", "architecture": "Haswell", "num_threads": 1}]}},
        "metrics": {"accuracy": 0.96, "f1": 0.9712},
        "gate": {"verdict": "blessed", "checks": [
            {"metric": "accuracy", "bound": "min", "threshold": 0.93, "value": 0.96, "ok": True, "reason": ""}]},
        "stages": {
            "build": {"status": "success", "started_at": "t1", "seconds": 2.25},
            "smoke": {"status": "failed", "started_at": "t2", "error": "p95 latency\nexceeds the budget"},
            "rollback": {"status": "success", "note": "switched back"},
        },
        "deployments": [{"stage": "deploy_staging", "url": "http://127.0.0.1:1234", "version": "4"}],
    }  # fmt: skip

    report = render_report(record)

    assert report.startswith("# Release of `demo` version 4: **rolled-back**")
    assert "| Reason given | try C=0.5 |" in report
    assert "| Triggered by | the schedule or an asset (no user) |" in report
    assert ("| Built on | Python 3.11.7 (x86_64); numpy 2.4.6, scikit-learn 1.9.1; BLAS openblas 0.3.30 Haswell, "
            "1 thread |") in report
    assert f"`{'sha256:' + 'c' * 64}`" in report
    assert "- smoke: p95 latency 900.0 ms exceeds the budget of 250.0 ms" in report
    assert "Verdict: **blessed**" in report
    assert "| accuracy | 0.9600 | — | — | min 0.93 | — |" in report
    assert "| f1 | 0.9712 | — | — | — | — |" in report
    assert "| threshold | accuracy | — | 0.9600 | — | — | — | min 0.93 | yes |" in report
    assert "| build | success | t1 | 2.2500 | — |" in report
    assert "| smoke | failed | t2 | — | p95 latency exceeds the budget |" in report
    assert "| rollback | success | — | — | switched back |" in report
    for stage in STAGES:
        if stage not in ("approve", "resolve"):
            assert sum(line.startswith(f"| {stage} |") for line in report.splitlines()) == 1, stage
    assert "| promote | not run | — | — | — |" in report
    assert "- deploy_staging: http://127.0.0.1:1234 (version 4)" in report


@pytest.mark.parametrize(("outcome", "code"), [("released", 0), ("dry-run", 0), ("no-change", 0), ("rejected", 2),
                                               ("rolled-back", 1), ("failed", 1)])
def test_ci_exit_code_of_each_outcome(outcome: str, code: int) -> None:
    from model_delivery.ci import exit_code

    assert exit_code({"outcome": outcome}) == code
