"""vLLM as a serving runtime on the local target: a real vLLM (CPU) on 127.0.0.1 serving a tiny code_lm.

Readiness tells the truth (the model listed, from the expected artifact, a warm-up completion
answered), a streamed completion in flight during a blue-green switch completes, a rollback
switches back, and an artifact holding a pickle is refused before anything starts.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_delivery.deploy import Candidate
from model_delivery.deploy.local.spec import LocalTargetSpec
from model_delivery.deploy.local.target import LocalTarget
from model_delivery.exceptions import TamperedArtifact
from model_delivery.spec import ServingSpec
from model_delivery.store import ArtifactStore
from tests.helpers.lm import VLLM_ARGS, kill_session, store_two_lms
from tests.helpers.models import free_port

pytestmark = pytest.mark.integration
MODEL = "code_lm"


@pytest.fixture(scope="module")
def lm(tiny_lm: Path, vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("vllm_local")
    store = ArtifactStore(f"file://{base}/store")
    v1, v2 = store_two_lms(store, tiny_lm, base)
    target = LocalTarget(MODEL, LocalTargetSpec(port=free_port(), ready_timeout_seconds=900), base / "deploy", store,
                         ServingSpec(runtime="vllm", args=VLLM_ARGS))
    yield target, Candidate(MODEL, "1", v1.digest), Candidate(MODEL, "2", v2.digest), store, base
    state = target._read()
    for slot in [state["active"], state["standby"], *state["candidates"].values()]:
        if slot:
            kill_session(slot["pid"])
    if state.get("front"):
        kill_session(state["front"]["pid"])


def complete(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "def ", "max_tokens": 8,
                                                    "temperature": 0, **body}, timeout=60)


def test_a_released_lm_answers_through_the_front_from_its_digest(lm: Any) -> None:
    target, v1, _, _, _ = lm
    staged = target.stage(v1, "run-1")  # ready only when listed, from this digest, and a warm-up answered
    assert target.runtime.served_digest(staged["url"], MODEL) == v1.digest
    models = httpx.get(f"{staged['url']}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in models] == [MODEL] and Path(models[0]["root"]).name == v1.digest.removeprefix("sha256:")

    shifted = target.shift("run-1")

    assert shifted["note"] == "front switched"
    response = complete(target.front_url)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"]
    assert target.runtime.served_digest(target.front_url, MODEL) == v1.digest
    assert httpx.get(f"{target.front_url}/health", timeout=10).status_code == 200


def test_a_streamed_completion_in_flight_during_the_switch_completes(lm: Any) -> None:
    target, v1, v2, _, _ = lm
    target.stage(v2, "run-2")
    chunks: list[str] = []
    first = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{target.front_url}/v1/completions", timeout=120, json={
                    "model": MODEL, "prompt": "def ", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
                    "stream": True}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line.removeprefix("data: "))
                        first.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(60)
    in_flight_at_switch = len(chunks)
    target.shift("run-2")
    reader.join(120)

    assert not errors, errors
    assert chunks[-1] == "[DONE]"
    assert in_flight_at_switch < len(chunks) - 1, "the stream had ended before the switch"
    last = json.loads(chunks[-2])["choices"][0]
    assert last["finish_reason"] == "length"  # all 200 tokens came (a chunk may carry more than one)
    assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1])
    assert target.runtime.served_digest(target.front_url, MODEL) == v2.digest  # new connections go to v2
    assert target.status()["standby"]["version"] == "1"

    rolled = target.rollback("run-2")
    assert rolled == {"action": "switched-back", "serving": "1"}
    assert target.runtime.served_digest(target.front_url, MODEL) == v1.digest
    assert complete(target.front_url).status_code == 200


def test_an_artifact_holding_a_pickle_is_refused_before_anything_starts(lm: Any, tiny_lm: Path) -> None:
    target, _, _, store, base = lm
    pickled = base / "pickled"
    shutil.copytree(tiny_lm / "model", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really weights")
    artifact = store.put_directory(MODEL, pickled)
    before = target.status()

    with pytest.raises(TamperedArtifact, match=r"pickle files \['pytorch_model.bin'\].*safetensors"):
        target.stage(Candidate(MODEL, "3", artifact.digest), "run-3")

    after = target.status()
    assert after["candidates"] == before["candidates"] and after["active"] == before["active"]
    assert target.runtime.served_digest(target.front_url, MODEL) == before["active"]["digest"]


def test_the_openai_smoke_test_checks_prompts_plain_and_streamed_with_latency_budgets(lm: Any) -> None:
    from model_delivery.smoke_lm import GoldenPrompt, run_smoke_lm

    target, v1, v2, _, _ = lm
    url = target.front_url  # v1 serves here after the rollback above
    exact = complete(url, prompt="import ", max_tokens=6).json()["choices"][0]["text"]  # how a golden is made
    cases = [GoldenPrompt.model_validate(c) for c in (
        {"name": "a function header", "prompt": "def ", "max_tokens": 8, "expect": {"min_length": 1}},
        {"name": "an import, greedy", "prompt": "import ", "max_tokens": 6, "expect": {"equals": exact}},
    )]
    budgets = {"repeats": 3, "concurrency": 4, "ttft_budget_ms": 30_000.0, "tpot_budget_ms": 5_000.0}
    served = target.runtime.served_digest

    report = run_smoke_lm(url, MODEL, cases, expect_digest=v1.digest, served_digest=served, **budgets)

    assert report["passed"], report["failures"]
    assert report["requests"] == 2 * 2 + 2 * 3
    latency = report["latency_ms"]
    assert 0 < latency["ttft_p50"] <= latency["ttft_p95"] and 0 < latency["tpot_p50"] <= latency["tpot_p95"]

    wrong = [GoldenPrompt.model_validate({"name": "wants zebras", "prompt": "def ", "max_tokens": 8,
                                          "expect": {"contains": "zebra"}})]
    failed = run_smoke_lm(url, MODEL, wrong, expect_digest=v2.digest, served_digest=served,
                          **{**budgets, "ttft_budget_ms": 0.001})
    assert not failed["passed"]
    assert any(f.startswith("wants zebras: plain: ") and "does not contain 'zebra'" in f for f in failed["failures"])
    assert any(f.startswith(f"served by digest {v1.digest}, expected {v2.digest}") for f in failed["failures"])
    timed = run_smoke_lm(url, MODEL, cases[:1], **{**budgets, "ttft_budget_ms": 0.001})
    assert any("p95 time to first token" in f and "exceeds the budget of 0.001 ms" in f for f in timed["failures"])
