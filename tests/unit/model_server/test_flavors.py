"""Loading models from artifacts: serving.json validation, flavors, and feature checks."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from model_server.flavors import (
    FLAVORS,
    SERVING_FILE,
    InvalidInput,
    ServingConfigError,
    load_model,
    read_serving_config,
    register_flavor,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import Artifact


def test_load_model_predicts_declared_outputs(iris_artifact: Artifact) -> None:
    model = load_model(iris_artifact.path)
    assert (model.name, model.flavor, model.n_features) == ("iris", "sklearn", 4)
    assert model.metadata == json.loads((iris_artifact.path / SERVING_FILE).read_text())
    result = model.predict(iris_artifact.rows)
    assert list(result) == ["predict", "predict_proba"]
    assert result["predict"].dtype == np.int64 and result["predict"].tolist() == [0, 1, 2]
    assert result["predict_proba"].shape == (3, 3)
    np.testing.assert_allclose(result["predict_proba"].sum(axis=1), 1.0)
    assert list(model.predict(iris_artifact.rows, outputs=["predict_proba"])) == ["predict_proba"]


@pytest.mark.parametrize(
    ("features", "needle"),
    [
        pytest.param(np.zeros((2, 3)), "has 3 features per row but model 'iris' expects 4", id="too-few"),
        pytest.param(np.zeros((2, 5)), "has 5 features per row", id="too-many"),
        pytest.param(np.zeros(4), "must be 2-D", id="1-d"),
        pytest.param(np.zeros((0, 4)), "no rows", id="empty"),
        pytest.param(np.array([[1.0, np.nan, 1.0, 1.0]]), "NaN", id="nan"),
        pytest.param(np.array([["a", "b", "c", "d"]]), "must be numeric", id="strings"),
    ],
)
def test_invalid_features_raise_invalid_input(
    iris_artifact: Artifact, features: np.ndarray, needle: str
) -> None:
    model = load_model(iris_artifact.path)
    with pytest.raises(InvalidInput, match=needle):
        model.predict(features)


def test_invalid_input_is_a_value_error() -> None:
    assert issubclass(InvalidInput, ValueError)


def _edit(doc: dict[str, Any], path: str, value: Any) -> None:
    keys: list[Any] = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = doc
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()
_WIDE = {"name": "features", "datatype": "FP64", "shape": [-1, 5]}

BAD_CONFIGS = [
    pytest.param("name", _DELETE, "field 'name' is missing", id="no-name"),
    pytest.param("name", "", "field 'name' must not be empty", id="empty-name"),
    pytest.param("flavor", _DELETE, "field 'flavor' is missing", id="no-flavor"),
    pytest.param("flavor", "onnx", "supported flavors: ['sklearn']", id="unknown-flavor"),
    pytest.param("model_file", 3, "field 'model_file' must be a str", id="model-file-type"),
    pytest.param("model_file", "../model.joblib", "must be a path inside the artifact", id="escaping-path"),
    pytest.param("model_file", "other.joblib", "which is not a file in the artifact", id="absent-model-file"),
    pytest.param("inputs", _DELETE, "field 'inputs' is missing", id="no-inputs"),
    pytest.param("inputs", [], "exactly one input", id="zero-inputs"),
    pytest.param("inputs.0.shape", [-1], "must be [rows, features]", id="1d-input"),
    pytest.param("inputs.0", _WIDE, "declares 5 features but the model was fitted on 4", id="wrong-width"),
    pytest.param("inputs.0.datatype", "FLOAT", "field 'inputs[0].datatype' is 'FLOAT'", id="bad-datatype"),
    pytest.param("inputs.0.columns", ["a"], "one name per feature", id="columns-count"),
    pytest.param("outputs", [], "at least one output", id="no-outputs"),
    pytest.param(
        "outputs.0.name", "transform", "'transform', which LogisticRegression cannot", id="bad-output"
    ),
    pytest.param("outputs.1.name", "predict", "declares the same output twice", id="duplicate-output"),
    pytest.param("outputs.0.shape", "[-1]", "field 'outputs[0].shape' must be a list", id="shape-type"),
    pytest.param("labels", "setosa", "field 'labels' must be a list of strings", id="labels-type"),
]


@pytest.mark.parametrize(("field", "value", "needle"), BAD_CONFIGS)
def test_bad_serving_json_names_file_and_field(
    iris_artifact: Artifact, artifact_copy: Callable[[Artifact], Path], field: str, value: Any, needle: str
) -> None:
    directory = artifact_copy(iris_artifact)
    doc = json.loads((directory / SERVING_FILE).read_text())
    _edit(doc, field, value)
    (directory / SERVING_FILE).write_text(json.dumps(doc))
    with pytest.raises(ServingConfigError) as raised:
        load_model(directory)
    message = str(raised.value)
    assert str(directory / SERVING_FILE) in message
    assert needle in message, message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(None, "serving.json is missing", id="missing"),
        pytest.param("{", "is not valid JSON", id="not-json"),
        pytest.param("[1]", "must hold a JSON object", id="not-object"),
    ],
)
def test_unreadable_serving_json(
    iris_artifact: Artifact, artifact_copy: Callable[[Artifact], Path], content: str | None, needle: str
) -> None:
    directory = artifact_copy(iris_artifact)
    if content is None:
        (directory / SERVING_FILE).unlink()
    else:
        (directory / SERVING_FILE).write_text(content)
    with pytest.raises(ServingConfigError, match=needle):
        read_serving_config(directory)


def test_other_flavors_can_be_registered(iris_artifact: Artifact, tmp_path: Path) -> None:
    directory = shutil.copytree(iris_artifact.path, tmp_path / "constant")
    doc = json.loads((directory / SERVING_FILE).read_text())
    doc["flavor"] = "constant-test"
    doc["outputs"] = [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    (directory / SERVING_FILE).write_text(json.dumps(doc))

    def load_constant(_: Path, config: dict[str, Any]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        return {"predict": lambda rows: np.full(len(rows), 42.0)}

    register_flavor("constant-test", load_constant)
    try:
        model = load_model(directory)
        assert model.predict(np.ones((2, 4)))["predict"].tolist() == [42.0, 42.0]
    finally:
        del FLAVORS["constant-test"]
