"""Build entrypoint of the breast_cancer demo model.

Trains a scaled logistic regression on scikit-learn's bundled Wisconsin breast cancer
data (nothing is downloaded). Contract: see ``model_delivery.build``.

    python train.py --output-dir OUT [--params '{"C": 1.0}']
    python train.py --write-reference reference.csv   # the reference data for drift checks

The data carries one column that is not a feature, ``size_group`` (``small``/``large``
tumours by mean radius), so the gate can hold each slice to its own thresholds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def load_frame():
    """30 numeric features, ``target`` (0 = malignant, 1 = benign) and the ``size_group`` slice column."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    frame["size_group"] = ["large" if r >= 15.0 else "small" for r in frame["mean radius"]]
    return data, frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--params", default="{}", help="JSON hyper-parameters from model.yaml build.params")
    parser.add_argument("--write-reference", type=Path, help="write the reference data set and exit")
    args = parser.parse_args()
    params = json.loads(args.params)

    data, frame = load_frame()
    if args.write_reference:
        frame.to_csv(args.write_reference, index=False)
        return
    if args.output_dir is None:
        parser.error("--output-dir is required")
    features = list(data.feature_names)
    train, evaluation = train_test_split(
        frame, test_size=float(params.get("test_size", 0.25)), random_state=int(params.get("seed", 7)),
        stratify=frame["target"],
    )
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=float(params.get("C", 1.0)), max_iter=int(params.get("max_iter", 1000))),
    )
    model.fit(train[features].to_numpy(), train["target"].to_numpy())

    out_model = args.output_dir / "model"
    out_data = args.output_dir / "data"
    out_model.mkdir(parents=True, exist_ok=True)
    out_data.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out_model / "model.joblib")
    serving = {
        "name": "breast_cancer",
        "flavor": "sklearn",
        "model_file": "model.joblib",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, len(features)], "columns": features}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
        ],
        "labels": [str(n) for n in data.target_names],
    }
    (out_model / "serving.json").write_text(json.dumps(serving, indent=2, sort_keys=True))
    train.to_csv(out_data / "train.csv", index=False)
    evaluation.to_csv(out_data / "eval.csv", index=False)
    print(f"trained on {len(train)} rows, {len(evaluation)} held out for evaluation")


if __name__ == "__main__":
    main()
