"""The model server as real Open Inference Protocol clients use it: Triton's tritonclient.http and
tritonclient.grpc (written by others, not for this server) against one real ``python -m model_server`` process
serving a real build of the breast_cancer demo model (its train.py, stored and fetched verified), with a bearer
token, a model version, ``--max-rows`` and ``--max-body-bytes``, and ``--grpc-port``.

Every endpoint both ways: health, server and model metadata and readiness (with and without the version),
inference as JSON, as binary tensors (in, out, mixed) and over gRPC (raw contents, and typed contents through the
client's own stub); every answer compared with the JSON path and the estimator; the token refused and accepted;
the limits and a client mistake answered alike by both protocols.

The server's own gRPC classes are never imported here: they and tritonclient.grpc's register the same
``inference`` package in protobuf's descriptor pool.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_breast_cancer
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from model_delivery.store import ArtifactStore
from tests.helpers.models import build_and_store, free_port
from tests.helpers.processes import serving_env, stop_processes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
VERSION = "7"
TOKEN = "oip-clients-token"
MAX_ROWS = 1000
MAX_BODY = 1024 * 1024
READY_DEADLINE = 60.0


def auth() -> dict[str, str]:
    """The token's header, a new dict each time: tritonclient.http's infer adds its own headers to the one given.
    Lower case: gRPC metadata keys must be."""
    return {"authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Served:
    http_url: str  # host:port, as tritonclient takes it
    grpc_url: str
    estimator: Any
    rows: np.ndarray
    digest: str

    def http(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.http_url, network_timeout=60.0)

    def grpc(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.grpc_url)


def _start(artifact: Path, digest: str, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_port(), free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    env = {**serving_env(), "MODEL_SERVER_TOKEN": TOKEN}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "model_server", "--artifact", str(artifact), "--digest", digest,
             "--model-name", MODEL, "--model-version", VERSION, "--host", "127.0.0.1", "--port", str(http_port),
             "--grpc-port", str(grpc_port), "--max-rows", str(MAX_ROWS), "--max-body-bytes", str(MAX_BODY),
             "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    return proc, http_port, grpc_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("oip")
    store = ArtifactStore(f"file://{base}/store")
    built = build_and_store(base / "build", store, None, model=MODEL)
    artifact = store.fetch(MODEL, built.digest, base / "artifact")
    model_file = json.loads((artifact / "serving.json").read_text())["model_file"]
    log = base / "server.log"
    proc, http_port, grpc_port = _start(artifact, built.digest, log)
    try:
        deadline = time.monotonic() + READY_DEADLINE
        grpc_url = f"127.0.0.1:{grpc_port}"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"model server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError, InferenceServerException):
                if (httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2).status_code == 200
                        and grpcclient.InferenceServerClient(grpc_url).is_server_ready(client_timeout=2)):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"model server not ready within {READY_DEADLINE}s:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield Served(f"127.0.0.1:{http_port}", grpc_url, joblib.load(artifact / model_file),
                     load_breast_cancer().data[:64], built.digest)
    finally:
        stop_processes([proc])


def _http_input(rows: np.ndarray, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput("features", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows, binary_data=binary)
    return inp


def _grpc_input(rows: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("features", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows)
    return inp


def _json_outputs(served: Served, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The JSON path (no binary anywhere), the reference of every other path."""
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("predict", "predict_proba")]
    result = served.http().infer(MODEL, [_http_input(rows, binary=False)], outputs=outputs, headers=auth())
    for out in result.get_response()["outputs"]:
        assert "data" in out and "binary_data_size" not in (out.get("parameters") or {})
    return {n: result.as_numpy(n) for n in ("predict", "predict_proba")}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# -- health, metadata, readiness -------------------------------------------------------------------


def test_health_is_open_over_both_protocols(served: Served) -> None:
    http, grpc = served.http(), served.grpc()
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()


