"""Write a starting Great Expectations 1.x suite for a model from its reference data.

    python scripts/make_suite.py include/models/<name> [--label target]

Every column must be present and non-null, numeric columns must stay within their
reference range widened by a quarter of it (and non-negative when the reference is),
text columns within their reference values. Edit the result by hand: it is a start.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def suite_for(reference: pd.DataFrame, name: str) -> dict:
    expectations: list[dict] = [
        {"type": "expect_table_columns_to_match_set",
         "kwargs": {"column_set": list(reference.columns), "exact_match": True}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 20}},
    ]
    for col in reference.columns:
        expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}})
        series = reference[col]
        if series.dtype.kind in "iuf" and series.nunique() > 10:
            low, high = float(series.min()), float(series.max())
            margin = (high - low) / 4
            expectations.append({"type": "expect_column_values_to_be_between", "kwargs": {
                "column": col,
                "min_value": round(max(low - margin, 0.0) if low >= 0 else low - margin, 6),
                "max_value": round(high + margin, 6)}})
        else:
            values = sorted(series.dropna().unique().tolist())
            expectations.append({"type": "expect_column_values_to_be_in_set",
                                 "kwargs": {"column": col, "value_set": values}})
    return {"name": f"{name}.data", "expectations": expectations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    args = parser.parse_args()
    reference = pd.read_csv(args.model_dir / "reference.csv")
    suite = suite_for(reference, args.model_dir.name)
    (args.model_dir / "expectations.json").write_text(json.dumps(suite, indent=1) + "\n")
    print(f"wrote {len(suite['expectations'])} expectations to {args.model_dir / 'expectations.json'}")


if __name__ == "__main__":
    main()
