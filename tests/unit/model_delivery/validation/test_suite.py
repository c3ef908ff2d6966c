"""A GX suite run batch by batch gives the result GX gives on the whole table (real GX, real files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.spec import load_spec
from model_delivery.validation.data import (
    failed_expectations,
    load_suite,
    run_suite,
    summarize_reference,
    validate_dataset,
)
from model_delivery.validation.drift import drift_report, schema_changes
from model_delivery.validation.suite import ROW_BY_ROW, SAME_ON_EVERY_BATCH, STREAMED, BatchedSuite
from tests.unit.model_delivery.validation.frames import CATEGORICAL, CONFIG, SUITE, bad_frame, reference_frame

MODELS = Path(__file__).resolve().parents[4] / "include" / "models"
ROUNDED = {"expect_column_sum_to_be_between", "expect_column_mean_to_be_between", "expect_column_stdev_to_be_between"}
"""Judged on statistics merged over batches: the same up to floating-point rounding."""


def _by_expectation(gx_result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in gx_result["results"]:
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        key = json.dumps([config["type"], kwargs], sort_keys=True)
        found.setdefault(key, []).append({k: item[k] for k in ("success", "result", "exception_info")})
    return found


def assert_same_result(batched: dict[str, Any], whole: dict[str, Any]) -> None:
    """Every expectation's success, counts, percentages, samples and row numbers as GX gives them on the whole."""
    assert batched["success"] == whole["success"]
    assert batched["statistics"] == whole["statistics"]
    ours, theirs = _by_expectation(batched), _by_expectation(whole)
    assert ours.keys() == theirs.keys()
    for key, items in theirs.items():
        for mine, gx in zip(ours[key], items, strict=True):
            if json.loads(key)[0] in ROUNDED:
                assert mine["success"] == gx["success"], key
                assert mine["result"]["observed_value"] == pytest.approx(gx["result"]["observed_value"], rel=1e-12)
            elif gx["exception_info"].get("raised_exception") is not False:  # an error: same error
                assert mine["success"] is False and mine["exception_info"] == gx["exception_info"], key
            else:
                assert mine == gx, key


def _shipped(model: str) -> tuple[Any, dict[str, Any], list[str]]:
    spec = load_spec(MODELS / model)
    categorical = [*spec.validation.categorical, *([spec.evaluation.label] if spec.task == "classification" else [])]
    return spec.validation, load_suite(MODELS / model / spec.validation.suite), categorical


@pytest.mark.parametrize("model", ["breast_cancer", "wine", "code_lm"])
def test_shipped_data_batched_equals_whole_frame(tmp_path: Path, model: str) -> None:
    """The shipped reference data, and a train/eval split of it as the builds make, in batches of 97 rows and in one."""
    config, suite, categorical = _shipped(model)
    reference_file = MODELS / model / config.reference
    reference = pd.read_csv(reference_file)
    summary = summarize_reference(reference_file, "reference", categorical=categorical, exclude=config.drift.exclude)
    splits = {"all": reference, "train": reference[reference.index % 4 != 0], "eval": reference[reference.index % 4 == 0]}
    for name, frame in splits.items():
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        whole = pd.read_csv(path)
        expected_drift = [d.to_dict() for d in drift_report(
            whole, reference, categorical=categorical, ks_max=config.drift.ks_max, psi_max=config.drift.psi_max,
            per_feature=config.drift.per_feature, exclude=config.drift.exclude)]
        gx_whole = run_suite(whole, suite, name=name)
        for chunk_rows in (97, 1_000_000):
            report = validate_dataset(name, path, summary, suite, config, categorical=categorical, chunk_rows=chunk_rows)
            assert report.rows == len(whole)
            assert_same_result(report.gx_result, gx_whole)
            assert report.drift == expected_drift
            assert report.schema_changes == schema_changes(whole, reference) == []


@pytest.mark.parametrize("chunk_rows", [13, 37, 250, 599, 600])
def test_failures_spread_over_batches_merge_to_the_whole_table_result(chunk_rows: int) -> None:
    frame = bad_frame()
    report = validate_dataset("train.csv", frame, reference_frame(), SUITE, CONFIG, categorical=CATEGORICAL,
                              chunk_rows=chunk_rows)
    whole = run_suite(frame, SUITE, name="train.csv")
    assert_same_result(report.gx_result, whole)
    assert not whole["success"] and whole["statistics"]["unsuccessful_expectations"] >= 10
    failed = {(f["expectation"], str(f["column"])): f for f in report.failed_expectations}
    unique_id = failed[("expect_column_values_to_be_unique", "id")]
    assert unique_id["unexpected_count"] == 8 and unique_id["sample"] == [0, 2, 2, 249, 249]  # across batches
    assert failed[("expect_column_values_to_be_between", "x")]["unexpected_count"] == 15
    assert ("expect_column_values_to_be_between", "x") in failed  # without mostly
    mostly = [r for r in report.gx_result["results"] if r["expectation_config"]["kwargs"].get("mostly") == 0.97]
    assert mostly[0]["success"] is True  # 15 of 600 out of range: 97.5% >= mostly, judged on the totals
    if chunk_rows < 600:
        assert report.gx_result["meta"]["batches"] == {"count": -(-600 // chunk_rows), "rows": 600}
    else:
        assert report.gx_result["results"] == whole["results"]  # one batch: GX's own result


def test_a_second_batch_refuses_expectations_that_need_the_whole_table() -> None:
    suite = {"name": "s", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0}},
        {"type": "expect_column_median_to_be_between", "kwargs": {"column": "x", "min_value": 9, "max_value": 11}},
        {"type": "expect_column_distinct_values_to_be_in_set", "kwargs": {"column": "group", "value_set": ["a"]}},
    ]}
    frame = reference_frame()
    one_batch = validate_dataset("train.csv", frame, frame, suite, CONFIG, categorical=CATEGORICAL, chunk_rows=600)
    assert one_batch.expectations_evaluated == 3  # one batch is the whole table: GX runs everything
    with pytest.raises(InvalidModelSpec) as refused:
        validate_dataset("train.csv", frame, frame, suite, CONFIG, categorical=CATEGORICAL, chunk_rows=100)
    message = str(refused.value)
    assert "expect_column_median_to_be_between on column 'x'" in message
    assert "expect_column_distinct_values_to_be_in_set on column 'group'" in message
    assert "expect_column_values_to_be_between" not in message
    assert "Fix:" in message


def test_every_shipped_expectation_is_merged_exactly() -> None:
    shipped = {e["type"] for model in MODELS.iterdir() if (model / "expectations.json").is_file()
               for e in load_suite(model / "expectations.json")["expectations"]}
    assert shipped <= ROW_BY_ROW | SAME_ON_EVERY_BATCH | set(STREAMED)


def test_a_streamed_statistic_of_a_text_column_is_an_error_not_a_pass() -> None:
    suite = {"name": "s", "expectations": [
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 0}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "code", "min_value": 0}}]}
    frame = reference_frame()
    late_text = frame.iloc[400:].assign(x=[f"{v:.1f} mm" for v in frame["x"].iloc[400:]])
    with BatchedSuite(suite, name="train.csv") as run:
        for batch in (frame.iloc[:200], frame.iloc[200:400], late_text):
            run.add(batch)
        result = run.result()
    assert result["success"] is False
    errors = {f["column"]: f["error"] for f in failed_expectations(result)}
    assert "numeric columns only" in errors["x"]  # numbers in the first batches, text in the last
    assert errors["code"]  # text from the first batch: GX's own error