def test_token_is_refused_without_and_accepted_with(served: Served) -> None:
    http, grpc = served.http(), served.grpc()
    rows = served.rows[:2]
    for call in (lambda: http.get_server_metadata(), lambda: http.get_model_metadata(MODEL),
                 lambda: http.infer(MODEL, [_http_input(rows, binary=True)])):
        error = _refusal(call)
        assert error.status() == "401", error
        assert error.message().startswith("authentication required: send the header 'Authorization: Bearer")
    # tritonclient.http's is_model_ready answers False on any refusal rather than raising.
    assert http.is_model_ready(MODEL) is False and http.is_model_ready(MODEL, headers=auth()) is True
    wrong = _refusal(lambda: http.get_server_metadata(headers={"authorization": "Bearer nope"}))
    assert wrong.status() == "401" and wrong.message() == "invalid bearer token"

    for call in (grpc.get_server_metadata, lambda: grpc.get_model_metadata(MODEL), lambda: grpc.is_model_ready(MODEL),
                 lambda: grpc.infer(MODEL, [_grpc_input(rows)])):
        error = _refusal(call)
        assert error.status() == "StatusCode.UNAUTHENTICATED", error
        assert error.message().startswith("authentication required: send the header 'Authorization: Bearer")
    wrong = _refusal(lambda: grpc.get_server_metadata(headers={"authorization": "Bearer nope"}))
    assert wrong.status() == "StatusCode.UNAUTHENTICATED" and wrong.message() == "invalid bearer token"

    assert http.get_server_metadata(headers=auth())["name"] == "model-delivery-model-server"
    assert grpc.get_server_metadata(headers=auth()).name == "model-delivery-model-server"


def test_server_metadata_declares_binary_tensor_data(served: Served) -> None:
    via_http = served.http().get_server_metadata(headers=auth())
    via_grpc = served.grpc().get_server_metadata(headers=auth(), as_json=True)
    assert via_http["extensions"] == ["binary_tensor_data"]
    assert via_grpc == {"name": via_http["name"], "version": via_http["version"], "extensions": ["binary_tensor_data"]}


@pytest.mark.parametrize("version", ["", VERSION], ids=["unversioned", "versioned"])
def test_model_metadata_and_readiness_agree(served: Served, version: str) -> None:
    http, grpc = served.http(), served.grpc()
    meta = http.get_model_metadata(MODEL, version, headers=auth())
    assert meta["name"] == MODEL and meta["versions"] == [VERSION] and meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    via_grpc = grpc.get_model_metadata(MODEL, version, headers=auth(), as_json=True)
    for tensors in (via_grpc["inputs"], via_grpc["outputs"]):  # protobuf's JSON gives int64 as strings
        for tensor in tensors:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert via_grpc == meta
    assert http.is_model_ready(MODEL, version, headers=auth()) and grpc.is_model_ready(MODEL, version, headers=auth())


def test_unknown_version_and_model_are_not_found_over_both(served: Served) -> None:
    http, grpc = served.http(), served.grpc()
    rest = _refusal(lambda: http.get_model_metadata(MODEL, "99", headers=auth()))
    assert rest.status() == "404" and "has no version '99'" in rest.message()
    rpc = _refusal(lambda: grpc.get_model_metadata(MODEL, "99", headers=auth()))
    assert rpc.status() == "StatusCode.NOT_FOUND" and rpc.message() == rest.message()
    rpc = _refusal(lambda: grpc.infer(MODEL, [_grpc_input(served.rows[:1])], model_version="99", headers=auth()))
    assert rpc.status() == "StatusCode.NOT_FOUND" and rpc.message() == rest.message()
    rest = _refusal(lambda: http.get_model_metadata("iris", headers=auth()))
    rpc = _refusal(lambda: grpc.get_model_metadata("iris", headers=auth()))
    assert rest.status() == "404" and rpc.status() == "StatusCode.NOT_FOUND" and rpc.message() == rest.message()
    rpc = _refusal(lambda: grpc.is_model_ready(MODEL, "99", headers=auth()))
    assert rpc.status() == "StatusCode.NOT_FOUND" and "has no version '99'" in rpc.message()


