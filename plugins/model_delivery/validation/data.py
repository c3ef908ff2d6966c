"""Data validation: a Great Expectations 1.x suite, schema and drift against reference data.

GX is used directly with an ephemeral context (the GX Airflow provider does not install
with Airflow 3.3). A suite is GX 1.x JSON (``{"name", "expectations": [{"type", "kwargs"}]}``),
kept in the model folder and named by the spec's ``validation.suite``.

A data set is a CSV or a Parquet file (the format its record names, or by its ``.parquet``
suffix for the reference), read in batches of at most
:data:`CHUNK_ROWS` rows and about :data:`BATCH_BYTES` bytes, so that memory does not grow with
the data: GX runs on each batch and the results are merged (``validation.suite``), and the
schema and drift checks count each batch against a summary of the reference
(``validation.drift``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import InvalidModelSpec, ReleaseFailed
from model_delivery.validation.drift import ColumnKinds, DriftCounts, ReferenceSummary, compare_schemas

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    import pandas as pd

    from model_delivery.spec import ValidationSpec

SAMPLE_VALUES = 5
CHUNK_ROWS = 250_000
"""Most rows in one batch."""
BATCH_BYTES = 64 * 2**20
"""About how much memory one batch takes as a frame: wide rows make smaller batches."""
FIRST_ROWS = 10_000
"""Rows of the first batch of a CSV, which sizes the following ones."""
PARQUET_SUFFIX = ".parquet"
PARQUET_BUFFER = 64 * 2**10
"""Read buffer per column of a Parquet file (without one, Arrow reads a whole column chunk at once)."""


class ValidationFailed(ReleaseFailed):
    """The data failed its expectations, its schema changed, or it drifted."""


def _rows_per_batch(batch: pd.DataFrame, chunk_rows: int) -> int:
    """As many rows as fit in BATCH_BYTES at this batch's size per row, at most ``chunk_rows``."""
    per_row = max(1, int(batch.memory_usage(deep=True).sum()) // max(1, len(batch)))
    return max(1, min(chunk_rows, BATCH_BYTES // per_row))


def _csv_batches(path: Path, name: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pandas as pd

    try:
        with pd.read_csv(path, chunksize=chunk_rows) as reader:
            rows = min(chunk_rows, FIRST_ROWS)
            while True:
                try:
                    batch = reader.get_chunk(rows)
                except StopIteration:
                    return
                if batch.empty:
                    return
                yield batch
                rows = _rows_per_batch(batch, chunk_rows)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed(f"{name}: not a readable CSV table ({type(exc).__name__}: {str(exc)[:200]}).") from None


def _parquet_batches(path: Path, name: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Batches of a Parquet file, read an eighth of a batch at a time through a small buffer per column.

    Arrow holds a few times what it reads at once, plus its read buffers: small reads keep
    that below the size of a batch, however large the file's row groups are.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    def frame(table: pa.Table, start: int) -> pd.DataFrame:
        batch = table.to_pandas()
        batch.index = pd.RangeIndex(start, start + len(batch))
        return batch

    try:
        with pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER) as parquet:
            meta = parquet.metadata
            size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            rows = max(1, min(chunk_rows, BATCH_BYTES // max(1, size // max(1, meta.num_rows))))
            start, pieces, have = 0, [], 0
            for piece in parquet.iter_batches(batch_size=-(-rows // 8)):
                pieces.append(piece)
                have += piece.num_rows
                if have >= rows:
                    table = pa.Table.from_batches(pieces, schema=parquet.schema_arrow)
                    batch, rest = frame(table.slice(0, rows), start), table.slice(rows)
                    del table, pieces
                    pieces, have, start = rest.to_batches(), rest.num_rows, start + rows
                    yield batch
            if have:
                yield frame(pa.Table.from_batches(pieces, schema=parquet.schema_arrow), start)
    except (pa.ArrowException, OSError) as exc:
        raise ValidationFailed(f"{name}: not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]}).") from None


def iter_table(path: Path, name: str, *, chunk_rows: int = CHUNK_ROWS, fmt: str | None = None
               ) -> Iterator[pd.DataFrame]:
    """The rows of a CSV or Parquet file in bounded batches, indexed by their row numbers in the file.

    An empty file, a file that is not a table, or a table without rows raises ``ValidationFailed``.

    :param fmt: ``csv`` or ``parquet`` (what the data's record names); None: by the file's suffix.
    """
    if not path.exists() or path.stat().st_size == 0:
        raise ValidationFailed(f"{name}: the file is empty. Fix the build so that it writes the data it used.")
    parquet = fmt == "parquet" if fmt else path.suffix.lower() == PARQUET_SUFFIX
    empty = True
    for batch in (_parquet_batches if parquet else _csv_batches)(path, name, chunk_rows):
        empty = False
        yield batch
    if empty:
        raise ValidationFailed(f"{name}: the table has {'columns' if parquet else 'a header'} but no rows.")


def table_batches(data: Path | pd.DataFrame, name: str, *, chunk_rows: int = CHUNK_ROWS, fmt: str | None = None
                  ) -> Iterator[pd.DataFrame]:
    """Batches of a data file (:func:`iter_table`), or of a frame already in memory (slices of ``chunk_rows``)."""
    import pandas as pd

    if not isinstance(data, pd.DataFrame):
        yield from iter_table(data, name, chunk_rows=chunk_rows, fmt=fmt)
        return
    if data.empty:
        raise ValidationFailed(f"{name}: the table has a header but no rows.")
    for start in range(0, len(data), chunk_rows):
        yield data.iloc[start:start + chunk_rows]


def read_table(path: Path, name: str) -> pd.DataFrame:
    """Read a whole CSV or Parquet table (small files: the stage itself reads in batches)."""
    import pandas as pd

    return pd.concat(list(iter_table(path, name)))


def summarize_reference(reference: Path | pd.DataFrame, name: str, *, categorical: Sequence[str],
                        exclude: Sequence[str] = (), chunk_rows: int = CHUNK_ROWS) -> ReferenceSummary:
    """The reference data's columns, kinds, numeric values (or a seeded sample) and category counts."""
    return ReferenceSummary.build(lambda: table_batches(reference, name, chunk_rows=chunk_rows),
                                  categorical=categorical, exclude=exclude)


def load_suite(path: Path) -> dict[str, Any]:
    """Load a GX suite JSON; a malformed file is a spec error naming the file."""
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelSpec(f"{path}: cannot read the expectation suite ({exc}). Fix: GX 1.x suite JSON.") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise InvalidModelSpec(f"{path}: an expectation suite needs a list 'expectations' of {{type, kwargs}}.")
    return suite


def run_suite(frame: pd.DataFrame, suite: dict[str, Any], *, name: str = "data") -> dict[str, Any]:
    """Validate a frame with a GX suite in an ephemeral context; return GX's full JSON result."""
    import great_expectations as gx
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("model_delivery")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    gx_suite = ExpectationSuite(name=suite.get("name", name), expectations=list(suite["expectations"]))
    result = batch.validate(gx_suite, result_format="SUMMARY")
    return result.to_json_dict()


def failed_expectations(gx_result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each failed expectation: its type, column, unexpected count and a few sample values."""
    failures = []
    for item in gx_result.get("results", []):
        if item.get("success"):
            continue
        config = item.get("expectation_config", {})
        kwargs = config.get("kwargs", {})
        result = item.get("result") or {}
        exception = _exception_message(item.get("exception_info"))
        failures.append(
            {
                "expectation": config.get("type"),
                "column": kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_set"),
                "unexpected_count": result.get("unexpected_count"),
                "element_count": result.get("element_count"),
                "sample": [_plain(v) for v in (result.get("partial_unexpected_list") or [])[:SAMPLE_VALUES]],
                "observed": _plain(result.get("observed_value")),
                "error": exception,
            }
        )
    return failures


def _exception_message(info: Any) -> str | None:
    """The message of a result's exception: GX keeps it flat, or per metric that raised."""
    if not isinstance(info, dict):
        return None
    if info.get("exception_message"):
        return str(info["exception_message"])
    return next((m for m in map(_exception_message, info.values()) if m), None)


def _plain(value: Any) -> Any:
    """JSON-safe: NaN becomes the string 'NaN'; long lists are cut."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, list):
        return [_plain(v) for v in value[:10]]
    return value


def describe_failure(failure: dict[str, Any]) -> str:
    """One line for the log and the report."""
    where = f" on column {failure['column']!r}" if failure.get("column") else ""
    if failure.get("error"):
        return f"{failure['expectation']}{where}: could not run ({failure['error'][:160]})"
    if failure.get("unexpected_count") is not None:
        return (
            f"{failure['expectation']}{where}: {failure['unexpected_count']} of {failure['element_count']} rows "
            f"unexpected, e.g. {failure['sample']}"
        )
    return f"{failure['expectation']}{where}: observed {failure.get('observed')}"


@dataclass
class DatasetReport:
    """Everything checked on one data set."""

    name: str
    rows: int
    schema_changes: list[str]
    failed_expectations: list[dict[str, Any]]
    expectations_evaluated: int
    drift: list[dict[str, Any]]
    gx_result: dict[str, Any] = field(repr=False)

    @property
    def drifted(self) -> list[dict[str, Any]]:
        return [d for d in self.drift if d["drifted"]]

    @property
    def passed(self) -> bool:
        return not (self.schema_changes or self.failed_expectations or self.drifted)

    def problems(self) -> list[str]:
        """Sentences naming each problem, for the log, the record and the exception."""
        lines = [f"{self.name}: schema change: {c}" for c in self.schema_changes]
        lines += [f"{self.name}: {describe_failure(f)}" for f in self.failed_expectations]
        lines += [
            f"{self.name}: feature {d['feature']!r} drifted ({d['test']} = {d['statistic']:.3f} > {d['threshold']})"
            for d in self.drifted
        ]
        return lines

    def summary(self) -> dict[str, Any]:
        """Small JSON for XCom and the record (the full GX result is saved separately)."""
        return {
            "name": self.name,
            "rows": self.rows,
            "passed": self.passed,
            "schema_changes": self.schema_changes,
            "expectations_evaluated": self.expectations_evaluated,
            "failed_expectations": self.failed_expectations,
            "drift": self.drift,
        }


def validate_dataset(
    name: str, data: Path | pd.DataFrame, reference: ReferenceSummary | Path | pd.DataFrame, suite: dict[str, Any],
    config: ValidationSpec, *, categorical: list[str], chunk_rows: int = CHUNK_ROWS, workdir: Path | None = None,
    fmt: str | None = None,
) -> DatasetReport:
    """Run the suite, the schema check and the drift check on one data set, batch by batch.

    :param name: the data set's name in messages (``train.csv``).
    :param data: a CSV or Parquet file, or a frame; read in batches of at most ``chunk_rows`` rows.
    :param reference: the reference's summary (:func:`summarize_reference`), or the reference file or frame.
    :param suite: GX 1.x suite JSON.
    :param config: the spec's ``validation`` section (drift thresholds and exclusions).
    :param categorical: the features tested with PSI.
    :param chunk_rows: most rows per batch.
    :param workdir: where scratch files (uniqueness counts) go; the system's temporary directory if None.
    :param fmt: the data file's format, ``csv`` or ``parquet`` (as its record names it); None: by its suffix.
    """
    from model_delivery.validation.suite import BatchedSuite

    if not isinstance(reference, ReferenceSummary):
        reference = summarize_reference(reference, "reference data", categorical=categorical,
                                        exclude=config.drift.exclude, chunk_rows=chunk_rows)
    kinds, drift = ColumnKinds(), DriftCounts(reference)
    with BatchedSuite(suite, name=name, workdir=workdir) as gx_run:
        for batch in table_batches(data, name, chunk_rows=chunk_rows, fmt=fmt):
            gx_run.add(batch)
            kinds.add(batch)
            drift.add(batch)
        gx_result = gx_run.result()
    found = drift.report(ks_max=config.drift.ks_max, psi_max=config.drift.psi_max, per_feature=config.drift.per_feature)
    return DatasetReport(
        name=name,
        rows=gx_run.rows,
        schema_changes=compare_schemas(kinds, reference.kinds),
        failed_expectations=failed_expectations(gx_result),
        expectations_evaluated=len(gx_result.get("results", [])),
        drift=[d.to_dict() for d in found],
        gx_result=gx_result,
    )
