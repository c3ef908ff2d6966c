"""The HTTP contract of the model server (Open Inference Protocol v2), in process with TestClient."""

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

from model_server.app import create_app
from model_server.flavors import load_model

if TYPE_CHECKING:
    from conftest import Artifact

VERSION = "7"


@pytest.fixture(scope="module")
def iris_client(iris_artifact: Artifact) -> TestClient:
    app = create_app(load_model(iris_artifact.path), version=VERSION, digest=iris_artifact.digest)
    return TestClient(app)


def _request(rows: Any, shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "datatype": "FP64", "shape": shape, "data": rows}], **extra}


def _outputs(response: Any) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in response.json()["outputs"]}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/v2/health/live", {"live": True}, id="live"),
        pytest.param("/v2/health/ready", {"ready": True}, id="ready"),
        pytest.param("/v2/models/iris/ready", {"name": "iris", "ready": True}, id="model-ready"),
        pytest.param(
            f"/v2/models/iris/versions/{VERSION}/ready", {"name": "iris", "ready": True}, id="v-ready"
        ),
    ],
)
def test_health_endpoints(iris_client: TestClient, path: str, expected: dict[str, Any]) -> None:
    response = iris_client.get(path)
    assert response.status_code == 200
    assert response.json() == expected


def test_server_metadata(iris_client: TestClient) -> None:
    body = iris_client.get("/v2").json()
    assert body["name"] == "model-delivery-model-server"
    assert isinstance(body["version"], str) and body["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("path", ["/v2/models/iris", f"/v2/models/iris/versions/{VERSION}"])
def test_model_metadata(iris_client: TestClient, path: str) -> None:
    response = iris_client.get(path)
    assert response.status_code == 200
    assert response.json() == {
        "name": "iris",
        "versions": [VERSION],
        "platform": "sklearn",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
    }


@pytest.mark.parametrize(
    ("method", "path", "needle"),
    [
        pytest.param("GET", "/v2/models/wine", "unknown model 'wine'", id="metadata-unknown-name"),
        pytest.param("GET", "/v2/models/iris/versions/8", "no version '8'", id="metadata-unknown-version"),
        pytest.param("GET", "/v2/models/wine/ready", "unknown model 'wine'", id="ready-unknown-name"),
        pytest.param("POST", "/v2/models/wine/infer", "unknown model 'wine'", id="infer-unknown-name"),
        pytest.param(
            "POST", "/v2/models/iris/versions/8/infer", "no version '8'", id="infer-unknown-version"
        ),
        pytest.param("GET", "/v3/nothing", "Not Found", id="unknown-route"),
    ],
)
def test_unknown_model_or_route_is_404(iris_client: TestClient, method: str, path: str, needle: str) -> None:
    response = iris_client.request(method, path, json=_request([[1, 2, 3, 4]], [1, 4]))
    assert response.status_code == 404
    assert needle in response.json()["error"]


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", f"/v2/models/iris/versions/{VERSION}/infer"])
def test_infer_flat_data_matches_the_model(
    iris_client: TestClient, iris_artifact: Artifact, path: str
) -> None:
    rows = iris_artifact.rows
    response = iris_client.post(path, json=_request(rows.ravel().tolist(), list(rows.shape), id="req-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("iris", VERSION, "req-1")
    outputs = _outputs(response)
    assert list(outputs) == ["predict", "predict_proba"]
    assert outputs["predict"] == {
        "name": "predict",
        "datatype": "INT64",
        "shape": [3],
        "data": iris_artifact.estimator.predict(rows).tolist(),
    }
    assert outputs["predict"]["data"] == [0, 1, 2]  # one row of each species
    proba = outputs["predict_proba"]
    assert (proba["datatype"], proba["shape"]) == ("FP64", [3, 3])
    np.testing.assert_allclose(np.reshape(proba["data"], (3, 3)), iris_artifact.estimator.predict_proba(rows))


def test_infer_nested_data_equals_flat(iris_client: TestClient, iris_artifact: Artifact) -> None:
    rows = iris_artifact.rows
    nested = iris_client.post("/v2/models/iris/infer", json=_request(rows.tolist(), [3, 4], id="x"))
    flat = iris_client.post("/v2/models/iris/infer", json=_request(rows.ravel().tolist(), [3, 4], id="x"))
    assert nested.status_code == flat.status_code == 200
    assert nested.json() == flat.json()


def test_infer_integer_json_numbers_are_accepted_for_fp64(iris_client: TestClient) -> None:
    response = iris_client.post("/v2/models/iris/infer", json=_request([5, 3, 1, 0], [1, 4]))
    assert response.status_code == 200, response.text
    assert _outputs(response)["predict"]["data"] == [0]


@pytest.mark.parametrize(
    "wanted", [pytest.param(["predict_proba"], id="proba"), pytest.param(["predict"], id="predict")]
)
def test_infer_honours_requested_outputs(iris_client: TestClient, wanted: list[str]) -> None:
    body = _request([[5.1, 3.5, 1.4, 0.2]], [1, 4], outputs=[{"name": n} for n in wanted])
    response = iris_client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200, response.text
    assert list(_outputs(response)) == wanted


def test_infer_without_id_gets_one(iris_client: TestClient) -> None:
    first = iris_client.post("/v2/models/iris/infer", json=_request([[5.1, 3.5, 1.4, 0.2]], [1, 4]))
    second = iris_client.post("/v2/models/iris/infer", json=_request([[5.1, 3.5, 1.4, 0.2]], [1, 4]))
    assert first.json()["id"] and first.json()["id"] != second.json()["id"]


GOOD_ROW = [5.1, 3.5, 1.4, 0.2]


def _one(**overrides: Any) -> bytes:
    inp: dict[str, Any] = {"name": "features", "datatype": "FP64", "shape": [1, 4], "data": GOOD_ROW}
    extra = overrides.pop("request", {})
    inp.update(overrides)
    return json.dumps({"inputs": [inp], **extra}).encode()


BAD_REQUESTS = [
    pytest.param(b"{not json", "not valid JSON", id="non-json"),
    pytest.param(b"", "not valid JSON", id="empty-body"),
    pytest.param(b"[1, 2]", "Input should be an object", id="json-array"),
    pytest.param(b"{}", "inputs: Field required", id="no-inputs"),
    pytest.param(b'{"inputs": []}', "inputs: List should have at least 1 item", id="empty-inputs"),
    pytest.param(b'{"inputs": [{"name": "features"}]}', "inputs[0].shape: Field required", id="no-shape"),
    pytest.param(_one(data=5), "inputs[0].data: Input should be a valid", id="data-not-list"),
    pytest.param(
        _one(shape=["1", "4"]), "inputs[0].shape[0]: Input should be a valid integer", id="str-shape"
    ),
    pytest.param(_one(name="pixels"), "send exactly one input named 'features'", id="unknown-input"),
    pytest.param(_one(datatype="INT64"), "expects 'FP64'", id="wrong-datatype"),
    pytest.param(_one(datatype="FP128"), "expects 'FP64'", id="unknown-datatype"),
    pytest.param(_one(shape=[4]), "does not fit input 'features' of shape [-1, 4]", id="1d-shape"),
    pytest.param(_one(shape=[-1, 4]), "give the actual size of every dimension", id="negative-shape"),
    pytest.param(_one(shape=[1, 3], data=[1, 2, 3]), "has 3 in dimension 1", id="wrong-feature-count"),
    pytest.param(_one(shape=[2, 4]), "has 4 values but shape [2, 4] needs 8", id="flat-length-mismatch"),
    pytest.param(
        _one(data=[GOOD_ROW, GOOD_ROW]), "nested as [2, 4] but inputs[0].shape is [1, 4]", id="nested"
    ),
    pytest.param(_one(shape=[2, 4], data=[GOOD_ROW, [1, 2]]), "ragged", id="ragged"),
    pytest.param(_one(data=["5.1", 3.5, 1.4, 0.2]), "only FP64 numbers", id="string-value"),
    pytest.param(_one(data=[None, 3.5, 1.4, 0.2]), "only FP64 numbers", id="null-value"),
    pytest.param(_one(data=[True, False, True, False]), "only FP64 numbers", id="bool-values"),
    pytest.param(_one(shape=[0, 4], data=[]), "has no rows", id="zero-rows"),
    pytest.param(_one().replace(b"5.1", b"NaN"), "NaN or infinity", id="nan"),
    pytest.param(_one(request={"outputs": [{"name": "logits"}]}), "choose", id="unknown-output"),
    pytest.param(_one(request={"outputs": [{"name": "predict"}] * 2}), "at most once", id="duplicate-output"),
    pytest.param(_one(request={"id": 5}), "id: Input should be a valid string", id="int-id"),
]


@pytest.mark.parametrize(("body", "needle"), BAD_REQUESTS)
def test_bad_requests_are_400_with_a_message(iris_client: TestClient, body: bytes, needle: str) -> None:
    response = iris_client.post(
        "/v2/models/iris/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error, error


def test_unknown_output_names_the_choices(iris_client: TestClient) -> None:
    response = iris_client.post(
        "/v2/models/iris/infer", content=_one(request={"outputs": [{"name": "logits"}]})
    )
    assert response.status_code == 400
    assert "['predict', 'predict_proba']" in response.json()["error"]


def test_body_without_json_content_type_is_still_parsed(iris_client: TestClient) -> None:
    response = iris_client.post(
        "/v2/models/iris/infer", content=_one(), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2"),
        ("GET", "/v2/models/iris"),
        ("POST", "/v2/models/iris/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/metrics"),
        ("GET", "/not/a/route"),
    ],
)
def test_every_response_has_version_and_digest_headers(
    iris_client: TestClient, iris_artifact: Artifact, method: str, path: str
) -> None:
    response = iris_client.request(method, path, content=b"{bad")
    assert response.headers["X-Model-Version"] == VERSION
    assert response.headers["X-Model-Digest"] == iris_artifact.digest


def test_metrics_count_requests_and_inference(iris_artifact: Artifact) -> None:
    client = TestClient(create_app(load_model(iris_artifact.path), version="m1", digest=iris_artifact.digest))
    before = client.get("/metrics").text
    assert 'endpoint="/v2/models/{name}/infer"' not in before
    assert client.post("/v2/models/iris/infer", content=_one()).status_code == 200
    assert client.post("/v2/models/iris/infer", content=b"{").status_code == 400
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'model_server_requests_total{endpoint="/v2/models/{name}/infer",status_code="200"} 1.0' in text
    assert 'model_server_requests_total{endpoint="/v2/models/{name}/infer",status_code="400"} 1.0' in text
    assert "model_server_inference_duration_seconds_count 1.0" in text
    assert (
        f'model_server_model_info{{digest="{iris_artifact.digest}",flavor="sklearn",name="iris",version="m1"}} 1.0'
        in text
    )


def test_each_app_has_its_own_registry(iris_artifact: Artifact, binary_artifact: Artifact) -> None:
    first = TestClient(create_app(load_model(iris_artifact.path), version="1", digest=iris_artifact.digest))
    second = TestClient(
        create_app(load_model(binary_artifact.path), version="2", digest=binary_artifact.digest)
    )
    first.get("/v2")
    assert 'endpoint="/v2"' in first.get("/metrics").text
    text = second.get("/metrics").text
    assert 'endpoint="/v2"' not in text and 'name="breast_cancer"' in text and 'name="iris"' not in text


def test_binary_classifier_with_30_features(binary_artifact: Artifact) -> None:
    client = TestClient(
        create_app(load_model(binary_artifact.path), version="1", digest=binary_artifact.digest)
    )
    rows = binary_artifact.rows
    response = client.post("/v2/models/breast_cancer/infer", json=_request(rows.tolist(), [5, 30]))
    assert response.status_code == 200, response.text
    outputs = _outputs(response)
    assert outputs["predict"]["data"] == binary_artifact.estimator.predict(rows).tolist()
    assert outputs["predict_proba"]["shape"] == [5, 2]
    too_few = client.post("/v2/models/breast_cancer/infer", json=_request([[1.0] * 4], [1, 4]))
    assert too_few.status_code == 400 and "needs 30" in too_few.json()["error"]


def test_regressor_has_only_predict(regressor_artifact: Artifact) -> None:
    client = TestClient(
        create_app(load_model(regressor_artifact.path), version="1", digest=regressor_artifact.digest)
    )
    rows = regressor_artifact.rows
    response = client.post("/v2/models/diabetes/infer", json=_request(rows.ravel().tolist(), [4, 10]))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("predict", "FP64", [4])
    np.testing.assert_allclose(output["data"], regressor_artifact.estimator.predict(rows))
    proba = client.post(
        "/v2/models/diabetes/infer",
        json=_request(rows.tolist(), [4, 10], outputs=[{"name": "predict_proba"}]),
    )
    assert proba.status_code == 400 and "['predict']" in proba.json()["error"]
