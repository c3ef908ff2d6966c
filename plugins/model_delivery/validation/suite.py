"""A GX 1.x suite run on a table batch by batch, with the results GX gives on the whole table.

GX validates each batch itself (an ephemeral context, as :func:`run_suite` does on a whole
frame). Each expectation's result is then made from the batches in the way its kind allows:

- **row by row** (:data:`ROW_BY_ROW`: ``expect_column_values_to_*`` and the pair and
  multicolumn ones that judge each row alone): element, missing and unexpected counts are
  summed, the first unexpected values and row numbers are kept in row order, and GX's own
  ``_validate`` judges the totals (``mostly`` on the totals, the percentages of the totals);
- **about the columns** (:data:`SAME_ON_EVERY_BATCH`): every batch has the table's columns,
  so the first batch's result is the table's;
- **on streamed statistics** (:data:`STREAMED`: row count, min, max, sum, mean, standard
  deviation and share of non-null values of a column, and uniqueness): computed over every
  batch and judged by GX's ``_validate``; uniqueness counts the values in SQLite on disk,
  so memory stays bounded however many distinct values there are;
- **anything else** (median, quantiles, distinct values, z-scores...) needs the whole table
  at once. A table of one batch runs it as usual; a second batch refuses it
  (``InvalidModelSpec``), naming it and the fix, rather than judging it on a part.

A table read in one batch gets GX's own result, untouched.
"""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.validation.drift import kind

if TYPE_CHECKING:
    from types import TracebackType

    import pandas as pd

RESULT_FORMAT: Final = "SUMMARY"
PARTIAL = 20
"""Unexpected values (and their row numbers) GX keeps with the SUMMARY result format."""

ROW_BY_ROW = frozenset({
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_be_null",
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_values_to_match_regex_list",
    "expect_column_values_to_not_match_regex_list",
    "expect_column_values_to_match_strftime_format",
    "expect_column_values_to_be_dateutil_parseable",
    "expect_column_values_to_be_json_parseable",
    "expect_column_values_to_match_json_schema",
    "expect_column_value_lengths_to_be_between",
    "expect_column_value_lengths_to_equal",
    "expect_column_pair_values_to_be_equal",
    "expect_column_pair_values_a_to_be_greater_than_b",
    "expect_column_pair_values_to_be_in_set",
    "expect_multicolumn_sum_to_equal",
    "expect_multicolumn_values_to_be_equal",
    "expect_select_column_values_to_be_unique_within_record",
})
SAME_ON_EVERY_BATCH = frozenset({
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_column_count_to_equal",
    "expect_table_column_count_to_be_between",
    "expect_column_to_exist",
})
UNIQUE = "expect_column_values_to_be_unique"
STREAMED = {
    "expect_table_row_count_to_be_between": "table.row_count",
    "expect_table_row_count_to_equal": "table.row_count",
    "expect_column_min_to_be_between": "column.min",
    "expect_column_max_to_be_between": "column.max",
    "expect_column_sum_to_be_between": "column.sum",
    "expect_column_mean_to_be_between": "column.mean",
    "expect_column_stdev_to_be_between": "column.standard_deviation",
    "expect_column_proportion_of_non_null_values_to_be_between": "column.non_null_proportion",
    UNIQUE: "column_values.unique",
}


def _key(config: dict[str, Any]) -> str:
    """An expectation's identity in a result: its type and kwargs (without the batch GX adds)."""
    kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k != "batch_id"}
    return json.dumps([config.get("type"), kwargs], sort_keys=True, default=str)


def _raised(exception_info: Any) -> bool:
    """Whether a result's ``exception_info`` (flat, or keyed by metric) says an exception was raised."""
    if not isinstance(exception_info, dict):
        return False
    if "raised_exception" in exception_info:
        return bool(exception_info["raised_exception"])
    return any(_raised(value) for value in exception_info.values())


def _whole_table_only(config: dict[str, Any]) -> bool:
    kwargs = config.get("kwargs") or {}
    streamed = config["type"] in STREAMED and not kwargs.get("row_condition")
    return not (config["type"] in ROW_BY_ROW or config["type"] in SAME_ON_EVERY_BATCH or streamed)


