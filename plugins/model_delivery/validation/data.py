"""Data validation: a Great Expectations 1.x suite, schema and drift against reference data.

GX is used directly with an ephemeral context (the GX Airflow provider does not install
with Airflow 3.3). A suite is GX 1.x JSON (``{"name", "expectations": [{"type", "kwargs"}]}``),
kept in the model folder and named by the spec's ``validation.suite``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import InvalidModelSpec, ReleaseFailed
from model_delivery.validation.drift import drift_report, schema_changes

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from model_delivery.spec import ValidationSpec

SAMPLE_VALUES = 5


class ValidationFailed(ReleaseFailed):
    """The data failed its expectations, its schema changed, or it drifted."""


def read_table(path: Path, name: str) -> pd.DataFrame:
    """Read a CSV table; an empty file or a file that is not a table raises ``ValidationFailed``."""
    import pandas as pd

    if not path.exists() or path.stat().st_size == 0:
        raise ValidationFailed(f"{name}: the file is empty. Fix the build so that it writes the data it used.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed(f"{name}: not a readable CSV table ({type(exc).__name__}: {str(exc)[:200]}).") from None
    if frame.empty:
        raise ValidationFailed(f"{name}: the table has a header but no rows.")
    return frame


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
        exception = (item.get("exception_info") or {}).get("exception_message")
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
    name: str, frame: pd.DataFrame, reference: pd.DataFrame, suite: dict[str, Any], config: ValidationSpec,
    *, categorical: list[str],
) -> DatasetReport:
    """Run the suite, the schema check and the drift check on one data set."""
    gx_result = run_suite(frame, suite, name=name)
    drift = drift_report(
        frame, reference, categorical=categorical, ks_max=config.drift.ks_max, psi_max=config.drift.psi_max,
        per_feature=config.drift.per_feature, exclude=config.drift.exclude,
    )
    return DatasetReport(
        name=name,
        rows=len(frame),
        schema_changes=schema_changes(frame, reference),
        failed_expectations=failed_expectations(gx_result),
        expectations_evaluated=len(gx_result.get("results", [])),
        drift=[d.to_dict() for d in drift],
        gx_result=gx_result,
    )
