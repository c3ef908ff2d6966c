"""Measure a candidate on held-out data through the same loader the model server uses.

Evaluation goes through ``model_server.flavors.load_model``, so what is measured is
exactly what will be served, in a sandboxed process of its own (``predict_frame``): model
files are untrusted code and never load in the Airflow task process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import ReleaseFailed
from model_delivery.spec import LM_METRICS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

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


def _safe_metrics(task: str, names: list[str], y: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics that can be computed on this sample (e.g. roc_auc needs both classes); NaN otherwise."""
    values = {}
    for name in names:
        try:
            values[name] = compute_metrics(task, [name], y, outputs)[name]
        except ValueError:
            values[name] = float("nan")
    return values


def _format_of(path: Path, fmt: str | None) -> str:
    """``fmt`` as given (what the data's record names), else ``parquet`` for a ``.parquet`` file, else ``csv``."""
    return fmt or ("parquet" if path.suffix.lower() == ".parquet" else "csv")


def _read_table(path: Path, fmt: str) -> Any:
    """The whole table of a CSV or Parquet file as a frame (evaluation predicts every row at once)."""
    import pandas as pd

    if fmt == "csv":
        try:
            return pd.read_csv(path)
        except ValueError as exc:  # pandas' parser, empty-data and decoding errors are all ValueErrors
            raise EvaluationFailed(f"{path.name}: not a readable CSV table ({type(exc).__name__}: {str(exc)[:200]}). "
                                   "Fix the build so that it writes the data it evaluated on.") from None
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise EvaluationFailed(f"{path.name}: not a readable Parquet file ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}). Fix the build so that it writes the data it evaluated on."
                                   ) from None
    raise EvaluationFailed(f"{path.name}: evaluation data in format {fmt!r} cannot be read; it is csv or parquet.")


def load_eval_frame(path: Path, label: str, *, fmt: str | None = None) -> Any:
    """Read the evaluation data; a missing label column raises ``EvaluationFailed``.

    :param path: the evaluation data file.
    :param label: the column holding the truth.
    :param fmt: ``csv`` or ``parquet``, as the data's record names it; None: by the file's suffix.
    """
    frame = _read_table(path, _format_of(path, fmt))
    if label not in frame.columns:
        raise EvaluationFailed(
            f"{path.name}: label column {label!r} is missing (columns: {list(frame.columns)[:10]}...). "
            "Fix: set evaluation.label in model.yaml to the right column."
        )
    return frame


def _sandboxed(module: str, args: list[str], declared: dict[str, Any], work: Path, what: str) -> None:
    """Run ``python -m <module> <args>`` in the build's environment (no Airflow secrets); fail with its reason."""
    import subprocess
    import sys

    from model_delivery.build_env import sandbox_env

    done = subprocess.run([sys.executable, "-m", module, *args], env=sandbox_env(declared, work / "home"), cwd=work,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PREDICT_TIMEOUT)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise EvaluationFailed(f"{what}: {reason[:500]}")


