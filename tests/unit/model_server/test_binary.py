"""The binary tensor data extension: the codec (model_server.binary) and the app's answers to malformed
bodies (each a 400 naming the problem, never a 500), in process with TestClient on a real iris model.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx is what this project pins
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from model_server import binary
from model_server.app import Limits, create_app
from model_server.flavors import load_model

if TYPE_CHECKING:
    from conftest import Artifact

HEADER = "Inference-Header-Content-Length"
URL = "/v2/models/iris/infer"


@pytest.fixture(scope="module")
def client(iris_artifact: Artifact) -> TestClient:
    app = create_app(load_model(iris_artifact.path), version="3", digest=iris_artifact.digest,
                     limits=Limits(max_rows=50, max_body_bytes=64 * 1024))
    return TestClient(app, raise_server_exceptions=False)


def _body(header: dict[str, Any], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(tensors), {HEADER: str(len(text))}


def _features(rows: np.ndarray, **parameters: Any) -> dict[str, Any]:
    return {"name": "features", "datatype": "FP64", "shape": list(rows.shape),
            "parameters": {"binary_data_size": rows.nbytes, **parameters}}


def _split(response: Any) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.content[:length]), response.content[length:]


# -- the codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                      "UINT64", "FP16", "FP32", "FP64"])
def test_fixed_size_tensors_round_trip_little_endian(datatype: str) -> None:
    array = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6).astype(binary.FIXED[datatype])
    raw = binary.encode(array.reshape(2, 3), datatype)
    assert raw == np.asarray(array, dtype=binary.FIXED[datatype].newbyteorder("<")).tobytes()
    assert len(raw) == 6 * binary.FIXED[datatype].itemsize
    np.testing.assert_array_equal(binary.decode(raw, datatype, [2, 3], "inputs[0]"), array)


def test_bytes_tensors_are_length_prefixed_little_endian() -> None:
    raw = binary.encode(np.array([b"ab", b"", "\u00e9"], dtype=object), "BYTES")
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xc3\xa9"
    assert list(binary.decode(raw, "BYTES", [3], "inputs[0]")) == [b"ab", b"", "\u00e9".encode()]


@pytest.mark.parametrize(
    ("raw", "count", "problem"),
    [
        pytest.param(b"\x05\x00\x00\x00abc", 1, "declares 5 bytes but only 3 remain", id="element-past-end"),
        pytest.param(b"\x01\x00", 1, "truncated 4-byte length", id="truncated-length"),
        pytest.param(b"\x01\x00\x00\x00a", 2, "holds 1 BYTES elements but its shape needs 2", id="too-few"),
        pytest.param(b"\x01\x00\x00\x00a\x00\x00\x00\x00", 1, "more than the 1 BYTES elements", id="too-many"),
    ],
)
def test_malformed_bytes_tensors_are_named(raw: bytes, count: int, problem: str) -> None:
    with pytest.raises(binary.BinaryDataError, match=problem):
        binary.decode(raw, "BYTES", [count], "inputs[0]")


def test_codec_errors_name_the_problem() -> None:
    with pytest.raises(binary.BinaryDataError, match=r"past the end of the body"):
        binary.split_body(b"{}", "3")
    with pytest.raises(binary.BinaryDataError, match=r"not a number of bytes"):
        binary.split_body(b"{}", "two")
    with pytest.raises(binary.BinaryDataError, match=r"must be 0 or more"):
        binary.split_body(b"{}", "-1")
    with pytest.raises(binary.BinaryDataError, match=r"inputs\[0\] has 7 bytes .* needs 1 x 8 = 8 bytes"):
        binary.decode(b"\x00" * 7, "FP64", [1], "inputs[0]")
    with pytest.raises(binary.BinaryDataError, match=r"'COMPLEX' is not a datatype"):
        binary.decode(b"", "COMPLEX", [0], "inputs[0]")
    with pytest.raises(binary.BinaryDataError, match=r"BOOL but holds bytes other than 0 and 1"):
        binary.decode(b"\x02", "BOOL", [1], "inputs[0]")
    with pytest.raises(binary.BinaryDataError, match=r"add up to 8 bytes but the body holds 9 bytes"):
        binary.split_tensors(b"\x00" * 9, [8, None])
    with pytest.raises(binary.BinaryDataError, match=r"binary_data_size is -1"):
        binary.binary_size({"binary_data_size": -1}, "inputs[0]")
    with pytest.raises(binary.BinaryDataError, match=r"binary_data_size is True"):
        binary.binary_size({"binary_data_size": True}, "inputs[0]")
    with pytest.raises(binary.BinaryDataError, match=r"outputs\[0\].parameters.binary_data is 'yes'"):
        binary.wants_binary(None, {"binary_data": "yes"}, "outputs[0]")


def test_output_binary_choice_follows_the_spec() -> None:
    assert binary.wants_binary(None, None, "o") is False
    assert binary.wants_binary({"binary_data_output": True}, None, "o") is True
    assert binary.wants_binary({"binary_data_output": True}, {"binary_data": False}, "o") is False
    assert binary.wants_binary({"binary_data_output": False}, {"binary_data": True}, "o") is True


# -- the app -------------------------------------------------------------------------------------


def test_binary_in_and_out_match_the_json_path(client: TestClient, iris_artifact: Artifact) -> None:
    rows = iris_artifact.rows
    json_answer = client.post(URL, json={"inputs": [{"name": "features", "datatype": "FP64",
                                                      "shape": list(rows.shape), "data": rows.ravel().tolist()}]})
    assert json_answer.status_code == 200, json_answer.text
    expected = {o["name"]: o for o in json_answer.json()["outputs"]}

    body, headers = _body({"id": "b1", "inputs": [_features(rows)], "parameters": {"binary_data_output": True}},
                          rows.tobytes())
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["X-Model-Version"] == "3"
    document, data = _split(answer)
    assert document["id"] == "b1" and [o["name"] for o in document["outputs"]] == ["predict", "predict_proba"]
    sizes = [o["parameters"]["binary_data_size"] for o in document["outputs"]]
    assert sizes == [3 * 8, 3 * 3 * 8] and len(data) == sum(sizes) and "data" not in document["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(data[:24], "<i8"), expected["predict"]["data"])
    np.testing.assert_array_equal(np.frombuffer(data[24:], "<f8"), expected["predict_proba"]["data"])

    # Per output: one binary, one JSON (binary_data overrides binary_data_output).
    body, headers = _body({"inputs": [_features(rows)], "parameters": {"binary_data_output": True},
                           "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}},
                                       {"name": "predict"}]}, rows.tobytes())
    document, data = _split(client.post(URL, content=body, headers=headers))
    assert document["outputs"][0]["data"] == expected["predict_proba"]["data"]
    np.testing.assert_array_equal(np.frombuffer(data, "<i8"), expected["predict"]["data"])

    # Binary in, JSON out: a plain JSON answer.
    body, headers = _body({"inputs": [_features(rows)]}, rows.tobytes())
    plain = client.post(URL, content=body, headers=headers)
    assert HEADER not in plain.headers and plain.json()["outputs"] == json_answer.json()["outputs"]


def test_server_metadata_declares_the_extension(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


ROWS = np.arange(8.0).reshape(2, 4)


@pytest.mark.parametrize(
    ("header", "tensors", "length", "status", "problem"),
    [
        pytest.param({"inputs": [_features(ROWS)]}, [ROWS.tobytes()], "10000", 400,
                     "Inference-Header-Content-Length is 10000 but the body has only", id="header-past-end"),
        pytest.param({"inputs": [_features(ROWS)]}, [ROWS.tobytes()], "abc", 400,
                     "Inference-Header-Content-Length 'abc' is not a number", id="header-length-not-a-number"),
        pytest.param(None, [b"\x00" * 8], None, 400, "the inference header (the first 9 bytes of the body, per "
                     "Inference-Header-Content-Length) is not valid JSON", id="header-not-json"),
        pytest.param({"inputs": [{**_features(ROWS), "parameters": {"binary_data_size": 60}}]},
                     [ROWS.tobytes()[:60]], None, 400,
                     "inputs[0] has 60 bytes of binary data but shape [2, 4] of FP64 needs 8 x 8 = 64 bytes",
                     id="bytes-not-matching-shape"),
        pytest.param({"inputs": [_features(ROWS)]}, [ROWS.tobytes(), b"extra"], None, 400,
                     "the binary_data_size of the inputs add up to 64 bytes but the body holds 69 bytes",
                     id="sizes-not-matching-body"),
        pytest.param({"inputs": [_features(ROWS)]}, [ROWS.tobytes()[:32]], None, 400,
                     "add up to 64 bytes but the body holds 32 bytes", id="body-too-short"),
        pytest.param({"inputs": [{**_features(ROWS), "datatype": "FP128"}]}, [ROWS.tobytes()], None, 400,
                     "inputs[0].datatype 'FP128' is not a datatype of binary tensors", id="unknown-datatype"),
        pytest.param({"inputs": [{**_features(ROWS), "datatype": "FP32",
                                  "parameters": {"binary_data_size": 32}}]}, [ROWS.astype("<f4").tobytes()], None,
                     400, "inputs[0].datatype is 'FP32' but input 'features' expects 'FP64'", id="wrong-datatype"),
        pytest.param({"inputs": [{**_features(ROWS), "parameters": {"binary_data_size": "64"}}]},
                     [ROWS.tobytes()], None, 400, "binary_data_size is '64'", id="size-not-an-integer"),
        pytest.param({"inputs": [{**_features(ROWS), "data": [1.0] * 8}]}, [ROWS.tobytes()], None, 400,
                     "inputs[0] has both 'data' and parameters.binary_data_size", id="data-and-binary"),
        pytest.param({"inputs": [{k: v for k, v in _features(ROWS).items() if k != "parameters"}]}, [], None, 400,
                     "inputs[0] has no data", id="neither-data-nor-binary"),
        pytest.param({"inputs": [_features(ROWS)], "outputs": [{"name": "predict", "parameters": {"binary_data": 1}}]},
                     [ROWS.tobytes()], None, 400, "parameters.binary_data is 1: it must be true or false",
                     id="binary-data-not-bool"),
        pytest.param({"inputs": [_features(np.zeros((51, 4)))]}, [np.zeros((51, 4)).tobytes()], None, 413,
                     "inputs[0] has 51 rows; this server takes at most 50", id="too-many-rows"),
        pytest.param({"inputs": [_features(np.zeros((40, 4)))]}, [np.zeros((40, 4)).tobytes()], "-5", 400,
                     "Inference-Header-Content-Length is -5", id="negative-header-length"),
    ],
)
def test_malformed_binary_bodies_get_400_naming_the_problem(
    client: TestClient, header: dict[str, Any] | None, tensors: list[bytes], length: str | None, status: int,
    problem: str,
) -> None:
    if header is None:
        body, headers = b"{not json" + b"".join(tensors), {HEADER: "9"}
    else:
        body, headers = _body(header, *tensors)
    if length is not None:
        headers[HEADER] = length
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert problem in response.json()["error"]


def test_binary_size_without_the_header_is_refused(client: TestClient) -> None:
    response = client.post(URL, json={"inputs": [_features(ROWS)]})
    assert response.status_code == 400
    assert "has no Inference-Header-Content-Length header" in response.json()["error"]


def test_binary_bodies_obey_the_body_limit(client: TestClient) -> None:
    rows = np.zeros((2000, 4))  # 64000 bytes of tensor data and the header: over the 64 KiB limit
    body, headers = _body({"inputs": [_features(rows)]}, rows.tobytes())
    response = client.post(URL, content=body + b"\x00" * 2000, headers=headers)
    assert response.status_code == 413 and "--max-body-bytes" in response.json()["error"]


def test_binary_requests_need_the_token(iris_artifact: Artifact) -> None:
    app = create_app(load_model(iris_artifact.path), version="3", digest=iris_artifact.digest, token="s3cret")
    with TestClient(app) as authed:
        body, headers = _body({"inputs": [_features(ROWS)]}, ROWS.tobytes())
        assert authed.post(URL, content=body, headers=headers).status_code == 401
        ok = authed.post(URL, content=body, headers={**headers, "Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text


def test_mixed_binary_and_json_inputs_are_parsed_in_order(iris_artifact: Artifact) -> None:
    """Inputs in JSON and in binary in one request: the binary bytes belong to the binary inputs, in order
    (this model takes one input, so the parser is called directly)."""
    from model_server.app import _parse

    first, third = np.arange(8.0).reshape(2, 4), np.array([b"x", b"yz"], dtype=object)
    header = {"inputs": [_features(first),
                         {"name": "json", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]},
                         {"name": "words", "datatype": "BYTES", "shape": [2],
                          "parameters": {"binary_data_size": len(binary.encode(third, "BYTES"))}}]}
    body, headers = _body(header, first.tobytes(), binary.encode(third, "BYTES"))
    parsed, values = _parse(body, load_model(iris_artifact.path), Limits(), headers[HEADER])
    assert [i.name for i in parsed.inputs] == ["features", "json", "words"]
    assert values[1] is None and parsed.inputs[1].data == [1, 2, 3]
    np.testing.assert_array_equal(values[0], first.ravel())
    assert list(values[2]) == [b"x", b"yz"]
