"""Schema and drift from batch summaries: the numbers of the whole-frame definitions, or within the stated error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model_delivery.validation.drift import (
    CategoryCounts,
    ColumnKinds,
    DriftCounts,
    KsCounts,
    ReferenceSummary,
    Reservoir,
    categories,
    compare_schemas,
    drift_report,
    ks_statistic,
    psi,
    psi_of_counts,
    schema_changes,
)


def _batches(frame: pd.DataFrame, rows: int) -> list[pd.DataFrame]:
    return [frame.iloc[start:start + rows] for start in range(0, len(frame), rows)]


def _summary(reference: pd.DataFrame, rows: int = 1_000, **limits: int) -> ReferenceSummary:
    return ReferenceSummary.build(lambda: _batches(reference, rows), categorical=["group"], **limits)


rng = np.random.default_rng(11)
KS_CASES = [
    pytest.param(rng.normal(0, 1, 3000), rng.normal(0.1, 1, 800), id="continuous"),
    pytest.param(rng.integers(0, 6, 2000).astype(float), rng.integers(0, 8, 500).astype(float), id="ties"),
    pytest.param(np.r_[rng.normal(0, 1, 900), [np.nan] * 50, [-50.0, 50.0, np.inf]], rng.normal(0, 1, 300),
                 id="missing-and-outside"),
    pytest.param(rng.normal(5, 1, 400), rng.normal(0, 1, 400), id="disjoint"),
    pytest.param(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 2.0, 3.0]), id="tiny"),
]


@pytest.mark.parametrize(("data", "reference"), KS_CASES)
@pytest.mark.parametrize("rows", [1, 97, 10_000])
def test_ks_from_counts_is_scipys_ks(data: np.ndarray, reference: np.ndarray, rows: int) -> None:
    summary = _summary(pd.DataFrame({"v": reference}))
    counts = KsCounts(summary.numeric["v"])
    for start in range(0, len(data), rows):
        chunk = data[start:start + rows]
        counts.add(chunk[~np.isnan(chunk)])
    statistic, p_value = counts.statistic()
    expected = ks_statistic(data, reference)
    assert statistic == expected[0]  # the same divisions: exactly equal
    assert p_value == pytest.approx(expected[1], rel=1e-12, abs=1e-300)


def test_reservoir_is_exact_when_small_and_does_not_depend_on_batches() -> None:
    values = rng.normal(0, 1, 5000)
    small = Reservoir(10_000, (0, 1))
    small.add(values)
    assert np.array_equal(small.values(), values)
    samples = []
    for rows in (1, 333, 5000):
        reservoir = Reservoir(1000, (0, 1))
        for start in range(0, len(values), rows):
            reservoir.add(values[start:start + rows])
        samples.append(reservoir.values())
        assert reservoir.seen == 5000
    assert all(np.array_equal(samples[0], s) for s in samples[1:])
    assert set(samples[0]) <= set(values) and len(set(samples[0])) == 1000


def test_a_sampled_reference_gives_ks_within_the_stated_error() -> None:
    reference = pd.DataFrame({"v": rng.normal(0, 1, 60_000)})
    data = pd.DataFrame({"v": rng.normal(0.05, 1, 20_000)})
    summary = _summary(reference, rows=7_000, sample_size=4_000)
    drift = DriftCounts(summary)
    for batch in _batches(data, 3_000):
        drift.add(batch)
    (found,) = drift.report(ks_max=0.2, psi_max=0.2)
    exact, _ = ks_statistic(data["v"], reference["v"])
    error = summary.numeric["v"].ks_error()
    assert summary.numeric["v"].size == 4_000 and summary.numeric["v"].total == 60_000
    assert abs(found.statistic - exact) <= error
    assert found.note and "4,000 of the reference's 60,000" in found.note and f"{error:.4f}" in found.note


def test_psi_from_counts_is_psi_of_the_whole() -> None:
    reference = pd.Series(rng.choice(["a", "b", "c", None], 900, p=[0.5, 0.3, 0.15, 0.05]))
    data = pd.Series(rng.choice(["a", "b", "d", None], 1300, p=[0.4, 0.4, 0.1, 0.1]))
    ref_counts, data_counts = CategoryCounts(limit=100), CategoryCounts(limit=100)
    ref_counts.add(reference)
    for batch in _batches(data.to_frame("g"), 101):
        data_counts.add(batch["g"])
    value, note = psi_of_counts(data_counts, ref_counts)
    assert value == psi(data, reference) and note is None


def test_a_whole_float_is_the_same_category_as_the_integer() -> None:
    labels = pd.Series([0, 1, 1, 2, 7])
    with_missing = pd.Series([0.0, 1.0, 1.0, 2.5, np.nan])  # a missing label makes the column (or its batch) float
    assert categories(labels).tolist() == ["0", "1", "1", "2", "7"]
    assert categories(with_missing).tolist() == ["0", "1", "1", "2.5", "<missing>"]
    assert psi(with_missing.head(3), labels.head(3)) == 0.0


def test_too_many_categories_give_an_upper_bound_and_say_so() -> None:
    reference = pd.DataFrame({"group": rng.choice(["a", "b"], 500)})
    data = pd.DataFrame({"group": np.r_[rng.choice(["a", "b"], 900), [f"new-{i % 60}" for i in range(300)]]})
    summary = _summary(reference, category_limit=20)
    drift = DriftCounts(summary)
    for batch in _batches(data, 100):
        drift.add(batch)
    (found,) = drift.report(ks_max=0.2, psi_max=0.2)
    exact = psi(data["group"], reference["group"])
    assert found.statistic >= exact
    assert found.note and "upper bound" in found.note
    assert found.to_dict()["note"] == found.note
    assert "note" not in drift_report(data, reference, categorical=["group"], ks_max=0.2, psi_max=0.2)[0].to_dict()


def test_streamed_drift_equals_the_whole_frame_report() -> None:
    reference = pd.DataFrame({"x": rng.normal(0, 1, 700), "n": rng.integers(0, 9, 700),
                              "group": rng.choice(["a", "b"], 700), "label": rng.integers(0, 2, 700)})
    data = reference.sample(500, random_state=3).reset_index(drop=True).assign(x=lambda f: f["x"] + 0.3)
    summary = ReferenceSummary.build(lambda: _batches(reference, 128), categorical=["group", "label"], exclude=["n"])
    drift = DriftCounts(summary)
    for batch in _batches(data, 61):
        drift.add(batch)
    found = [d.to_dict() for d in drift.report(ks_max=0.1, psi_max=0.2, per_feature={"label": 0.05})]
    expected = [d.to_dict() for d in drift_report(data, reference, categorical=["group", "label"], ks_max=0.1,
                                                   psi_max=0.2, per_feature={"label": 0.05}, exclude=["n"])]
    assert found == expected
    assert [d["feature"] for d in found] == ["x", "group", "label"] and found[0]["drifted"]


SCHEMA_CASES = [
    pytest.param({"a": [1, 2, 3, 4], "b": ["x", "y", "z", "w"]}, [], id="same"),
    pytest.param({"a": [1, 2, None, 4], "b": ["x", "y", "z", "w"]}, [], id="int-becomes-float"),
    pytest.param({"a": [1, 2, 3, 4], "b": [None, None, "z", "w"]}, [], id="text-missing-in-the-first-batch"),
    pytest.param({"a": [1, 2, "3 mm", "4 mm"], "b": ["x", "y", "z", "w"]},
                 ["column 'a' changed type: string (mixed int64/str), reference is numeric (int64)"],
                 id="text-in-a-later-batch"),
    pytest.param({"a": ["1 mm", "2 mm", "3 mm", "4 mm"], "b": ["x", "y", "z", "w"]},
                 ["column 'a' changed type: string (str), reference is numeric (int64)"], id="text"),
    pytest.param({"b": ["x", "y", "z", "w"], "c": [1, 2, 3, 4]},
                 ["column 'a' is missing (the reference data has it)",
                  "column 'c' is extra (the reference data does not have it)"], id="missing-and-extra"),
]


@pytest.mark.parametrize(("columns", "expected"), SCHEMA_CASES)
def test_schema_over_batches(columns: dict[str, list], expected: list[str]) -> None:
    reference = pd.DataFrame({"a": [5, 6, 7], "b": ["x", "q", "r"]})
    frame = pd.DataFrame(columns)
    kinds = ColumnKinds()
    for batch in _batches(frame, 2):  # each batch as pandas reads it alone
        kinds.add(pd.DataFrame({c: batch[c].tolist() for c in batch.columns}))
    assert compare_schemas(kinds, ColumnKinds.of_frame(reference)) == expected
    whole = schema_changes(pd.DataFrame(columns), reference)
    assert [c.split(" (")[0] for c in whole] == [c.split(" (")[0] for c in expected]