@dataclass
class RowCounts:
    """A row-by-row expectation's results, summed over batches."""

    rows: int = 0
    missing: int = 0
    unexpected: int = 0
    values: list[Any] = field(default_factory=list)
    indexes: list[Any] | None = None
    error: dict[str, Any] | None = None

    def add(self, item: Any) -> None:
        if self.error is not None:
            return
        if _raised(item.exception_info):
            self.error = item.to_json_dict()
            return
        result = item.result or {}
        self.rows += int(result.get("element_count") or 0)
        self.missing += int(result.get("missing_count") or 0)
        self.unexpected += int(result.get("unexpected_count") or 0)
        self.values += list(result.get("partial_unexpected_list") or [])[: PARTIAL - len(self.values)]
        if result.get("partial_unexpected_index_list") is not None:
            self.indexes = self.indexes or []
            self.indexes += list(result["partial_unexpected_index_list"])[: PARTIAL - len(self.indexes)]

    def metrics(self, map_metric: str) -> dict[str, Any]:
        """The metrics GX's ``_validate`` of a map expectation reads, for the whole table."""
        return {
            "table.row_count": self.rows,
            "column_values.nonnull.unexpected_count": self.missing,
            f"{map_metric}.filtered_row_count": self.rows - self.missing,
            f"{map_metric}.unexpected_count": self.unexpected,
            f"{map_metric}.unexpected_values": self.values,
            f"{map_metric}.unexpected_index_list": self.indexes,
        }


def _scalar(value: Any) -> Any:
    """A numpy scalar as the Python number it holds."""
    return value.item() if hasattr(value, "item") else value


@dataclass
class ColumnStats:
    """Nulls, min, max, sum, mean and variance of a column, merged over batches (Chan et al.)."""

    rows: int = 0
    nulls: int = 0
    count: int = 0
    total: Any = 0
    mean: float = 0.0
    m2: float = 0.0
    low: Any = None
    high: Any = None
    not_numeric: str | None = None

    def add(self, series: pd.Series) -> None:
        nulls = int(series.isna().sum())
        self.rows += len(series)
        self.nulls += nulls
        if nulls == len(series):
            return
        if kind(series.dtype) != "numeric":
            self.not_numeric = str(series.dtype)
            return
        values = series.dropna()
        floats = values.to_numpy(dtype="float64")
        n, mean = len(floats), float(floats.mean())
        m2 = float(((floats - mean) ** 2).sum())
        delta, merged = mean - self.mean, self.count + n
        self.mean += delta * n / merged
        self.m2 += m2 + delta * delta * self.count * n / merged
        self.count = merged
        self.total += _scalar(values.sum())
        low, high = _scalar(values.min()), _scalar(values.max())
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def metric(self, name: str) -> Any:
        nan = float("nan")
        return {
            "column.non_null_proportion": (self.rows - self.nulls) / self.rows if self.rows else nan,
            "column.min": nan if self.low is None else self.low,
            "column.max": nan if self.high is None else self.high,
            "column.sum": self.total,
            "column.mean": self.total / self.count if self.count else nan,
            "column.standard_deviation": math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else nan,
        }[name]


