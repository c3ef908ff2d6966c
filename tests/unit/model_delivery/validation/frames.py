"""Generated tables for the validation tests: failures of every kind, spread over many batches."""

from __future__ import annotations

import numpy as np
import pandas as pd

from model_delivery.spec import ValidationSpec

ROWS = 600


def reference_frame(rows: int = ROWS, seed: int = 1) -> pd.DataFrame:
    """Clean data: the reference the generated data is compared with."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(rows),
        "x": rng.normal(10, 2, rows).round(3),
        "y": rng.exponential(3, rows).round(2),
        "count": rng.integers(0, 50, rows),
        "group": rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2]),
        "code": [f"K-{i % 97:03d}" for i in range(rows)],
        "label": rng.integers(0, 2, rows),
    })


def bad_frame(rows: int = ROWS, seed: int = 2) -> pd.DataFrame:
    """Data with failures in every part of the table: every batch of a few dozen rows has some."""
    frame = reference_frame(rows, seed)
    frame["x"] = frame["x"] + 0.8                                   # drifted
    frame.loc[frame.index % 41 == 5, "x"] = 99.5                    # out of range, every 41st row
    frame.loc[frame.index % 53 == 7, "y"] = np.nan                  # nulls in a float column
    frame.loc[[3, 250, 251, 598], "id"] = [2, 249, 500, 0]          # duplicates, within and across batches
    frame.loc[frame.index % 67 == 11, "code"] = "bad code"          # regex failures
    frame.loc[frame.index % 89 == 13, "group"] = "z"                # a new category
    frame.loc[frame.index % 71 == 17, "label"] = 2                  # out of the label's set
    return frame


SUITE = {"name": "generated", "expectations": [
    {"type": "expect_table_columns_to_match_set",
     "kwargs": {"column_set": ["id", "x", "y", "count", "group", "code", "label"], "exact_match": True}},
    {"type": "expect_table_columns_to_match_ordered_list",
     "kwargs": {"column_list": ["id", "x", "y", "count", "group", "code", "label"]}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 100, "max_value": 10_000}},
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "count", "mostly": 0.01}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "y"}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "y", "mostly": 0.95}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 20}},
    {"type": "expect_column_values_to_be_between",
     "kwargs": {"column": "x", "min_value": 0, "max_value": 20, "mostly": 0.97}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "y", "min_value": 0, "max_value": 30}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "group", "value_set": ["a", "b", "c"]}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "code", "regex": "^K-[0-9]{3}$"}},
    {"type": "expect_column_value_lengths_to_be_between",
     "kwargs": {"column": "code", "min_value": 5, "max_value": 5}},
    {"type": "expect_column_pair_values_a_to_be_greater_than_b",
     "kwargs": {"column_A": "x", "column_B": "y", "or_equal": True}},
    {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 9, "max_value": 11}},
    {"type": "expect_column_min_to_be_between", "kwargs": {"column": "y", "min_value": 0}},
    {"type": "expect_column_max_to_be_between", "kwargs": {"column": "x", "max_value": 50}},
    {"type": "expect_column_sum_to_be_between", "kwargs": {"column": "count", "min_value": 0}},
    {"type": "expect_column_stdev_to_be_between", "kwargs": {"column": "x", "max_value": 3}},
    {"type": "expect_column_proportion_of_non_null_values_to_be_between",
     "kwargs": {"column": "y", "min_value": 0.99}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "missing", "min_value": 0}},
]}

CONFIG = ValidationSpec(suite="suite.json", reference="reference.csv", categorical=["group", "label"],
                        drift={"ks_max": 0.2, "psi_max": 0.1, "exclude": ["id"]})
CATEGORICAL = ["group", "label"]
