"""Load a model from an artifact directory according to its ``serving.json``.

``serving.json`` declares the model's name, its *flavor* (how the model file is loaded),
the model file, one input tensor and the output tensors::

    {"name": "breast_cancer", "flavor": "sklearn", "model_file": "model.joblib",
     "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 30], "columns": ["..."]}],
     "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                 {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}],
     "labels": ["malignant", "benign"]}

A flavor is a loader function registered in :data:`FLAVORS`; it turns the model file into
one prediction function per output name. Only ``sklearn`` (a joblib file) exists now.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

SERVING_FILE = "serving.json"

#: Open Inference Protocol datatypes this server accepts, and their numpy dtypes.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}

PredictFn = Callable[[np.ndarray], Any]
#: A flavor loader: ``(artifact_dir, serving_config) -> {output name: prediction function}``.
FlavorLoader = Callable[[Path, dict[str, Any]], dict[str, PredictFn]]


class ServingConfigError(ValueError):
    """``serving.json`` is missing or invalid, or the model file does not fit it."""


class InvalidInput(ValueError):
    """The features sent for prediction do not fit the model's declared input."""


@dataclass(frozen=True)
class TensorSpec:
    """A declared input or output tensor: name, OIP datatype and shape (``-1`` = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return the Open Inference Protocol metadata form of this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    """A model ready to predict, with the metadata it was declared with."""

    name: str
    flavor: str
    metadata: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    _predictors: dict[str, PredictFn] = field(repr=False)

    @property
    def n_features(self) -> int | None:
        """Number of features per row, or ``None`` when the input shape leaves it open."""
        dims = self.inputs[0].shape
        return dims[1] if len(dims) > 1 and dims[1] >= 0 else None

    @property
    def output_names(self) -> list[str]:
        """Names of the declared outputs, in declaration order."""
        return [o.name for o in self.outputs]

    def predict(self, features: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Predict every declared output (or only ``outputs``) for a 2-D array of rows.

        :param features: array of shape ``(rows, n_features)``.
        :param outputs: names of the outputs wanted; all declared outputs when ``None``.
        :return: one array per output name, cast to the output's declared datatype.
        :raises InvalidInput: when the features or output names do not fit the model.
        """
        features = self._check_features(features)
        wanted = list(self.output_names if outputs is None else outputs)
        unknown = [n for n in wanted if n not in self._predictors]
        if unknown:
            raise InvalidInput(
                f"unknown output(s) {unknown} for model {self.name!r}: choose from {self.output_names}"
            )
        specs = {o.name: o for o in self.outputs}
        return {
            name: np.asarray(self._predictors[name](features)).astype(DATATYPES[specs[name].datatype])
            for name in wanted
        }

    def _check_features(self, features: np.ndarray) -> np.ndarray:
        spec = self.inputs[0]
        array = np.asarray(features)
        if array.ndim != 2:
            raise InvalidInput(
                f"input {spec.name!r} must be 2-D (rows, features) like shape {list(spec.shape)}; "
                f"got an array of shape {list(array.shape)}"
            )
        if array.shape[0] == 0:
            raise InvalidInput(f"input {spec.name!r} has no rows: send at least one row")
        if self.n_features is not None and array.shape[1] != self.n_features:
            raise InvalidInput(
                f"input {spec.name!r} has {array.shape[1]} features per row but model {self.name!r} "
                f"expects {self.n_features} (shape {list(spec.shape)})"
            )
        if array.dtype.kind not in "biuf":
            raise InvalidInput(f"input {spec.name!r} must be numeric; got values of type {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"input {spec.name!r} contains NaN or infinity: send finite numbers only")
        return array.astype(DATATYPES[spec.datatype], copy=False)


# --- serving.json -----------------------------------------------------------------------------


def _fail(path: Path, where: str, problem: str) -> ServingConfigError:
    return ServingConfigError(f"{path}: field {where!r} {problem}")


def _require(doc: dict[str, Any], key: str, kind: type, path: Path, where: str = "") -> Any:
    label = f"{where}.{key}" if where else key
    if key not in doc:
        raise _fail(path, label, "is missing")
    value = doc[key]
    if not isinstance(value, kind):
        raise _fail(path, label, f"must be a {kind.__name__}; got {value!r}")
    return value


def _tensor(doc: Any, path: Path, where: str) -> TensorSpec:
    if not isinstance(doc, dict):
        raise _fail(path, where, f"must be an object with name, datatype and shape; got {doc!r}")
    name = _require(doc, "name", str, path, where)
    datatype = _require(doc, "datatype", str, path, where)
    if datatype not in DATATYPES:
        raise _fail(path, f"{where}.datatype", f"is {datatype!r}; supported: {sorted(DATATYPES)}")
    shape = _require(doc, "shape", list, path, where)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
        raise _fail(path, f"{where}.shape", f"must be a non-empty list of sizes (-1 = any); got {shape!r}")
    return TensorSpec(name=name, datatype=datatype, shape=tuple(shape))


def _inputs(config: dict[str, Any], path: Path) -> list[TensorSpec]:
    raw = _require(config, "inputs", list, path)
    if len(raw) != 1:
        raise _fail(path, "inputs", f"must declare exactly one input tensor; got {len(raw)}")
    spec = _tensor(raw[0], path, "inputs[0]")
    if len(spec.shape) != 2:
        raise _fail(
            path, "inputs[0].shape", f"must be [rows, features] such as [-1, 4]; got {list(spec.shape)}"
        )
    columns = raw[0].get("columns")
    if columns is not None and (
        not isinstance(columns, list) or (spec.shape[1] >= 0 and len(columns) != spec.shape[1])
    ):
        raise _fail(path, "inputs[0].columns", f"must list one name per feature ({spec.shape[1]})")
    return [spec]


def _outputs(config: dict[str, Any], path: Path) -> list[TensorSpec]:
    raw = _require(config, "outputs", list, path)
    if not raw:
        raise _fail(path, "outputs", "must declare at least one output, such as 'predict'")
    specs = [_tensor(doc, path, f"outputs[{i}]") for i, doc in enumerate(raw)]
    names = [s.name for s in specs]
    if len(names) != len(set(names)):
        raise _fail(path, "outputs", f"declares the same output twice: {names}")
    return specs


def read_serving_config(artifact_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``serving.json`` of an artifact directory.

    :raises ServingConfigError: naming the file and the field when it is missing or invalid.
    """
    path = Path(artifact_dir) / SERVING_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServingConfigError(f"{path} is missing: an artifact must contain {SERVING_FILE}") from None
    except (OSError, ValueError) as exc:
        raise ServingConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ServingConfigError(f"{path} must hold a JSON object; got {type(config).__name__}")
    for key in ("name", "flavor", "model_file"):
        if not _require(config, key, str, path).strip():
            raise _fail(path, key, "must not be empty")
    flavor = config["flavor"]
    if flavor not in FLAVORS:
        raise _fail(
            path, "flavor", f"is {flavor!r}, which is not supported; supported flavors: {sorted(FLAVORS)}"
        )
    model_file = Path(config["model_file"])
    if model_file.is_absolute() or ".." in model_file.parts:
        raise _fail(path, "model_file", f"must be a path inside the artifact; got {config['model_file']!r}")
    _inputs(config, path)
    _outputs(config, path)
    labels = config.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _fail(path, "labels", f"must be a list of strings; got {labels!r}")
    return config


# --- flavors ----------------------------------------------------------------------------------

#: Methods of a scikit-learn estimator that may be declared as outputs.
SKLEARN_OUTPUTS = ("predict", "predict_proba", "predict_log_proba", "decision_function")


def load_sklearn(artifact_dir: Path, config: dict[str, Any]) -> dict[str, PredictFn]:
    """Load a joblib-pickled scikit-learn estimator; one predictor per declared output."""
    model_path = artifact_dir / config["model_file"]
    serving = artifact_dir / SERVING_FILE
    if not model_path.is_file():
        raise _fail(
            serving, "model_file", f"names {config['model_file']!r}, which is not a file in the artifact"
        )
    estimator = joblib.load(model_path)
    predictors: dict[str, PredictFn] = {}
    for i, output in enumerate(config["outputs"]):
        name = output["name"]
        method = getattr(estimator, name, None) if name in SKLEARN_OUTPUTS else None
        if method is None:
            available = [m for m in SKLEARN_OUTPUTS if hasattr(estimator, m)]
            raise _fail(
                serving,
                f"outputs[{i}].name",
                f"is {name!r}, which {type(estimator).__name__} cannot produce; choose from {available}",
            )
        predictors[name] = method
    declared = config["inputs"][0]["shape"][1]
    fitted = getattr(estimator, "n_features_in_", None)
    if fitted is not None and declared >= 0 and fitted != declared:
        raise _fail(
            serving, "inputs[0].shape", f"declares {declared} features but the model was fitted on {fitted}"
        )
    return predictors


#: Registered flavors: name -> loader. Register another with :func:`register_flavor`.
FLAVORS: dict[str, FlavorLoader] = {"sklearn": load_sklearn}


def register_flavor(name: str, loader: FlavorLoader) -> None:
    """Register (or replace) the loader for a flavor name."""
    FLAVORS[name] = loader


def load_model(artifact_dir: str | Path) -> LoadedModel:
    """Load the model of an artifact directory as its ``serving.json`` declares.

    :raises ServingConfigError: when ``serving.json`` is missing or invalid, or the model
        file does not provide a declared output.
    """
    root = Path(artifact_dir)
    config = read_serving_config(root)
    path = root / SERVING_FILE
    predictors = FLAVORS[config["flavor"]](root, config)
    return LoadedModel(
        name=config["name"],
        flavor=config["flavor"],
        metadata=config,
        inputs=_inputs(config, path),
        outputs=_outputs(config, path),
        _predictors=predictors,
    )
