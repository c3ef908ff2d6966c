"""Build entrypoint of the wine demo model: a 3-class random forest.

Trains on scikit-learn's bundled wine recognition data (nothing is downloaded).
Contract: see ``model_delivery.build``.

    python train.py --output-dir OUT [--params '{"n_estimators": 100}']
    python train.py --write-reference reference.csv   # the reference data for drift checks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import joblib
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--params", default="{}", help="JSON hyper-parameters from model.yaml build.params")
    parser.add_argument("--write-reference", type=Path, help="write the reference data set and exit")
    args = parser.parse_args()
    params = json.loads(args.params)

    data = load_wine(as_frame=True)
    frame = data.frame  # 13 numeric features + "target" (cultivar 0, 1, 2)
    if args.write_reference:
        frame.to_csv(args.write_reference, index=False)
        return
    if args.output_dir is None:
        parser.error("--output-dir is required")
    features = list(data.feature_names)
    train, evaluation = train_test_split(
        frame, test_size=0.3, random_state=int(params.get("seed", 11)), stratify=frame["target"]
    )
    model = RandomForestClassifier(
        n_estimators=int(params.get("n_estimators", 100)),
        max_depth=params.get("max_depth"),
        random_state=int(params.get("seed", 11)),
        n_jobs=1,
    )
    model.fit(train[features].to_numpy(), train["target"].to_numpy())

    out_model = args.output_dir / "model"
    out_data = args.output_dir / "data"
    out_model.mkdir(parents=True, exist_ok=True)
    out_data.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out_model / "model.joblib")
    serving = {
        "name": "wine",
        "flavor": "sklearn",
        "model_file": "model.joblib",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, len(features)], "columns": features}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
        "labels": [str(n) for n in data.target_names],
    }
    (out_model / "serving.json").write_text(json.dumps(serving, indent=2, sort_keys=True))
    train.to_csv(out_data / "train.csv", index=False)
    evaluation.to_csv(out_data / "eval.csv", index=False)
    print(f"trained on {len(train)} rows, {len(evaluation)} held out for evaluation")


if __name__ == "__main__":
    main()
