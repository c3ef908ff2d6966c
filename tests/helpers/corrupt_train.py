"""Test-only build entrypoint: run the model's real train.py, then damage its data.

Copied into a test's model folder and named as ``build.entrypoint``; the damage is
chosen by ``build.params.corrupt`` and applied to ``build.params.dataset`` (train/eval).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
        return
    if how == "not_table":
        path.write_bytes(bytes(range(256)) * 64)
        return
    frame = pd.read_csv(path)
    if how == "nan":
        frame.loc[frame.index[:5], "mean radius"] = np.nan
    elif how == "missing_column":
        frame = frame.drop(columns=["mean texture"])
    elif how == "extra_column":
        frame["surprise"] = 1.0
    elif how == "wrong_dtype":
        frame["mean area"] = ["big" if v > 600 else "small" for v in frame["mean area"]]
    elif how == "out_of_range":
        frame.loc[frame.index[:3], "mean smoothness"] = 50.0
    elif how == "drift":
        frame["mean radius"] = frame["mean radius"] + 3.0
    else:
        raise SystemExit(f"unknown corruption {how!r}")
    frame.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    params = json.loads(args.params)
    how, dataset = params.pop("corrupt"), params.pop("dataset", "train")
    here = Path(__file__).parent
    subprocess.run([sys.executable, str(here / "train.py"), "--output-dir", str(args.output_dir),
                    "--params", json.dumps(params)], check=True)
    damage(args.output_dir / "data" / f"{dataset}.csv", how)
    print(f"damaged {dataset}.csv: {how}")


if __name__ == "__main__":
    main()
