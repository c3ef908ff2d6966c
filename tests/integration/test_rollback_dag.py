"""The model_rollback DAG: registry alias and serving deployment move back together, smoke-tested."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.models import edit_spec
from tests.helpers.release import check_outcome, get_dag, load_record, release_env, run_release, task_states

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    """Three released versions of the model: C=1.0 (v1), C=0.5 (v2), C=0.3 (v3, production)."""
    with release_env(tmp_path_factory.mktemp("rollback"), (MODEL,)) as models_dir:
        digests = {}
        for c in (1.0, 0.5, 0.3):
            edit_spec(models_dir / MODEL, lambda spec, c=c: spec["build"]["params"].update(C=c))
            dag_run = run_release(MODEL, {"reason": f"C={c}"})
            assert dag_run.state == "success"
            artifact = load_record(MODEL, dag_run.run_id)["artifact"]
            digests[artifact["version"]] = artifact["digest"]
        yield models_dir, digests


def rollback(conf: dict) -> object:
    return get_dag("model_rollback").test(run_conf=conf)


def aliases() -> tuple[str | None, str | None]:
    from model_delivery.registry import PREVIOUS, PRODUCTION, Registry
    from model_delivery.settings import get_settings

    registry = Registry(get_settings().tracking_uri)
    prod, prev = registry.alias(MODEL, PRODUCTION), registry.alias(MODEL, PREVIOUS)
    return (prod.version if prod else None, prev.version if prev else None)


def serving(models_dir: Path) -> str:
    port = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())["deploy"]["local"]["port"]
    return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).headers["x-model-digest"]


def test_rollback_to_the_previous_version(env) -> None:
    models_dir, digests = env
    assert aliases() == ("3", "2")

    dag_run = rollback({"model": MODEL, "reason": "v3 misbehaves"})

    assert dag_run.state == "success"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "reverted"
    check_outcome(dag_run, "reverted")
    assert record["reasons"] == ["version 3 → version 2"]
    assert record["stages"]["smoke"]["status"] == record["stages"]["verify"]["status"] == "success"
    assert aliases() == ("2", "3")
    assert serving(models_dir) == digests["2"]


def test_rollback_to_a_named_version(env) -> None:
    models_dir, digests = env
    dag_run = rollback({"model": MODEL, "version": "1", "reason": "back to the first"})

    assert dag_run.state == "success"
    assert aliases()[0] == "1"
    assert serving(models_dir) == digests["1"]


def test_rolling_back_to_what_already_serves_is_a_no_op(env) -> None:
    models_dir, digests = env
    before = aliases()
    dag_run = rollback({"model": MODEL, "version": "1", "reason": "again"})

    assert dag_run.state == "success"
    states = task_states(dag_run)
    assert states["deploy_staging"] == "skipped"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "no-change"
    check_outcome(dag_run, "no-change")
    assert "already production" in record["reasons"][0]
    assert aliases() == before
    assert serving(models_dir) == digests["1"]


@pytest.mark.parametrize(("conf", "message"), [
    pytest.param({"version": "42"}, "has no version '42'", id="unknown-version"),
    pytest.param({"version": "latest"}, "has no version 'latest'", id="not-a-version"),
])
def test_an_unknown_version_is_refused_before_anything_changes(env, conf: dict, message: str) -> None:
    models_dir, _ = env
    before, digest = aliases(), serving(models_dir)
    dag_run = rollback({"model": MODEL, **conf})

    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["resolve"] == "failed"
    assert states["deploy_staging"] == "upstream_failed"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "refused"
    pushed = check_outcome(dag_run, "refused")
    assert pushed is not None and message in pushed["error"]
    assert record["conf"]["reason"] == ""  # no reason given: the param's null default, recorded as empty
    assert message in record["reasons"][0] and "Fix:" in record["reasons"][0]
    assert aliases() == before and serving(models_dir) == digest


def test_an_unknown_model_is_refused_by_the_params(env) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="model"):
        rollback({"model": "no_such_model"})


def test_a_release_waits_while_a_rollback_holds_the_deploy_lease(env) -> None:
    """The lease is held as if a manual rollback were deploying; the release's deploy waits, then goes on."""
    import threading
    import time

    from model_delivery.release import ReleaseContext

    models_dir, _ = env
    holder = ReleaseContext(model=MODEL, run_id="manual-rollback-in-flight", dag_id="model_rollback")
    holder.ledger.acquire(MODEL, holder.run_id, holder.dag_id, alive=lambda lease: True)
    def release_once_the_release_waits() -> None:
        releases = holder.store.release_dir(MODEL, "x").parent
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not stop.is_set():
            for record in releases.glob("*/release.json"):
                if '"status": "waiting"' in record.read_text():
                    holder.ledger.release(MODEL, holder.run_id)
                    return
            time.sleep(0.5)
        holder.ledger.release(MODEL, holder.run_id)

    stop = threading.Event()
    timer = threading.Thread(target=release_once_the_release_waits, daemon=True)
    timer.start()
    edit_spec(models_dir / MODEL, lambda spec: spec["build"]["params"].update(C=0.2))
    started = time.monotonic()
    try:
        dag_run = run_release(MODEL, {"reason": "while a rollback deploys"})
    finally:
        stop.set()
        timer.join(timeout=10)
        holder.ledger.release(MODEL, holder.run_id)

    assert dag_run.state == "success"
    deploy = load_record(MODEL, dag_run.run_id)["stages"]["deploy_staging"]
    assert deploy["status"] == "success"
    assert deploy["waits"] >= 1, "deploy_staging never waited for the lease"
    assert time.monotonic() - started > 0
    assert holder.ledger.holder(MODEL) is None


def test_a_rollback_waiting_longer_than_lease_wait_fails_naming_the_holder_and_changes_nothing(env) -> None:
    """deploy.lease_wait_seconds bounds the wait: past it, deploy_staging fails, naming the run that holds the
    lease and what to do; production, the aliases and the holder's lease are as they were."""
    import time

    from model_delivery.release import ReleaseContext

    models_dir, _ = env
    edit_spec(models_dir / MODEL, lambda spec: spec["deploy"].update(lease_wait_seconds=12))
    holder = ReleaseContext(model=MODEL, run_id="release-in-flight", dag_id="release__breast_cancer")
    holder.ledger.acquire(MODEL, holder.run_id, holder.dag_id, alive=lambda lease: True)
    before, served = aliases(), serving(models_dir)
    started = time.monotonic()
    try:
        dag_run = rollback({"model": MODEL, "version": "1", "reason": "while a release deploys"})
        waited = time.monotonic() - started
        held = holder.ledger.holder(MODEL)
    finally:
        holder.ledger.release(MODEL, holder.run_id)
        edit_spec(models_dir / MODEL, lambda spec: spec["deploy"].pop("lease_wait_seconds"))

    assert dag_run.state == "failed"
    deploy = load_record(MODEL, dag_run.run_id)["stages"]["deploy_staging"]
    assert deploy["status"] == "failed" and deploy["waits"] >= 1 and deploy["try"] == 1, deploy  # not retried
    assert "release__breast_cancer run release-in-flight is deploying" in deploy["error"], deploy["error"]
    assert "Gave up after waiting 0:00:12 (deploy.lease_wait_seconds)" in deploy["error"], deploy["error"]
    assert waited >= 12
    assert held is not None and held["run_id"] == "release-in-flight"  # the failed waiter left it alone
    assert aliases() == before and serving(models_dir) == served