def predict_frame(artifact_dir: Path, frame: Any, declared: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every declared output of the artifact's model for the rows of ``frame``, predicted in a sandbox.

    The model file is untrusted code, so it is loaded in a process of its own
    (``python -m model_server.predict``) with the build's environment (``declared``, see
    ``model_delivery.build_env``; no Airflow secrets), never in this one. Only ``serving.json``
    (JSON) is read here; the rows go out as ``.npy`` and the outputs come back as ``.npz``,
    both without pickle.
    """
    import tempfile

    import numpy as np

    from model_delivery.build_env import declare_default
    from model_server.flavors import read_serving_config

    config = read_serving_config(artifact_dir)
    first = (config.get("inputs") or [{}])[0]
    columns = first.get("columns") if isinstance(first, dict) else None
    if not columns:
        raise EvaluationFailed(f"{artifact_dir}/serving.json: inputs[0].columns is needed to evaluate on a table.")
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise EvaluationFailed(f"evaluation data lacks feature columns {absent} that the model needs.")
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        work = Path(tmp)
        np.save(work / "features.npy", frame[columns].to_numpy(dtype="float64"), allow_pickle=False)
        _sandboxed("model_server.predict", ["--artifact", str(artifact_dir), "--features", str(work / "features.npy"),
                                            "--output", str(work / "outputs.npz")],
                   declared or declare_default(config.get("name", "model")), work,
                   f"the model in {artifact_dir} could not predict the evaluation rows")
        with np.load(work / "outputs.npz", allow_pickle=False) as outputs:
            return {name: outputs[name] for name in outputs.files}


def score_blocks(artifact_dir: Path, blocks: Path, declared: dict[str, Any], *, max_length: int = 256,
                 fmt: str | None = None) -> list[dict[str, float]]:
    """Per-block scores of a language model on held-out text blocks, computed in a sandbox.

    ``python -m model_server.lm_score`` loads the safetensors weights in a process of its own with
    the build's environment; each block comes back as ``{"nll", "tokens", "correct"}``.

    :param blocks: the evaluation data: a CSV or Parquet file with a ``text`` column, a block a row.
    :param fmt: ``csv`` or ``parquet``, as the data's record names it; None: by the file's suffix.
    """
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lm-score-") as tmp:
        work = Path(tmp)
        _sandboxed("model_server.lm_score", ["--artifact", str(artifact_dir), "--blocks", str(blocks),
                                             "--format", _format_of(blocks, fmt), "--output",
                                             str(work / "scores.json"), "--max-length", str(max_length)],
                   declared, work, f"the language model in {artifact_dir} could not be scored")
        scores: list[dict[str, float]] = json.loads((work / "scores.json").read_text())["blocks"]
        return scores


def lm_metrics(blocks: list[dict[str, float]]) -> dict[str, float]:
    """A language model's metrics over held-out blocks (the names of ``spec.LM_METRICS``).

    ``perplexity``: exp of the mean NLL per token (of the model's own tokenizer);
    ``bits_per_byte``: the total NLL in bits per UTF-8 byte of the text, comparable between
    models whose tokenizers differ; ``next_token_accuracy``: the share of tokens that were the
    model's greedy choice.
    """
    tokens = sum(b["tokens"] for b in blocks)
    if tokens == 0:
        raise EvaluationFailed("the held-out blocks hold no token to score: check the eval data's text column")
    nll = sum(b["nll"] for b in blocks)
    size = sum(b.get("bytes", 0) for b in blocks)
    return {"perplexity": math.exp(nll / tokens),
            "bits_per_byte": nll / math.log(2) / size if size else float("nan"),
            "next_token_accuracy": sum(b["correct"] for b in blocks) / tokens}


def bootstrap_blocks(candidate: list[dict[str, float]], champion: list[dict[str, float]] | None, *, samples: int,
                     confidence: float, seed: int) -> dict[str, dict[str, list[float]]]:
    """Percentile intervals of each LM metric and of (candidate - champion), resampling blocks paired.

    The two models were scored on the same blocks, so each draw takes the same block indices for
    both: the delta's interval then reflects the models' difference, not the blocks' spread.
    """
    if champion is not None and len(champion) != len(candidate):
        raise EvaluationFailed(f"candidate and champion were scored on {len(candidate)} and {len(champion)} blocks: "
                               "a paired comparison needs the same blocks")
    names = LM_METRICS

    def measure(index: Any) -> tuple[dict[str, float], dict[str, float] | None]:
        ours = lm_metrics([candidate[i] for i in index])
        return ours, lm_metrics([champion[i] for i in index]) if champion is not None else None

    return paired_bootstrap(len(candidate), names, measure, paired=champion is not None, samples=samples,
                            confidence=confidence, seed=seed)


PREDICT_TIMEOUT = 1800
"""Seconds the sandboxed prediction of one evaluation set may take."""


def _take(outputs: dict[str, np.ndarray], index: Any) -> dict[str, np.ndarray]:
    return {name: values[index] for name, values in outputs.items()}


def slice_metrics(
    task: str, names: list[str], frame: Any, label: str, outputs: dict[str, np.ndarray], column: str
) -> dict[str, dict[str, Any]]:
    """Metrics per value of ``column``: ``{value: {"rows": n, "metrics": {...}}}``."""
    if column not in frame.columns:
        raise EvaluationFailed(f"slice column {column!r} is not in the evaluation data; fix gate.slices in model.yaml.")
    y = frame[label].to_numpy()
    result = {}
    for value in sorted(frame[column].astype("string").fillna("<missing>").unique()):
        mask = (frame[column].astype("string").fillna("<missing>") == value).to_numpy()
        result[str(value)] = {"rows": int(mask.sum()), "metrics": _safe_metrics(task, names, y[mask], _take(outputs, mask))}
    return result


def bootstrap(
    task: str,
    names: list[str],
    y: np.ndarray,
    candidate: dict[str, np.ndarray],
    champion: dict[str, np.ndarray] | None,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, list[float]]]:
    """Percentile confidence intervals of each metric and of (candidate - champion), paired by row."""

    def measure(index: Any) -> tuple[dict[str, float], dict[str, float] | None]:
        ours = _safe_metrics(task, names, y[index], _take(candidate, index))
        return ours, _safe_metrics(task, names, y[index], _take(champion, index)) if champion is not None else None

    return paired_bootstrap(len(y), names, measure, paired=champion is not None, samples=samples,
                            confidence=confidence, seed=seed)


def paired_bootstrap(n: int, names: Sequence[str], measure: Callable[[Any], tuple[dict[str, float],
                     dict[str, float] | None]], *, paired: bool, samples: int, confidence: float, seed: int,
                     ) -> dict[str, dict[str, list[float]]]:
    """Percentile intervals of each metric and of (candidate - champion), over ``samples`` resamples of ``n`` units.

    Each draw takes the same unit indices (rows, or an LM's blocks) for both models, so the
    delta's interval reflects their difference, not the units' spread. ``measure(index)`` gives
    the candidate's and the champion's metrics on one draw. NaN draws (a metric undefined on a
    draw) are left out.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    deltas: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(samples):
        ours, theirs = measure(rng.integers(0, n, n))
        for name in names:
            draws[name].append(ours[name])
            if theirs is not None:
                deltas[name].append(ours[name] - theirs[name])
    tail = (1 - confidence) / 2 * 100

    def interval(values: list[float]) -> list[float]:
        arr = np.asarray(values, dtype="float64")
        arr = arr[~np.isnan(arr)]
        return [float(np.percentile(arr, tail)), float(np.percentile(arr, 100 - tail))] if arr.size else []

    return {name: {"candidate": interval(draws[name]), **({"delta": interval(deltas[name])} if paired else {})}
            for name in names}


def evaluate_artifact(
    artifact_dir: Path, eval_data: Path, *, task: str, label: str, metrics: list[str], fmt: str | None = None
) -> dict[str, Any]:
    """Load the artifact, predict on the evaluation data (CSV or Parquet) and return metrics and row count.

    :param fmt: ``csv`` or ``parquet``, as the data's record names it; None: by the file's suffix.
    :raises EvaluationFailed: when the data is unreadable, or the label or a feature column is missing.
    """
    frame = load_eval_frame(eval_data, label, fmt=fmt)
    outputs = predict_frame(artifact_dir, frame)
    values = compute_metrics(task, metrics, frame[label].to_numpy(), outputs)
    return {"metrics": values, "rows": len(frame)}