# -- inference --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["", VERSION], ids=["unversioned", "versioned"])
def test_json_and_binary_inference_over_http_agree(served: Served, version: str) -> None:
    http, rows = served.http(), served.rows
    want = _json_outputs(served, rows)
    np.testing.assert_array_equal(want["predict"], served.estimator.predict(rows))
    np.testing.assert_allclose(want["predict_proba"], served.estimator.predict_proba(rows), rtol=1e-12)

    # Binary in and out: the client's default (no outputs named: binary_data_output).
    result = http.infer(MODEL, [_http_input(rows, binary=True)], model_version=version, request_id="b-1",
                        headers=auth())
    response = result.get_response()
    assert response["id"] == "b-1" and response["model_version"] == VERSION
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in response["outputs"]}
    assert sizes == {"predict": 64 * 8, "predict_proba": 64 * 2 * 8}
    _assert_same({n: result.as_numpy(n) for n in want}, want)

    # Mixed: binary input, one output binary and one JSON; then JSON input, binary outputs.
    outputs = [httpclient.InferRequestedOutput("predict_proba", binary_data=True),
               httpclient.InferRequestedOutput("predict", binary_data=False)]
    result = http.infer(MODEL, [_http_input(rows, binary=True)], outputs=outputs, model_version=version,
                        headers=auth())
    kinds = {o["name"]: ("data" in o, "binary_data_size" in (o.get("parameters") or {}))
             for o in result.get_response()["outputs"]}
    assert kinds == {"predict_proba": (False, True), "predict": (True, False)}
    _assert_same({n: result.as_numpy(n) for n in want}, want)

    result = http.infer(MODEL, [_http_input(rows, binary=False)], model_version=version, headers=auth())
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    _assert_same({n: result.as_numpy(n) for n in want}, want)

    # One output only.
    result = http.infer(MODEL, [_http_input(rows[:3], binary=True)], outputs=[
        httpclient.InferRequestedOutput("predict")], model_version=version, headers=auth())
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict"]
    np.testing.assert_array_equal(result.as_numpy("predict"), _json_outputs(served, rows[:3])["predict"])


@pytest.mark.parametrize("version", ["", VERSION], ids=["unversioned", "versioned"])
def test_grpc_inference_agrees_with_json(served: Served, version: str) -> None:
    grpc, rows = served.grpc(), served.rows
    want = _json_outputs(served, rows)
    result = grpc.infer(MODEL, [_grpc_input(rows)], model_version=version, request_id="g-1", headers=auth())
    response = result.get_response()
    assert response.id == "g-1" and response.model_name == MODEL and response.model_version == VERSION
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("predict", "INT64", [64]), ("predict_proba", "FP64", [64, 2])]
    assert len(response.raw_output_contents) == 2
    _assert_same({n: result.as_numpy(n) for n in want}, want)

    one = grpc.infer(MODEL, [_grpc_input(rows[:5])], outputs=[grpcclient.InferRequestedOutput("predict_proba")],
                     model_version=version, headers=auth())
    assert [o.name for o in one.get_response().outputs] == ["predict_proba"]
    # against the JSON path on the same 5 rows: a batch's floats may differ in the last bit from a larger one's
    np.testing.assert_array_equal(one.as_numpy("predict_proba"), _json_outputs(served, rows[:5])["predict_proba"])


