"""Measure a candidate on held-out data through the same loader the model server uses.

Evaluation goes through ``model_server.flavors.load_model``, so what is measured is
exactly what will be served.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import ReleaseFailed

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np


class EvaluationFailed(ReleaseFailed):
    """The evaluation data or the model outputs cannot be measured."""


def _classification(name: str, y: np.ndarray, outputs: dict[str, np.ndarray]) -> float:
    from sklearn import metrics as skm

    pred = outputs["predict"]
    multiclass = len(set(y.tolist()) | set(pred.tolist())) > 2
    average = "macro" if multiclass else "binary"
    if name == "accuracy":
        return float(skm.accuracy_score(y, pred))
    if name in ("f1", "precision", "recall"):
        scorer = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}[name]
        return float(scorer(y, pred, average=average, zero_division=0))
    if "predict_proba" not in outputs:
        raise EvaluationFailed(
            f"metric {name!r} needs the model output 'predict_proba'; declare it in serving.json or drop the metric"
        )
    proba = outputs["predict_proba"]
    if name == "roc_auc":
        return float(skm.roc_auc_score(y, proba, multi_class="ovr") if multiclass else skm.roc_auc_score(y, proba[:, 1]))
    return float(skm.log_loss(y, proba))


def _regression(name: str, y: np.ndarray, outputs: dict[str, np.ndarray]) -> float:
    from sklearn import metrics as skm

    pred = outputs["predict"]
    if name == "rmse":
        return math.sqrt(float(skm.mean_squared_error(y, pred)))
    if name == "mae":
        return float(skm.mean_absolute_error(y, pred))
    return float(skm.r2_score(y, pred))


def compute_metrics(task: str, names: list[str], y: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Compute each named metric of a classification or regression task."""
    measure = _classification if task == "classification" else _regression
    return {name: measure(name, y, outputs) for name in names}


def evaluate_artifact(
    artifact_dir: Path, eval_csv: Path, *, task: str, label: str, metrics: list[str]
) -> dict[str, Any]:
    """Load the artifact, predict on the evaluation CSV and return metrics and row count.

    :raises EvaluationFailed: when the label or a feature column is missing.
    """
    import pandas as pd

    from model_server.flavors import load_model

    model = load_model(artifact_dir)
    frame = pd.read_csv(eval_csv)
    if label not in frame.columns:
        raise EvaluationFailed(
            f"{eval_csv.name}: label column {label!r} is missing (columns: {list(frame.columns)[:10]}...). "
            "Fix: set evaluation.label in model.yaml to the right column."
        )
    columns = model.metadata["inputs"][0].get("columns") or [c for c in frame.columns if c != label]
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise EvaluationFailed(f"{eval_csv.name}: feature columns {absent} that the model needs are missing.")
    outputs = model.predict(frame[columns].to_numpy(dtype="float64"))
    values = compute_metrics(task, metrics, frame[label].to_numpy(), outputs)
    return {"metrics": values, "rows": len(frame)}