class UniqueValues:
    """Rows whose value of a column occurs more than once, counted in SQLite on disk: exact, in bounded memory.

    ``seen`` has each value once, with how often it occurred and its first row; ``later`` its
    2nd to 20th rows. The first 20 unexpected rows (all rows of a repeated value are
    unexpected, as in GX) are among those.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path)
        self._db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;
            PRAGMA cache_size = -16384;
            CREATE TABLE seen (v PRIMARY KEY, n INTEGER NOT NULL, first INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE later (row INTEGER PRIMARY KEY, v);
            CREATE TEMP TABLE batch (row INTEGER PRIMARY KEY, v);
        """)
        self.rows = 0
        self.nulls = 0

    def add(self, series: pd.Series) -> None:
        values = series.dropna()
        self.rows += len(series)
        self.nulls += len(series) - len(values)
        if kind(values.dtype) in ("numeric", "string") and values.dtype != object:
            plain = values.tolist()
        else:
            plain = [v if isinstance(v, int | float | str) else str(v) for v in values.tolist()]
        db = self._db
        db.executemany("INSERT INTO batch VALUES (?, ?)", zip(values.index.tolist(), plain, strict=True))
        db.execute(f"""
            INSERT INTO later SELECT b.row, b.v FROM
              (SELECT row, v, ROW_NUMBER() OVER (PARTITION BY v ORDER BY row) AS k FROM batch) AS b
              LEFT JOIN seen AS s ON s.v = b.v
            WHERE COALESCE(s.n, 0) + b.k BETWEEN 2 AND {PARTIAL}""")
        db.execute("""
            INSERT INTO seen SELECT v, COUNT(*), MIN(row) FROM batch WHERE true GROUP BY v
            ON CONFLICT (v) DO UPDATE SET n = n + excluded.n""")
        db.execute("DELETE FROM batch")

    def metrics(self) -> dict[str, Any]:
        db = self._db
        unexpected = db.execute("SELECT COALESCE(SUM(n), 0) FROM seen WHERE n > 1").fetchone()[0]
        first = db.execute(f"""
            SELECT row, v FROM (SELECT first AS row, v FROM seen WHERE n > 1 UNION ALL SELECT row, v FROM later)
            ORDER BY row LIMIT {PARTIAL}""").fetchall()
        return {
            "table.row_count": self.rows,
            "column_values.nonnull.unexpected_count": self.nulls,
            "column_values.unique.unexpected_count": int(unexpected),
            "column_values.unique.unexpected_values": [v for _, v in first],
            "column_values.unique.unexpected_index_list": [row for row, _ in first],
        }

    def close(self) -> None:
        self._db.close()


def _describe(config: dict[str, Any]) -> str:
    kwargs = config.get("kwargs") or {}
    column = kwargs.get("column") or kwargs.get("column_list")
    return f"{config['type']}" + (f" on column {column!r}" if column else "")


