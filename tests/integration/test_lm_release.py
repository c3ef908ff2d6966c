"""A language model released end to end with dag.test(): the code_lm spec, a real build, a real vLLM.

The tests share one model-delivery home and run in order. The first release trains code_lm,
scores it in a sandbox, serves it with vLLM behind the front port and answers a completion from
the released digest. A worse LM (fewer training steps) is then rejected on perplexity against
production, on the same held-out blocks; and an LM that fails a golden prompt (forced past the
gate) is rolled back, while the first one keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.lm import kill_session
from tests.helpers.models import edit_spec
from tests.helpers.release import (
    check_outcome,
    load_record,
    release_env,
    rolled_back_record,
    run_release,
    task_states,
)

pytestmark = pytest.mark.integration

MODEL = "code_lm"
WORSE_STEPS = 30


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path, vllm_python: str):
    with release_env(tmp_path_factory.mktemp("lm_release"), names=(MODEL,)) as models_dir:
        yield models_dir
        from model_delivery.settings import get_settings

        state = get_settings().open_ledger().state(MODEL, "local")
        if state:
            for slot in [state.get("active"), state.get("standby"), *(state.get("candidates") or {}).values(),
                         state.get("front")]:
                if slot and slot.get("pid"):
                    kill_session(slot["pid"])


def front(models_dir: Path) -> str:
    spec = yaml.safe_load((models_dir / MODEL / "model.yaml").read_text())
    return f"http://127.0.0.1:{spec['deploy']['local']['port']}"


def complete(url: str, prompt: str = "def ") -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 8,
                                                    "temperature": 0}, timeout=60)


def served_root(url: str) -> str:
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in models] == [MODEL]
    return "sha256:" + Path(models[0]["root"]).name


def production():
    from model_delivery.registry import PRODUCTION, Registry
    from model_delivery.settings import get_settings

    return Registry(get_settings().tracking_uri).alias(MODEL, PRODUCTION)


def test_a_released_lm_answers_a_completion_through_the_front_port_from_its_digest(env: Path) -> None:
    dag_run = run_release(MODEL, {"reason": "first LM release"})

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert states.pop("rollback") == "skipped"
    assert set(states.values()) == {"success"}, states
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "released"
    digest = record["artifact"]["digest"]
    evaluation = record["stages"]["evaluate"]["result"]
    assert evaluation["unit"] == "blocks" and evaluation["rows"] == 48 and evaluation["tokens"] > 0
    assert set(evaluation["metrics"]) == {"perplexity", "bits_per_byte", "next_token_accuracy"}
    assert 1 < evaluation["metrics"]["perplexity"] < 300
    assert record["gate"]["verdict"] == "first-release"
    data = record["stages"]["validate_data"]["result"]
    assert data["passed"] and {d["feature"] for d in data["datasets"]["eval"]["drift"]} == {"chars", "lines"}
    smoke = record["stages"]["smoke"]["result"]
    assert smoke["protocol"] == "openai" and smoke["passed"], smoke["failures"]
    assert all(case["ok"] for case in smoke["cases"]) and smoke["latency_ms"]["ttft_p95"] > 0
    assert smoke["latency_ms"]["concurrency"] == 4
    assert record["stages"]["verify"]["result"]["url"] == front(env)
    report = Path(record["report"].removeprefix("file://")).read_text()
    assert "held-out blocks" in report and "time to first token" in report and "| perplexity |" in report
    assert production().digest == digest

    response = complete(front(env))

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"]
    assert served_root(front(env)) == digest


def test_a_worse_lm_is_rejected_on_perplexity_and_production_keeps_serving(env: Path) -> None:
    served = production()
    edit_spec(env / MODEL, lambda spec: spec["build"]["params"].update(steps=WORSE_STEPS))

    dag_run = run_release(MODEL, {"reason": "fewer steps"})

    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["gate"] == "failed" and states["deploy_staging"] in ("upstream_failed", "skipped")
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "rejected"
    check_outcome(dag_run, "rejected")
    gate = record["gate"]
    assert gate["verdict"] == "rejected" and gate["baseline_version"] == served.version
    failed = {c["metric"]: c for c in gate["checks"] if c["kind"] == "regression" and not c["ok"]}
    assert "perplexity" in failed and failed["perplexity"]["value"] > failed["perplexity"]["baseline"]
    assert failed["perplexity"]["ci"][0] > 0  # worse beyond doubt on the same blocks (paired bootstrap)
    champion = record["stages"]["evaluate"]["result"]["champion"]
    assert champion["paired"] and champion["version"] == served.version
    assert any("perplexity regressed against production" in reason for reason in record["reasons"])
    assert production().version == served.version
    assert complete(front(env)).status_code == 200 and served_root(front(env)) == served.digest


def test_an_lm_that_fails_a_golden_prompt_is_rolled_back_and_the_previous_one_keeps_serving(env: Path) -> None:
    served = production()
    golden = json.loads((env / MODEL / "golden.json").read_text())
    golden.append({"name": "an impossible answer", "prompt": "def ", "max_tokens": 4,
                   "expect": {"contains": "no model says this"}})
    (env / MODEL / "golden.json").write_text(json.dumps(golden))

    dag_run = run_release(MODEL, {"reason": "golden prompt", "force": True})  # past the gate: the worse LM again

    record = rolled_back_record(dag_run, "smoke", "deploy_production")
    smoke = record["stages"]["smoke"]["result"]
    failed = {case["name"]: case for case in smoke["cases"] if not case["ok"]}
    assert "an impossible answer" in failed
    assert any("does not contain 'no model says this'" in p for p in failed["an impossible answer"]["problems"])
    assert any("an impossible answer" in reason for reason in record["reasons"])
    assert production().version == served.version
    assert complete(front(env)).status_code == 200 and served_root(front(env)) == served.digest
