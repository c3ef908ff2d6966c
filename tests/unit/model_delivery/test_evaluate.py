"""Metrics against scikit-learn on small arrays, and evaluate_artifact on a real built artifact (CSV and Parquet)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from model_delivery.evaluate import EvaluationFailed, compute_metrics, evaluate_artifact, load_eval_frame

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds

BIN_Y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
BIN_PRED = np.array([0, 1, 0, 0, 1, 1, 1, 1])
BIN_P1 = np.array([0.2, 0.9, 0.4, 0.1, 0.8, 0.6, 0.7, 0.95])
BIN_OUT = {"predict": BIN_PRED, "predict_proba": np.column_stack([1 - BIN_P1, BIN_P1])}

MC_Y = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0])
MC_PRED = np.array([0, 2, 2, 2, 1, 0, 1, 1, 0])
MC_PROBA = np.array([
    [0.8, 0.1, 0.1], [0.1, 0.3, 0.6], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2],
    [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1],
])  # fmt: skip
MC_OUT = {"predict": MC_PRED, "predict_proba": MC_PROBA}

REG_Y = np.array([3.0, -0.5, 2.0, 7.0, 4.2])
REG_PRED = np.array([2.5, 0.0, 2.0, 8.0, 4.0])
REG_OUT = {"predict": REG_PRED}


@pytest.mark.parametrize(
    ("task", "name", "y", "outputs", "expected"),
    [
        pytest.param("classification", "accuracy", BIN_Y, BIN_OUT, lambda: skm.accuracy_score(BIN_Y, BIN_PRED), id="binary-accuracy"),
        pytest.param("classification", "f1", BIN_Y, BIN_OUT, lambda: skm.f1_score(BIN_Y, BIN_PRED), id="binary-f1"),
        pytest.param("classification", "precision", BIN_Y, BIN_OUT, lambda: skm.precision_score(BIN_Y, BIN_PRED), id="binary-precision"),
        pytest.param("classification", "recall", BIN_Y, BIN_OUT, lambda: skm.recall_score(BIN_Y, BIN_PRED), id="binary-recall"),
        pytest.param("classification", "roc_auc", BIN_Y, BIN_OUT, lambda: skm.roc_auc_score(BIN_Y, BIN_P1), id="binary-roc-auc"),
        pytest.param("classification", "log_loss", BIN_Y, BIN_OUT, lambda: skm.log_loss(BIN_Y, BIN_P1), id="binary-log-loss"),
        pytest.param("classification", "accuracy", MC_Y, MC_OUT, lambda: skm.accuracy_score(MC_Y, MC_PRED), id="multiclass-accuracy"),
        pytest.param("classification", "f1", MC_Y, MC_OUT, lambda: skm.f1_score(MC_Y, MC_PRED, average="macro"), id="multiclass-f1-macro"),
        pytest.param("classification", "precision", MC_Y, MC_OUT, lambda: skm.precision_score(MC_Y, MC_PRED, average="macro"), id="multiclass-precision"),
        pytest.param("classification", "recall", MC_Y, MC_OUT, lambda: skm.recall_score(MC_Y, MC_PRED, average="macro"), id="multiclass-recall"),
        pytest.param("classification", "roc_auc", MC_Y, MC_OUT, lambda: skm.roc_auc_score(MC_Y, MC_PROBA, multi_class="ovr"), id="multiclass-roc-auc-ovr"),
        pytest.param("classification", "log_loss", MC_Y, MC_OUT, lambda: skm.log_loss(MC_Y, MC_PROBA), id="multiclass-log-loss"),
        pytest.param("regression", "rmse", REG_Y, REG_OUT, lambda: skm.root_mean_squared_error(REG_Y, REG_PRED), id="rmse"),
        pytest.param("regression", "mae", REG_Y, REG_OUT, lambda: skm.mean_absolute_error(REG_Y, REG_PRED), id="mae"),
        pytest.param("regression", "r2", REG_Y, REG_OUT, lambda: skm.r2_score(REG_Y, REG_PRED), id="r2"),
    ],
)
def test_compute_metrics_matches_sklearn(
    task: str, name: str, y: np.ndarray, outputs: dict[str, np.ndarray], expected: Callable[[], float]
) -> None:
    values = compute_metrics(task, [name], y, outputs)

    assert list(values) == [name]
    assert isinstance(values[name], float)
    assert values[name] == pytest.approx(float(expected()), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("task", "y", "outputs", "expected"),
    [
        pytest.param("classification", BIN_Y, BIN_OUT, {"accuracy": 0.75, "f1": 0.8, "precision": 0.8, "recall": 0.8},
                     id="binary-by-hand"),
        pytest.param("regression", REG_Y, REG_OUT, {"mae": 0.44, "rmse": math.sqrt(1.54 / 5)}, id="regression-by-hand"),
    ],
)
def test_compute_metrics_by_hand(
    task: str, y: np.ndarray, outputs: dict[str, np.ndarray], expected: dict[str, float]
) -> None:
    assert compute_metrics(task, list(expected), y, outputs) == pytest.approx(expected)


@pytest.mark.parametrize("name", [pytest.param("roc_auc", id="roc-auc"), pytest.param("log_loss", id="log-loss")])
def test_probability_metrics_need_predict_proba(name: str) -> None:
    with pytest.raises(EvaluationFailed, match="predict_proba"):
        compute_metrics("classification", [name], BIN_Y, {"predict": BIN_PRED})


METRICS = ["accuracy", "f1", "precision", "recall", "roc_auc", "log_loss"]


@pytest.fixture(scope="module")
def csv_result(builds: Builds) -> dict[str, Any]:
    """evaluate_artifact of the v1 build on its CSV evaluation set (one sandboxed prediction, shared)."""
    return evaluate_artifact(builds.v1.model_dir, builds.v1.eval_csv, task="classification", label="target",
                             metrics=METRICS)


def test_evaluate_artifact_on_a_real_build(builds: Builds, csv_result: dict[str, Any]) -> None:
    result = csv_result

    frame = pd.read_csv(builds.v1.eval_csv)
    estimator = joblib.load(builds.v1.model_dir / "model.joblib")
    features = frame.drop(columns=[c for c in ("target", "size_group") if c in frame.columns]).to_numpy()
    y = frame["target"].to_numpy()
    proba = estimator.predict_proba(features)
    assert result["rows"] == len(frame) > 100
    assert list(result["metrics"]) == METRICS
    expected: dict[str, Any] = {
        "accuracy": skm.accuracy_score(y, estimator.predict(features)),
        "f1": skm.f1_score(y, estimator.predict(features)),
        "precision": skm.precision_score(y, estimator.predict(features)),
        "recall": skm.recall_score(y, estimator.predict(features)),
        "roc_auc": skm.roc_auc_score(y, proba[:, 1]),
        "log_loss": skm.log_loss(y, proba),
    }
    assert result["metrics"] == pytest.approx(expected)
    assert result["metrics"]["accuracy"] >= 0.93  # the demo's own gate


def test_a_parquet_eval_set_gives_the_metrics_of_the_same_rows_in_csv(
    builds: Builds, csv_result: dict[str, Any], tmp_path: Path
) -> None:
    frame = pd.read_csv(builds.v1.eval_csv)
    stored = tmp_path / "eval-data"  # a name that says nothing: the format given (the record's) decides
    frame.to_parquet(stored, row_group_size=50, index=False)

    from_parquet = evaluate_artifact(builds.v1.model_dir, stored, task="classification", label="target",
                                     metrics=METRICS, fmt="parquet")

    assert from_parquet == csv_result  # exactly: the same rows and dtypes, so the same predictions
    assert from_parquet["rows"] == len(frame)
    pd.testing.assert_frame_equal(load_eval_frame(stored, "target", fmt="parquet"), frame)


@pytest.mark.parametrize(("name", "write", "fmt", "message"), [
    pytest.param("eval.parquet", lambda p: p.write_text("a,target\n1,0\n"), None,
                 "eval.parquet: not a readable Parquet file", id="csv-named-parquet"),
    pytest.param("eval.csv", lambda p: p.write_text("a,target\n1,0\n"), "parquet",
                 "eval.csv: not a readable Parquet file", id="csv-recorded-as-parquet"),
    pytest.param("eval.csv", lambda p: p.write_bytes(b""), "csv", "eval.csv: not a readable CSV table", id="empty-csv"),
    pytest.param("eval.feather", lambda p: p.write_bytes(b"x"), "feather", "format 'feather' cannot be read",
                 id="unknown-format"),
])
def test_unreadable_eval_data_fails_with_the_file_and_format(
    tmp_path: Path, name: str, write: Callable[[Path], Any], fmt: str | None, message: str
) -> None:
    write(tmp_path / name)

    with pytest.raises(EvaluationFailed, match=message):
        load_eval_frame(tmp_path / name, "target", fmt=fmt)


def test_lm_blocks_are_scored_in_the_format_given(tmp_path: Path) -> None:
    """The sandboxed scorer reads the blocks as the record's format says: a Parquet file without 'text' is refused
    as such (before any model is loaded), whatever its name."""
    from model_delivery.build_env import declare_default
    from model_delivery.evaluate import score_blocks

    blocks = tmp_path / "eval-data"
    pd.DataFrame({"block": [0, 1]}).to_parquet(blocks, index=False)

    with pytest.raises(EvaluationFailed, match=r"could not be scored: .*eval-data has no 'text' column"):
        score_blocks(tmp_path / "no-model", blocks, declare_default("code_lm"), fmt="parquet")


def _without(builds: Builds, tmp_path: Path, column: str) -> Path:
    path = tmp_path / "eval.csv"
    pd.read_csv(builds.v1.eval_csv).drop(columns=[column]).to_csv(path, index=False)
    return path


def test_a_missing_label_column_names_the_column_and_the_spec_field(builds: Builds, tmp_path: Path) -> None:
    eval_csv = _without(builds, tmp_path, "target")

    with pytest.raises(EvaluationFailed) as caught:
        evaluate_artifact(builds.v1.model_dir, eval_csv, task="classification", label="target", metrics=["accuracy"])

    assert "label column 'target' is missing" in str(caught.value)
    assert "evaluation.label" in str(caught.value)


def test_a_missing_feature_column_is_named(builds: Builds, tmp_path: Path) -> None:
    eval_csv = _without(builds, tmp_path, "mean radius")

    with pytest.raises(EvaluationFailed, match=r"\['mean radius'\]"):
        evaluate_artifact(builds.v1.model_dir, eval_csv, task="classification", label="target", metrics=["accuracy"])


class _Spy:
    """A pickle that runs code when loaded, as a hostile model file would: it reports where it ran."""

    def __init__(self, report: str) -> None:
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        code = ("import json, os; json.dump({'pid': os.getpid(), 'env': dict(os.environ)}, open(%r, 'w'))"
                % self.report)
        return (exec, (code,))


def test_a_hostile_model_file_runs_outside_the_task_process_and_sees_no_secrets(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import os
    import shutil

    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgresql://admin:hunter2@db/warehouse")
    monkeypatch.setenv("AIRFLOW_VAR_API_KEY", "hunter3")
    artifact = tmp_path / "artifact"
    shutil.copytree(builds.v1.model_dir, artifact)
    report = tmp_path / "where-it-ran.json"
    joblib.dump(_Spy(str(report)), artifact / "model.joblib")

    with pytest.raises(EvaluationFailed, match="could not predict the evaluation rows"):
        evaluate_artifact(artifact, builds.v1.eval_csv, task="classification", label="target", metrics=["accuracy"])

    ran = json.loads(report.read_text())  # the pickle's code did run: in its own process
    assert ran["pid"] != os.getpid()
    assert not [k for k, v in ran["env"].items() if k.startswith("AIRFLOW") or "hunter" in v], ran["env"]
    assert ran["env"]["OMP_NUM_THREADS"] == "1"  # the build's declared environment