class BatchedSuite:
    """Validate a table with a GX suite one batch at a time; :meth:`result` is the whole table's result.

    :param suite: GX 1.x suite JSON.
    :param name: the data set's name (the GX asset, and messages).
    :param workdir: where the uniqueness counts are kept on disk (a temporary directory inside it).
    """

    def __init__(self, suite: dict[str, Any], *, name: str, workdir: Path | None = None) -> None:
        import great_expectations as gx
        from great_expectations.core.expectation_suite import ExpectationSuite
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self._definition = (context.data_sources.add_pandas("model_delivery").add_dataframe_asset(name)
                            .add_batch_definition_whole_dataframe("batches"))
        self.name = name
        self._suite = ExpectationSuite(name=suite.get("name", name), expectations=list(suite["expectations"]))
        self._expectations = list(self._suite.expectations)
        self._configs = [cast("dict[str, Any]", e.configuration.to_json_dict()) for e in self._expectations]
        self._row_by_row = ExpectationSuite(
            name=self._suite.name, expectations=[c for c in suite["expectations"] if c.get("type") in ROW_BY_ROW])
        self._tmp = tempfile.TemporaryDirectory(prefix="gx-unique-", dir=workdir)
        self._rows: dict[int, RowCounts] = {}
        self._unique: dict[int, UniqueValues] = {}
        self._stats: dict[str, ColumnStats] = {}
        for position, config in enumerate(self._configs):
            column = (config.get("kwargs") or {}).get("column")
            if config["type"] in ROW_BY_ROW:
                self._rows[position] = RowCounts()
            elif config["type"] == UNIQUE and column is not None:
                self._unique[position] = UniqueValues(Path(self._tmp.name) / f"{position}.sqlite")
            elif config["type"] in STREAMED and column is not None:
                self._stats.setdefault(column, ColumnStats())
        self.batches = 0
        self.rows = 0
        self._first: dict[str, Any] | None = None

    def __enter__(self) -> BatchedSuite:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for unique in self._unique.values():
            unique.close()
        self._tmp.cleanup()

    def add(self, frame: pd.DataFrame) -> None:
        """Validate one batch (the first with the whole suite, the others with the row-by-row part) and count it."""
        self.batches += 1
        if self.batches == 2:
            self._refuse_whole_table_only()
        suite = self._suite if self.batches == 1 else self._row_by_row
        if self.batches == 1 or suite.expectations:
            result = self._definition.get_batch(batch_parameters={"dataframe": frame}).validate(
                suite, result_format=RESULT_FORMAT)
            if self.batches == 1:
                self._first = cast("dict[str, Any]", result.to_json_dict())
            positions = self._positions()
            for item in result.results:
                config = item.expectation_config
                position = positions[_key(cast("dict[str, Any]", config.to_json_dict()) if config else {})].pop(0)
                if position in self._rows:
                    self._rows[position].add(item)
        for position, unique in self._unique.items():
            column = self._configs[position]["kwargs"]["column"]
            if column in frame.columns:
                unique.add(frame[column])
        for column, stats in self._stats.items():
            if column in frame.columns:
                stats.add(frame[column])
        self.rows += len(frame)

    def _positions(self) -> dict[str, list[int]]:
        positions: dict[str, list[int]] = {}
        for position, config in enumerate(self._configs):
            positions.setdefault(_key(config), []).append(position)
        return positions

    def _refuse_whole_table_only(self) -> None:
        refused = [_describe(c) for c in self._configs if _whole_table_only(c)]
        if refused:
            raise InvalidModelSpec(
                f"{self.name}: the data is validated in batches (it has more than the {self.rows:,} rows of the first), "
                f"and {len(refused)} expectation(s) of the suite need the whole table at once: {'; '.join(refused)}. "
                "Fix: replace each with expectations judged row by row (expect_column_values_to_*), on the columns, "
                "or on streamed statistics (row count, min, max, sum, mean, stdev, share of non-null values, "
                "uniqueness); see docs/validation.md."
            )

    def result(self) -> dict[str, Any]:
        """The whole table's result, as GX's ``to_json_dict`` has it."""
        from great_expectations.util import convert_to_json_serializable

        if self._first is None:
            raise ValueError("no batch was validated")
        if self.batches == 1:
            return self._first
        positions = self._positions()
        results = []
        for item in self._first["results"]:
            position = positions[_key(item["expectation_config"])].pop(0)
            merged = self._merged(position, item)
            results.append({**item, **convert_to_json_serializable(merged)})
        successes = sum(1 for item in results if item["success"])
        meta = {k: v for k, v in self._first.get("meta", {}).items() if k != "batch_markers"}
        return {
            **self._first,
            "success": successes == len(results),
            "results": results,
            "statistics": {
                "evaluated_expectations": len(results),
                "successful_expectations": successes,
                "unsuccessful_expectations": len(results) - successes,
                "success_percent": successes / len(results) * 100 if results else None,
            },
            "meta": {**meta, "batches": {"count": self.batches, "rows": self.rows}},
        }

    def _merged(self, position: int, first: dict[str, Any]) -> dict[str, Any]:
        """One expectation's result over every batch (the first batch's when it raised or is about the columns)."""
        config = self._configs[position]
        if _raised(first.get("exception_info")) or config["type"] in SAME_ON_EVERY_BATCH:
            return {}
        expectation = self._expectations[position]
        runtime = {"result_format": RESULT_FORMAT}
        if position in self._rows:
            counts = self._rows[position]
            if counts.error is not None:
                return {k: counts.error[k] for k in ("success", "result", "exception_info")}
            map_metric: str = expectation.map_metric  # type: ignore[attr-defined]  # every ROW_BY_ROW has one
            return dict(expectation._validate(counts.metrics(map_metric), runtime))
        if position in self._unique:
            return dict(expectation._validate(self._unique[position].metrics(), runtime))
        metric = STREAMED[config["type"]]
        if metric == "table.row_count":
            return dict(expectation._validate({metric: self.rows}, runtime))
        stats = self._stats[config["kwargs"]["column"]]
        if stats.not_numeric and metric != "column.non_null_proportion":
            message = (f"{metric} of the column is computed batch by batch for numeric columns only, and it has "
                       f"{stats.not_numeric} values")
            return {"success": False, "result": {},
                    "exception_info": {"raised_exception": True, "exception_message": message,
                                       "exception_traceback": None}}
        return dict(expectation._validate({metric: stats.metric(metric)}, runtime))
