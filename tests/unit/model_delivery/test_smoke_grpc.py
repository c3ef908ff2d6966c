"""The smoke test over gRPC (``smoke.protocol: grpc``) against a real model server with ``--grpc-port`` and a
bearer token: the golden cases pass, a wrong golden answer, the wrong digest, a missing token and a server that
is not there fail, and every answer over gRPC is the JSON body REST gives for the same case.

This module does not import tritonclient: the smoke test's client is the model server's generated stub here (see
test_local_grpc.py for it beside tritonclient.grpc).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from model_delivery.smoke import _GrpcSender, grpc_served_digest, load_golden, run_smoke
from tests.helpers.models import PROJECT, free_port
from tests.helpers.processes import serving_env, stop_processes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from model_delivery.smoke import GoldenCase
    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"
TOKEN = "smoke-grpc-token"
READY_DEADLINE = 60.0


@dataclass(frozen=True)
class Served:
    url: str
    grpc: str
    digest: str


@pytest.fixture(scope="module")
def served(builds: Builds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real model server for the v1 build, HTTP and gRPC, with a token."""
    base = tmp_path_factory.mktemp("smoke-grpc")
    artifact = builds.store.fetch(MODEL, builds.v1.digest, base / "artifact")
    http_port, grpc_port = free_port(), free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "model_server", "--artifact", str(artifact), "--digest", builds.v1.digest,
             "--model-name", MODEL, "--model-version", "1", "--host", "127.0.0.1", "--port", str(http_port),
             "--grpc-port", str(grpc_port), "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**serving_env(), "MODEL_SERVER_TOKEN": TOKEN},
        )  # fmt: skip
    try:
        url, address = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        deadline = time.monotonic() + READY_DEADLINE
        while True:
            if proc.poll() is not None:
                pytest.fail(f"model server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if (httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
                        and grpc_served_digest(address) == builds.v1.digest):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"model server not ready within {READY_DEADLINE}s:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield Served(url, address, builds.v1.digest)
    finally:
        stop_processes([proc])


def _golden() -> list[GoldenCase]:
    return load_golden(PROJECT / "include" / "models" / MODEL / "golden.json")


def _wrong(cases: list[GoldenCase]) -> list[GoldenCase]:
    first = cases[0]
    wrong = [1 - v for v in first.expect.equals or [0]]
    changed = first.model_copy(update={"expect": first.expect.model_copy(update={"equals": wrong})})
    return [changed, *cases[1:]]


def _smoke(served: Served, cases: list[GoldenCase], *, digest: str | None = None, token: str | None = TOKEN,
           address: str | None = None, budget_ms: float = 60_000) -> dict:
    return run_smoke(served.url, MODEL, cases, repeats=3, budget_ms=budget_ms, expect_digest=digest or served.digest,
                     token=token, protocol="grpc", grpc_address=address or served.grpc)


def test_the_golden_cases_pass_over_grpc_and_the_record_names_the_protocol(served: Served) -> None:
    cases = _golden()
    report = _smoke(served, cases)
    assert report["passed"] is True, report["failures"]
    assert report["protocol"] == "grpc" and report["url"] == f"grpc://{served.grpc}"
    assert report["requests"] == 3 * len(cases) and all(case["ok"] for case in report["cases"])
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]

    rest = run_smoke(served.url, MODEL, cases, repeats=1, budget_ms=60_000, expect_digest=served.digest, token=TOKEN)
    assert rest["passed"] is True and rest["protocol"] == "rest" and rest["url"] == served.url


def test_a_wrong_golden_answer_fails_over_grpc_naming_the_case(served: Served) -> None:
    cases = _wrong(_golden())
    report = _smoke(served, cases)
    assert report["passed"] is False
    assert report["failures"][0].startswith(f"{cases[0].name}: predict = ")
    assert "!= expected" in report["failures"][0]
    assert report["cases"][0]["ok"] is False and all(case["ok"] for case in report["cases"][1:])