def test_grpc_typed_contents_agree_with_json(served: Served) -> None:
    """The client always sends raw contents; its own stub sends the typed ``fp64_contents`` too."""
    rows = served.rows[:8]
    want = _json_outputs(served, rows)
    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version=VERSION, id="typed")
    tensor = request.inputs.add(name="features", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    client = served.grpc()  # kept: the channel closes when the client is collected
    response = client._client_stub.ModelInfer(request, metadata=tuple(auth().items()), timeout=30)
    result = grpcclient.InferResult(response)
    _assert_same({n: result.as_numpy(n) for n in want}, want)

    del tensor.contents.fp64_contents[-1]
    with pytest.raises(Exception) as caught:  # noqa: B017 (grpc.RpcError, from the stub itself)
        client._client_stub.ModelInfer(request, metadata=tuple(auth().items()), timeout=30)
    assert str(caught.value.code()) == "StatusCode.INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert "has 239 values but shape [8, 30] needs 240" in caught.value.details()  # type: ignore[attr-defined]


# -- errors and limits, alike over both protocols --------------------------------------------------------


def test_a_client_mistake_gets_the_same_message_over_both(served: Served) -> None:
    rows = served.rows[:2].astype(np.float32)
    rest_in = httpclient.InferInput("features", list(rows.shape), "FP32")
    rest_in.set_data_from_numpy(rows, binary_data=True)
    rest = _refusal(lambda: served.http().infer(MODEL, [rest_in], headers=auth()))
    rpc_in = grpcclient.InferInput("features", list(rows.shape), "FP32")
    rpc_in.set_data_from_numpy(rows)
    rpc = _refusal(lambda: served.grpc().infer(MODEL, [rpc_in], headers=auth()))
    assert rest.status() == "400" and rpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert rest.message() == rpc.message() == "inputs[0].datatype is 'FP32' but input 'features' expects 'FP64'"


def test_rows_over_the_limit_are_refused_over_both(served: Served) -> None:
    rows = np.zeros((MAX_ROWS + 1, 30))  # 240 KB: under the body limit
    rest = _refusal(lambda: served.http().infer(MODEL, [_http_input(rows, binary=True)], headers=auth()))
    rpc = _refusal(lambda: served.grpc().infer(MODEL, [_grpc_input(rows)], headers=auth()))
    assert rest.status() == "413" and rpc.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert rest.message() == rpc.message() and f"has {MAX_ROWS + 1} rows" in rest.message()
    ok = served.grpc().infer(MODEL, [_grpc_input(np.zeros((MAX_ROWS, 30)))], headers=auth())
    assert ok.as_numpy("predict").shape == (MAX_ROWS,)


def test_bodies_over_the_limit_are_refused_over_both(served: Served) -> None:
    rows = np.zeros((MAX_BODY // 240 + 10, 30))  # just over 1 MiB of FP64
    rest = _refusal(lambda: served.http().infer(MODEL, [_http_input(rows, binary=True)], headers=auth()))
    assert rest.status() == "413" and "--max-body-bytes" in rest.message()
    rpc = _refusal(lambda: served.grpc().infer(MODEL, [_grpc_input(rows)], headers=auth()))
    assert rpc.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in rpc.message()
    # and the server still serves
    assert served.grpc().is_server_live() and served.http().is_server_ready()


def test_grpc_calls_are_counted_in_the_metrics(served: Served) -> None:
    served.grpc().infer(MODEL, [_grpc_input(served.rows[:1])], headers=auth())
    _refusal(lambda: served.grpc().get_server_metadata())
    metrics = httpx.get(f"http://{served.http_url}/metrics", timeout=10).text
    assert 'model_server_requests_total{endpoint="grpc:ModelInfer",status_code="OK"}' in metrics
    assert 'model_server_requests_total{endpoint="grpc:ServerMetadata",status_code="UNAUTHENTICATED"}' in metrics


def test_grpc_answers_carry_the_model_version_and_digest(served: Served) -> None:
    """As REST's X-Model-Version and X-Model-Digest headers: trailing metadata, on answers and refusals."""
    client = served.grpc()  # kept: the channel closes when the client is collected
    stub = client._client_stub
    _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), timeout=10)
    expected = {"x-model-version": VERSION, "x-model-digest": served.digest}
    assert {k: v for k, v in call.trailing_metadata() if k.startswith("x-model")} == expected
    with pytest.raises(Exception) as caught:  # noqa: B017 (grpc.RpcError, from the stub itself)
        stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=10)
    refused = caught.value
    assert str(refused.code()) == "StatusCode.UNAUTHENTICATED"  # type: ignore[attr-defined]
    assert {k: v for k, v in refused.trailing_metadata() if k.startswith("x-model")} == expected  # type: ignore[attr-defined]
