"""Benchmark: the data-validation stage against the same GX suite run directly, on one frame.

Frame: 1,000,000 rows x 20 numeric columns (``--rows`` to change). Suite: every column
present, non-null and within a range (41 expectations). Baseline: the same suite run
directly with the GX 1.x API (ephemeral context, pandas data source, whole-frame batch,
``validate``). Ours: ``model_delivery.validation.data.run_suite`` plus the failure summary
and the schema check, which is what the stage adds around GX. The drift check (KS for
every column against a 100,000-row reference) is timed on its own.

Both run in this process on the same frame, alternating, and the median of the repeats is
compared. The target is an overhead of at most 10% (ratio <= 1.10).

    .venv/bin/python bench/bench_validation.py [--rows N] [--repeats K]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = 20


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({f"f{i:02d}": rng.normal(i, 1 + i / 10, rows) for i in range(COLUMNS)})


def make_suite(frame: pd.DataFrame) -> dict:
    expectations: list[dict] = [{"type": "expect_table_columns_to_match_set",
                                 "kwargs": {"column_set": list(frame.columns), "exact_match": True}}]
    for col in frame.columns:
        expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}})
        expectations.append({"type": "expect_column_values_to_be_between",
                             "kwargs": {"column": col, "min_value": -1000, "max_value": 1000}})
    return {"name": "bench", "expectations": expectations}


def direct_gx(frame: pd.DataFrame, suite: dict) -> bool:
    """The baseline: the GX 1.x API called directly."""
    import great_expectations as gx
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (context.data_sources.add_pandas("direct").add_dataframe_asset("frame")
             .add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame}))
    return bool(batch.validate(ExpectationSuite(name="bench", expectations=suite["expectations"]),
                               result_format="SUMMARY").success)


def ours(frame: pd.DataFrame, reference: pd.DataFrame, suite: dict) -> bool:
    """What the validate_data stage runs around GX (without drift, timed separately)."""
    from model_delivery.validation.data import failed_expectations, run_suite
    from model_delivery.validation.drift import schema_changes

    result = run_suite(frame, suite, name="train.csv")
    return not failed_expectations(result) and not schema_changes(frame, reference)


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 200_000, 3
    from model_delivery.validation.drift import drift_report

    frame = make_frame(args.rows, seed=1)
    reference = make_frame(min(args.rows, 100_000), seed=2)
    suite = make_suite(frame)
    direct_gx(frame.head(1000), suite)  # warm imports and caches for both
    ours(frame.head(1000), reference, suite)
    direct_times, our_times = [], []
    for _ in range(args.repeats):
        seconds, ok = timed(direct_gx, frame, suite)
        assert ok, "the direct GX run failed its own suite"
        direct_times.append(seconds)
        seconds, ok = timed(ours, frame, reference, suite)
        assert ok, "our validation failed the suite"
        our_times.append(seconds)
    drift_seconds, drift = timed(lambda: drift_report(frame, reference, categorical=[], ks_max=0.2, psi_max=0.2))
    assert len(drift) == COLUMNS and not any(d.drifted for d in drift), "drift check gave a wrong answer"

    direct, mine = statistics.median(direct_times), statistics.median(our_times)
    ratio = mine / direct
    print(f"frame: {args.rows:,} rows x {COLUMNS} columns, suite of {len(suite['expectations'])} expectations")
    print(f"{'run':<28}{'median s':>10}  all runs")
    print(f"{'GX directly (baseline)':<28}{direct:>10.2f}  {[round(t, 2) for t in direct_times]}")
    print(f"{'validate_data (ours)':<28}{mine:>10.2f}  {[round(t, 2) for t in our_times]}")
    print(f"{'drift check, 20 x KS':<28}{drift_seconds:>10.2f}  (reference {len(reference):,} rows)")
    print(f"overhead: {100 * (ratio - 1):+.1f}% (target <= +10%)")
    print(f"RATIO validation: {ratio:.3f}x (our validate_data stage / the same GX suite run directly)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "validation.json").write_text(json.dumps({
        "rows": args.rows, "columns": COLUMNS, "direct_seconds": direct_times, "our_seconds": our_times,
        "drift_seconds": drift_seconds, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