@pytest.mark.parametrize(("kwargs", "failure"), [
    pytest.param({"digest": "sha256:" + "0" * 64}, "served by digest sha256:", id="another-digest"),
    pytest.param({"token": None}, "gRPC UNAUTHENTICATED: authentication required", id="no-token"),
    pytest.param({"token": "wrong"}, "gRPC UNAUTHENTICATED: invalid bearer token", id="wrong-token"),
    pytest.param({"budget_ms": 0.0001}, "exceeds the budget", id="latency-budget"),
])
def test_the_smoke_test_over_grpc_fails(served: Served, kwargs: dict, failure: str) -> None:
    report = _smoke(served, _golden(), **kwargs)
    assert report["passed"] is False
    assert any(failure in f for f in report["failures"]), report["failures"]


def test_nothing_listening_on_the_grpc_address_fails_untimed(served: Served) -> None:
    report = _smoke(served, _golden()[:1], address=f"127.0.0.1:{free_port()}")
    assert report["passed"] is False and report["requests"] == 0
    assert "request failed: gRPC UNAVAILABLE" in report["failures"][0]


def test_grpc_without_an_address_is_refused(served: Served) -> None:
    with pytest.raises(ValueError, match="has no gRPC address: deploy it again with serving.grpc: true"):
        run_smoke(served.url, MODEL, _golden(), repeats=1, budget_ms=1, protocol="grpc", grpc_address=None)


def test_each_answer_over_grpc_is_the_body_rest_gives(served: Served) -> None:
    """Compared exactly: the same outputs, datatypes, shapes and values, whatever the protocol."""
    with _GrpcSender(served.grpc, MODEL, timeout=10, token=TOKEN) as send, httpx.Client(
            base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
        for case in _golden():
            failed, digest, body = send(case)
            assert failed is None and digest == served.digest
            rest = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": case.inputs}).json()
            assert body["outputs"] == [{k: o[k] for k in ("name", "datatype", "shape", "data")}
                                       for o in rest["outputs"]], case.name
            assert body["model_version"] == rest["model_version"] == "1"


def test_the_fallback_classes_beside_tritonclient_give_the_same_answers(served: Served, tmp_path: Path) -> None:
    """In a process where tritonclient.grpc registered package ``inference`` first, the smoke test uses those
    classes (the generated module cannot be imported there) and passes alike."""
    script = (
        "import json, sys\n"
        "import tritonclient.grpc\n"
        "from model_delivery import smoke\n"
        "from pathlib import Path\n"
        "cases = smoke.load_golden(Path(sys.argv[1]))\n"
        "report = smoke.run_smoke(sys.argv[2], 'breast_cancer', cases, repeats=2, budget_ms=60000,\n"
        "    expect_digest=sys.argv[3], token=sys.argv[4], protocol='grpc', grpc_address=sys.argv[5])\n"
        "wrong = smoke.run_smoke(sys.argv[2], 'breast_cancer', [cases[0].model_copy(update={'expect': \n"
        "    cases[0].expect.model_copy(update={'equals': [7]})})], repeats=1, budget_ms=60000, token=sys.argv[4],\n"
        "    protocol='grpc', grpc_address=sys.argv[5])\n"
        "import model_server\n"
        "print(json.dumps({'passed': report['passed'], 'failures': report['failures'], 'wrong': wrong['failures'],\n"
        "    'generated': 'model_server.grpc_predict_v2_pb2' in sys.modules}))\n"
    )
    env = serving_env()
    env["PYTHONPATH"] = f"{PROJECT / 'plugins'}:{env['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-c", script, str(PROJECT / "include" / "models" / MODEL / "golden.json"),
                          served.url, served.digest, TOKEN, served.grpc], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"passed": True, "failures": [], "wrong": [result["wrong"][0]], "generated": False}
    assert "predict = [0] != expected [7]" in result["wrong"][0]
