"""Schema and drift checks of a data set against reference data.

Schema: a missing or extra column, or a column whose kind changed (numeric, string,
boolean, datetime), is a schema change. Integer and float are the same kind: a column
that gains a missing value becomes float, and a NaN check (Great Expectations) is the
right tool for that.

Drift, per feature: the two-sample Kolmogorov-Smirnov statistic for numeric features
and the Population Stability Index for categorical ones, each compared with the spec's
threshold. Every feature's statistic and threshold is reported, drifted or not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

PSI_EPSILON = 1e-4


def kind(dtype: Any) -> str:
    """The comparable kind of a pandas dtype: numeric, boolean, datetime or string."""
    code = getattr(dtype, "kind", "O")
    if code in "iuf":
        return "numeric"
    if code == "b":
        return "boolean"
    if code in "mM":
        return "datetime"
    return "string"


def schema_changes(frame: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Every difference in columns and column kinds, as sentences that name the column."""
    changes = []
    ref_cols, cols = list(reference.columns), list(frame.columns)
    for col in ref_cols:
        if col not in cols:
            changes.append(f"column {col!r} is missing (the reference data has it)")
    for col in cols:
        if col not in ref_cols:
            changes.append(f"column {col!r} is extra (the reference data does not have it)")
    for col in ref_cols:
        if col in cols and kind(frame[col].dtype) != kind(reference[col].dtype):
            changes.append(
                f"column {col!r} changed type: {kind(frame[col].dtype)} ({frame[col].dtype}), "
                f"reference is {kind(reference[col].dtype)} ({reference[col].dtype})"
            )
    return changes


def ks_statistic(sample: Sequence[float] | Any, reference: Sequence[float] | Any) -> tuple[float, float]:
    """Two-sample KS statistic and p-value, ignoring missing values."""
    import numpy as np
    from scipy.stats import ks_2samp

    a = np.asarray(sample, dtype="float64")
    b = np.asarray(reference, dtype="float64")
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return (1.0, 0.0) if a.size != b.size else (0.0, 1.0)
    result = ks_2samp(a, b, method="asymp")
    return float(result.statistic), float(result.pvalue)


def psi(sample: Sequence[Any] | Any, reference: Sequence[Any] | Any) -> float:
    """Population Stability Index over the categories of both sets (missing values are a category)."""
    import pandas as pd

    a = pd.Series(sample).astype("string").fillna("<missing>").value_counts(normalize=True)
    b = pd.Series(reference).astype("string").fillna("<missing>").value_counts(normalize=True)
    total = 0.0
    for category in set(a.index) | set(b.index):
        p = max(float(a.get(category, 0.0)), PSI_EPSILON)
        q = max(float(b.get(category, 0.0)), PSI_EPSILON)
        total += (p - q) * math.log(p / q)
    return total


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift test."""

    feature: str
    test: str
    statistic: float
    threshold: float
    drifted: bool
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_report(
    frame: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    categorical: Sequence[str],
    ks_max: float,
    psi_max: float,
    per_feature: dict[str, float] | None = None,
    exclude: Sequence[str] = (),
) -> list[FeatureDrift]:
    """Test every shared column for drift; ``per_feature`` overrides a feature's threshold."""
    per_feature = per_feature or {}
    results = []
    for col in reference.columns:
        if col not in frame.columns or col in exclude:
            continue
        is_categorical = col in categorical or kind(reference[col].dtype) != "numeric"
        if is_categorical:
            threshold = per_feature.get(col, psi_max)
            value = psi(frame[col], reference[col])
            results.append(FeatureDrift(col, "psi", value, threshold, value > threshold))
        else:
            if kind(frame[col].dtype) != "numeric":
                continue  # reported as a schema change
            threshold = per_feature.get(col, ks_max)
            stat, p_value = ks_statistic(frame[col].to_numpy(), reference[col].to_numpy())
            results.append(FeatureDrift(col, "ks", stat, threshold, stat > threshold, p_value))
    return results
