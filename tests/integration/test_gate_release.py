"""The gate against a production champion, through real releases (dag.test, MLflow, servers).

Version 1 (C=1.0) goes to production first; later candidates are judged against it on
the same evaluation rows. The tests run in order and share one model-delivery home.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.models import edit_spec
from tests.helpers.release import check_outcome, load_record, release_env, run_release, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
THRESHOLDS = {"accuracy": {"min": 0.93}, "roc_auc": {"min": 0.97}, "log_loss": {"max": 0.25}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    with release_env(tmp_path_factory.mktemp("gate"), (MODEL,)) as models_dir:
        set_gate(models_dir, C=1.0, gate={"thresholds": THRESHOLDS})
        first = run_release(MODEL, {"reason": "champion"})
        assert first.state == "success"
        assert check_outcome(first, "released") is None  # record and outcome green
        yield models_dir, load_record(MODEL, first.run_id)


def set_gate(models_dir: Path, *, C: float, gate: dict) -> None:
    def change(spec: dict) -> None:
        spec["build"]["params"]["C"] = C
        spec["gate"] = gate

    edit_spec(models_dir / MODEL, change)


def serving_digest(models_dir: Path) -> str:
    port = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())["deploy"]["local"]["port"]
    return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).headers["x-model-digest"]


def test_the_first_release_was_judged_on_thresholds_alone(env) -> None:
    _, record = env
    assert record["gate"]["verdict"] == "first-release"
    assert {c["kind"] for c in record["gate"]["checks"]} == {"threshold"}
    assert record["stages"]["evaluate"]["result"]["champion"] is None


def test_a_worse_model_is_rejected_against_the_champion(env) -> None:
    models_dir, champion = env
    # C=0.02 passes every absolute threshold, but is worse than production.
    set_gate(models_dir, C=0.02, gate={"thresholds": THRESHOLDS,
                                       "no_regression": {"accuracy": {"tolerance": 0.01},
                                                         "log_loss": {"tolerance": 0.2, "relative": True}}})
    dag_run = run_release(MODEL, {"reason": "a worse model"})

    assert dag_run.state == "failed"
    assert task_states(dag_run)["deploy_staging"] == "upstream_failed"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rejected"
    pushed = check_outcome(dag_run, "rejected")  # record green; outcome red, with the gate's reasons
    assert pushed is not None and pushed["error"].startswith("release rejected: gate: gate rejected version ")
    assert "accuracy regressed against production" in pushed["error"]
    gate = record["gate"]
    assert gate["verdict"] == "rejected"
    assert gate["baseline_version"] == champion["artifact"]["version"]
    assert all(c["ok"] for c in gate["checks"] if c["kind"] == "threshold")
    regressions = {c["metric"]: c for c in gate["checks"] if c["kind"] == "regression"}
    assert not regressions["accuracy"]["ok"] and regressions["accuracy"]["delta"] < -0.01
    assert any(r.startswith("accuracy regressed against production") for r in gate["reasons"])
    report = Path(record["report"].removeprefix("file://")).read_text()
    assert "regressed against production" in report
    assert serving_digest(models_dir) == champion["artifact"]["digest"]


def test_noise_alone_does_not_reject_an_equal_model(env) -> None:
    models_dir, champion = env
    # C=0.05 misclassifies one more held-out row than production: 0.007 worse, past a 0.005 tolerance.
    no_regression = {"accuracy": {"tolerance": 0.005}}
    set_gate(models_dir, C=0.05, gate={"thresholds": THRESHOLDS, "no_regression": no_regression})
    point = run_release(MODEL, {"reason": "point estimates only"})
    point_record = load_record(MODEL, point.run_id)
    assert point_record["outcome"] == "rejected"
    assert point_record["gate"]["reasons"][0].startswith("accuracy regressed")

    set_gate(models_dir, C=0.05, gate={"thresholds": THRESHOLDS, "no_regression": no_regression,
                                       "bootstrap": {"samples": 300, "seed": 1}})
    with_ci = run_release(MODEL, {"reason": "with bootstrap intervals"})

    assert with_ci.state == "success"
    record = load_record(MODEL, with_ci.run_id)
    assert record["gate"]["verdict"] == "blessed"
    check = next(c for c in record["gate"]["checks"] if c["kind"] == "regression")
    assert check["delta"] < -0.005  # the point estimate alone would have rejected it
    low, high = check["ci"]
    assert low < 0 <= high
    assert serving_digest(models_dir) == record["artifact"]["digest"]


def test_a_gate_with_nothing_to_judge_by_refuses_the_release(env) -> None:
    models_dir, _ = env
    before = serving_digest(models_dir)
    set_gate(models_dir, C=0.3, gate={})
    dag_run = run_release(MODEL, {"reason": "no thresholds"})

    assert dag_run.state == "failed"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rejected"
    assert "fails closed" in record["gate"]["reasons"][0]
    assert serving_digest(models_dir) == before


def test_force_needs_a_reason_and_is_recorded(env) -> None:
    models_dir, _ = env
    set_gate(models_dir, C=0.3, gate={})
    no_reason = run_release(MODEL, {"force": True, "reason": ""})
    assert no_reason.state == "failed"
    pushed = check_outcome(no_reason, "failed")
    assert pushed is not None and "conf 'force' is true but 'reason' is empty" in pushed["error"]
    refused = load_record(MODEL, no_reason.run_id)["stages"]
    assert "conf 'force' is true but 'reason' is empty" in refused["build"]["error"]  # the first task, not the gate
    assert "gate" not in refused

    forced = run_release(MODEL, {"force": True, "reason": "hotfix approved by the on-call lead"})

    assert forced.state == "success"
    record = load_record(MODEL, forced.run_id)
    assert record["gate"]["verdict"] == "forced"
    assert record["gate"]["force_reason"] == "hotfix approved by the on-call lead"
    assert record["conf"] == {"force": True, "reason": "hotfix approved by the on-call lead", "dry_run": False}
    assert serving_digest(models_dir) == record["artifact"]["digest"]
