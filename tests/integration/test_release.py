"""End-to-end releases with dag.test(): real build, MLflow, model servers and HTTP on 127.0.0.1.

The tests in this module share one model-delivery home and run in order: the first
release puts version 1 into production, and later tests release against it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.models import edit_spec
from tests.helpers.release import (
    check_outcome,
    kill_release_when,
    load_record,
    mark_failed,
    release_env,
    run_release,
    task_states,
    xcom_values,
)

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    with release_env(tmp_path_factory.mktemp("release")) as models_dir:
        yield models_dir


def front_url(models_dir: Path, model: str = MODEL) -> str:
    spec = yaml.safe_load((models_dir / model / "model.yaml").read_text())
    return f"http://127.0.0.1:{spec['deploy']['local']['port']}"


def golden(models_dir: Path, model: str = MODEL) -> list[dict]:
    return json.loads((models_dir / model / "golden.json").read_text())


def infer(models_dir: Path, model: str = MODEL) -> httpx.Response:
    case = golden(models_dir, model)[0]
    return httpx.post(f"{front_url(models_dir, model)}/v2/models/{model}/infer", json={"inputs": case["inputs"]}, timeout=10)


def production(model: str = MODEL):
    from model_delivery.registry import PRODUCTION, Registry
    from model_delivery.settings import get_settings

    return Registry(get_settings().tracking_uri).alias(model, PRODUCTION)


def test_release_delivers_the_demo_model_to_a_live_server(env: Path) -> None:
    dag_run = run_release(MODEL, {"reason": "first release"})

    assert dag_run.state == "success"
    states = task_states(dag_run)
    assert states.pop("rollback") == "skipped"
    assert set(states.values()) == {"success"}, states
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "released"
    assert check_outcome(dag_run, "released") is None and "outcome" in states
    assert record["conf"] == {"reason": "first release", "force": False, "dry_run": False}
    assert record["gate"]["verdict"] == "first-release"
    assert record["gate"]["reasons"] == ["no production version exists: thresholds alone decided"]
    assert record["metrics"]["accuracy"] > 0.9
    digest = record["artifact"]["digest"]
    assert digest.startswith("sha256:")
    for stage in ("build", "evaluate", "gate", "deploy_staging", "smoke", "deploy_production", "verify", "promote"):
        assert record["stages"][stage]["status"] == "success"
        assert record["stages"][stage]["seconds"] >= 0
    report = Path(record["report"].removeprefix("file://")).read_text()
    assert report.startswith(f"# Release of `{MODEL}` version 1: **released**")
    built_on = record["artifact"]["build_env"]  # what the build ran on, from the build's own Python
    assert built_on["python"]["version"] == platform.python_version()
    assert built_on["env"]["OMP_NUM_THREADS"] == "1" and built_on["blas"][0]["num_threads"] == 1
    assert f"| Built on | Python {platform.python_version()} (" in report and "BLAS openblas" in report
    assert production().tags["build.threads"] == "1"

    # A real inference through the stable front address, answered by this very artifact.
    response = infer(env)
    assert response.status_code == 200
    assert response.headers["x-model-digest"] == digest
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["predict"]["data"] == golden(env)[0]["expect"]["equals"]

    # The registry: one version, in production, with its lineage.
    version = production()
    assert version is not None and version.version == record["artifact"]["version"]
    for tag in ("artifact_digest", "git_sha", "spec_digest", "dag_id", "run_id", "data.train.sha256", "data.eval.sha256"):
        assert version.tags[tag], tag
    assert version.tags["run_id"] == dag_run.run_id
    assert version.tags["artifact_digest"] == digest


def test_xcom_holds_only_small_json(env: Path) -> None:
    dag_run = run_release(MODEL, {"reason": "xcom check"})
    values = xcom_values(dag_run)
    assert "build.return_value" in values
    for key, value in values.items():
        encoded = json.dumps(value)  # raises on bytes, frames, arrays
        assert len(encoded) < 16_384, f"{key} holds {len(encoded)} bytes"


def test_rerunning_the_same_release_ends_early_as_no_change(env: Path) -> None:
    before = production()
    dag_run = run_release(MODEL, {"reason": "same inputs again"})

    assert dag_run.state == "success"
    states = task_states(dag_run)
    assert states["build"] == states["detect_change"] == states["record"] == states["outcome"] == "success"
    for task in ("validate_data", "evaluate", "gate", "deploy_staging", "deploy_production", "promote"):
        assert states[task] == "skipped", task
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "no-change"
    assert record["reasons"] == [f"version {before.version} is production already, from the same spec and data: nothing to do"]
    build = record["stages"]["build"]["result"]
    assert build["reused"] is True and build["version_existed"] is True and build["no_change"] is True
    assert production().version == before.version
    assert infer(env).headers["x-model-digest"] == before.digest


def test_a_spec_edit_that_keeps_the_artifact_releases_once_then_runs_are_no_change(env: Path) -> None:
    before = production()
    edit_spec(env / MODEL, lambda spec: spec.update(description=spec["description"] + " (edited)"))

    first = run_release(MODEL, {"reason": "the spec changed, not the model"})
    second = run_release(MODEL, {"reason": "nothing changed since"})

    record = load_record(MODEL, first.run_id)
    build = record["stages"]["build"]["result"]
    assert build["reused"] and build["version"] == before.version  # the same artifact, the same version
    assert record["outcome"] == "released" and record["gate"]["verdict"] == "no-change"
    # Before, the check compared the build lineage of the version (the old spec): every run released again.
    assert load_record(MODEL, second.run_id)["outcome"] == "no-change"
    assert task_states(second)["deploy_staging"] == "skipped"
    version = production()
    assert version.version == before.version and version.tags["promoted_by"] == first.run_id
    assert version.tags["promoted.spec_digest"] == build["spec_digest"] != version.tags["spec_digest"]


def test_force_redeploys_the_same_version_as_a_no_op(env: Path) -> None:
    before = production()
    dag_run = run_release(MODEL, {"reason": "redeploy", "force": True})

    assert dag_run.state == "success"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "released"
    assert record["gate"]["verdict"] == "no-change"
    assert "already running" in record["stages"]["deploy_staging"]["note"]
    assert production().version == before.version
    assert infer(env).headers["x-model-digest"] == before.digest


def test_dry_run_checks_everything_and_changes_nothing(env: Path) -> None:
    from model_delivery.settings import get_settings

    before = production()
    edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(C=0.7))  # a new version
    ledger = get_settings().open_ledger()
    state = ledger.state(MODEL, "local")
    try:
        dag_run = run_release(MODEL, {"reason": "what would change?", "dry_run": True})
    finally:
        edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(C=1.0))

    assert dag_run.state == "success"
    states = task_states(dag_run)
    for task in ("build", "validate_data", "evaluate", "gate", "record", "outcome"):
        assert states[task] == "success", (task, states)
    for task in ("deploy_staging", "smoke", "deploy_production", "verify", "promote", "rollback"):
        assert states[task] == "skipped", (task, states)
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "dry-run"
    assert record["conf"]["dry_run"] is True
    staging = record["stages"]["deploy_staging"]
    assert staging["status"] == "dry-run"
    plan = staging["result"]
    assert plan["dry_run"] is True and plan["target"] == "local" and plan["artifact_verified"] is True
    assert plan["serving"] == before.version and plan["digest"] == record["artifact"]["digest"] != before.digest
    assert f"from version {before.version} to it" in plan["note"]
    assert "nothing was changed" in record["reasons"][0]
    assert xcom_values(dag_run)["deploy_staging.return_value"] == plan
    # Nothing moved: the registry alias, the deploy state, the server answering, and no lease held.
    assert production().version == before.version
    assert ledger.state(MODEL, "local") == state
    assert infer(env).headers["x-model-digest"] == before.digest
    assert (ledger.holder(MODEL) or {}).get("run_id") != dag_run.run_id


def test_smoke_failure_rolls_back_and_production_keeps_serving(env: Path) -> None:
    before = production()
    model_dir = env / MODEL
    # A different model (so a new version), whose golden answer can never match.
    edit_spec(model_dir, lambda spec: spec["build"]["params"].update(C=0.5))
    cases = golden(env)
    cases[0]["expect"]["equals"] = [7]
    (model_dir / "golden.json").write_text(json.dumps(cases))

    dag_run = run_release(MODEL, {"reason": "this one fails its smoke test"})

    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["smoke"] == "failed"
    assert states["rollback"] == "success"
    assert states["deploy_production"] == "upstream_failed"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rolled-back"
    assert any(reason.startswith("smoke:") and "[7]" in reason for reason in record["reasons"]), record["reasons"]
    pushed = check_outcome(dag_run, "rolled-back")  # record green, outcome red saying why
    assert pushed is not None and pushed["error"].startswith("release rolled-back: smoke: ") and "[7]" in pushed["error"]
    assert record["stages"]["rollback"]["result"]["action"] == "stopped-candidate"
    assert record["artifact"]["digest"] != before.digest
    # Production is exactly as it was: same registry alias, same server answering.
    assert production().version == before.version
    response = infer(env)
    assert response.status_code == 200
    assert response.headers["x-model-digest"] == before.digest


def test_second_model_releases_through_the_same_spec_contract(env: Path) -> None:
    dag_run = run_release("wine", {"reason": "second model"})

    assert dag_run.state == "success"
    record = load_record("wine", dag_run.run_id)
    assert record["outcome"] == "released"
    response = infer(env, "wine")
    assert response.status_code == 200
    proba = {o["name"]: o for o in response.json()["outputs"]}["predict_proba"]
    assert proba["shape"] == [1, 3]


def test_a_release_killed_after_its_switch_and_marked_failed_is_settled_by_the_next(env: Path, tmp_path: Path) -> None:
    """The whole release process is killed (-9) after its shift, before verify and promote: the front
    serves an unverified version the registry does not call production. The run is marked failed (as
    in the UI). The next release takes its lease over, rolls it back first, then releases."""
    import psutil

    from model_delivery.settings import get_settings

    before = production()
    ledger = get_settings().open_ledger()
    known = {e["run_id"] for e in ledger.journal(MODEL)}
    project = Path(__file__).resolve().parents[2]
    (env / MODEL / "golden.json").write_text((project / "include" / "models" / MODEL / "golden.json").read_text())
    edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(C=0.35))  # a new version

    def switched() -> str | None:
        done = [e for e in ledger.journal(MODEL, target="local")
                if e["action"] == "switch" and e["status"] == "done" and e["run_id"] not in known]
        return done[-1]["run_id"] if done else None

    killed_run = kill_release_when(MODEL, {"reason": "killed mid-release"}, tmp_path / "killed.log", switched)
    unverified = infer(env).headers["x-model-digest"]
    assert unverified != before.digest and production().version == before.version  # the inconsistency left
    mark_failed(killed_run)

    dag_run = run_release(MODEL, {"reason": "after the killed release"})

    assert dag_run.state == "success", task_states(dag_run)
    record = load_record(MODEL, dag_run.run_id)
    settled = record["stages"]["deploy_staging"]["result"]["took_over"]
    assert settled["run_id"] == killed_run and settled["finished"] == "rollback", settled
    now = production()
    state = ledger.state(MODEL, "local")
    assert infer(env).headers["x-model-digest"] == now.digest == state["active"]["digest"] == unverified
    assert ledger.pending(MODEL, "local") == [] and ledger.holder(MODEL) is None
    named = {slot["pid"] for slot in [state["front"], state["active"], state["standby"],
                                      *state["candidates"].values()] if slot}
    deploy_dir = str(get_settings().deploy_dir / MODEL)
    running = {p.pid for p in psutil.process_iter(["cmdline"]) if deploy_dir in " ".join(p.info["cmdline"] or [])}
    assert running <= named, f"orphans: {running - named}"
    edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(C=1.0))
