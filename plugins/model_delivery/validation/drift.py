"""Schema and drift checks of a data set against reference data, in bounded memory.

Schema: a missing or extra column, or a column whose kind changed (numeric, string,
boolean, datetime), is a schema change. Integer and float are the same kind: a column
that gains a missing value becomes float, and a NaN check (Great Expectations) is the
right tool for that. Read in batches, a column's kind is the one of the batches where it
has values; batches that disagree (numbers in one, text in another) make it a string
column, as pandas does when it reads the whole file.

Drift, per feature: the two-sample Kolmogorov-Smirnov statistic for numeric features
and the Population Stability Index for categorical ones, each compared with the spec's
threshold. Every feature's statistic and threshold is reported, drifted or not.

The data is never held whole. :class:`ColumnKinds` keeps the columns and kinds,
:class:`ReferenceSummary` the reference's numeric values (all of them, or a seeded sample
of :data:`REFERENCE_SAMPLE` when there are more) and category counts, and
:class:`DriftCounts` counts the data against them batch by batch. KS is then exact against
the values the summary holds, and PSI is exact while a column has at most
:data:`CATEGORY_LIMIT` categories besides the reference's. The functions on whole frames
(:func:`schema_changes`, :func:`drift_report`, :func:`ks_statistic`, :func:`psi`) are the
definition the summaries reproduce; docs/validation.md says what is exact and what is not.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import numpy as np
    import pandas as pd

PSI_EPSILON = 1e-4
REFERENCE_SAMPLE = 100_000
"""Reference values per numeric column kept for KS: all of them when there are fewer, else a seeded uniform sample."""
SAMPLE_SEED = 0
CATEGORY_LIMIT = 10_000
"""Categories per column counted one by one besides the reference's; rarer ones beyond it are counted together."""
KS_CONFIDENCE = 0.999
MISSING = "<missing>"
OTHER = "<other categories>"


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


@dataclass
class ColumnKinds:
    """The columns of a table and the kind of each, over every batch.

    A batch where a column has no value says nothing about its kind (an empty text column
    reads as float); the first batch's dtype stands for a column that never has one.
    """

    columns: list[str] = field(default_factory=list)
    _first: dict[str, tuple[str, str]] = field(default_factory=dict)
    _seen: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, frame: pd.DataFrame) -> None:
        if not self._first:
            self.columns = [str(col) for col in frame.columns]
            self._first = {str(col): (kind(frame[col].dtype), str(frame[col].dtype)) for col in frame.columns}
        for col in frame.columns:
            series = frame[col]
            if series.notna().any():
                self._seen.setdefault(str(col), {}).setdefault(kind(series.dtype), str(series.dtype))

    def of(self, column: str) -> tuple[str, str]:
        """The column's kind and dtype name; ``string`` with every dtype named when batches disagree."""
        seen = self._seen.get(column)
        if not seen:
            return self._first[column]
        if len(seen) == 1:
            return next(iter(seen.items()))
        return "string", "mixed " + "/".join(sorted(seen.values()))

    @classmethod
    def of_frame(cls, frame: pd.DataFrame) -> ColumnKinds:
        kinds = cls()
        kinds.add(frame)
        return kinds


def compare_schemas(data: ColumnKinds, reference: ColumnKinds) -> list[str]:
    """Every difference in columns and column kinds, as sentences that name the column."""
    changes = []
    ref_cols, cols = reference.columns, data.columns
    for col in ref_cols:
        if col not in cols:
            changes.append(f"column {col!r} is missing (the reference data has it)")
    for col in cols:
        if col not in ref_cols:
            changes.append(f"column {col!r} is extra (the reference data does not have it)")
    for col in ref_cols:
        if col not in cols:
            continue
        (data_kind, data_dtype), (ref_kind, ref_dtype) = data.of(col), reference.of(col)
        if data_kind != ref_kind:
            changes.append(f"column {col!r} changed type: {data_kind} ({data_dtype}), reference is {ref_kind} ({ref_dtype})")
    return changes


def schema_changes(frame: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Every difference in columns and column kinds between two whole frames."""
    return compare_schemas(ColumnKinds.of_frame(frame), ColumnKinds.of_frame(reference))


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


def categories(series: pd.Series) -> pd.Series:
    """Each value as the category PSI counts: its text, missing values as ``<missing>``.

    A whole float is written as an integer, so that ``1`` and ``1.0`` are one category
    whether or not a missing value made its batch float.
    """
    import numpy as np

    text = series.astype("string")
    if getattr(series.dtype, "kind", "O") == "f":
        values = series.to_numpy()
        whole = np.isfinite(values) & (np.abs(values) < 2.0**63)
        whole[whole] = np.floor(values[whole]) == values[whole]
        if whole.any():
            text[whole] = values[whole].astype("int64").astype(str)
    return text.fillna(MISSING)


@dataclass
class CategoryCounts:
    """How often each category occurs in a column; past ``limit`` categories, new ones are counted together."""

    counts: dict[str, int] = field(default_factory=dict)
    limit: int | None = None
    other: int = 0
    total: int = 0

    def add(self, series: pd.Series) -> None:
        for category, count in categories(series).value_counts(sort=False).items():
            if category in self.counts or self.limit is None or len(self.counts) < self.limit:
                self.counts[str(category)] = self.counts.get(str(category), 0) + int(count)
            else:
                self.other += int(count)
        self.total += len(series)

    def with_other(self) -> dict[str, int]:
        return {**self.counts, OTHER: self.other} if self.other else self.counts


def _psi(sample: dict[str, int], sample_total: int, reference: dict[str, int], reference_total: int) -> float:
    total = 0.0
    for category in sorted(set(sample) | set(reference)):
        p = max(sample.get(category, 0) / sample_total if sample_total else 0.0, PSI_EPSILON)
        q = max(reference.get(category, 0) / reference_total if reference_total else 0.0, PSI_EPSILON)
        total += (p - q) * math.log(p / q)
    return total


def psi(sample: Sequence[Any] | Any, reference: Sequence[Any] | Any) -> float:
    """Population Stability Index over the categories of both sets (missing values are a category)."""
    import pandas as pd

    a, b = CategoryCounts(), CategoryCounts()
    a.add(pd.Series(sample))
    b.add(pd.Series(reference))
    return _psi(a.counts, a.total, b.counts, b.total)


def _lumped_excess(share: float) -> float:
    """The most that counting categories of total ``share`` together (none in the reference) adds to PSI."""
    p = max(share, PSI_EPSILON)
    return (p - PSI_EPSILON) * math.log(p / PSI_EPSILON)


def psi_of_counts(sample: CategoryCounts, reference: CategoryCounts) -> tuple[float, str | None]:
    """PSI from streamed counts, and a note when it is not exact."""
    value = _psi(sample.with_other(), sample.total, reference.with_other(), reference.total)
    if reference.other:
        return value, (f"the reference has more than {reference.limit:,} categories; the rarer ones are counted "
                       "together, so this PSI is approximate (either way). Fix: exclude the column from drift.")
    if sample.other:
        excess = _lumped_excess(sample.other / sample.total)
        extra = (sample.limit or 0) - len(reference.counts)
        return value, (f"more than {extra:,} categories besides the reference's: {sample.other:,} values of "
                       f"rarer ones counted together, so this PSI is an upper bound, at most {excess:.3g} above "
                       "the exact value.")
    return value, None


@dataclass
class NumericReference:
    """The reference values of a numeric column that KS is computed against.

    :param points: the distinct values, sorted.
    :param cumulative: how many values are at most each point.
    :param size: how many values the summary holds.
    :param total: how many non-missing values the reference has (more than ``size`` when sampled).
    """

    points: np.ndarray
    cumulative: np.ndarray
    size: int
    total: int

    @property
    def sampled(self) -> bool:
        return self.size < self.total

    def ks_error(self) -> float:
        """Half-width of the interval that holds the exact KS with probability KS_CONFIDENCE (DKW inequality)."""
        return 0.0 if not self.sampled else math.sqrt(math.log(2 / (1 - KS_CONFIDENCE)) / (2 * self.size))


class Reservoir:
    """A uniform sample of at most ``capacity`` values of a stream (algorithm R), seeded.

    The sample depends on the values and their order only, not on how they are batched.
    """

    def __init__(self, capacity: int, seed: Sequence[int]) -> None:
        import numpy as np

        self.capacity = capacity
        self.seen = 0
        self._rng = np.random.default_rng(list(seed))
        self._parts: list[np.ndarray] = []
        self._filled = 0
        self._sample: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        import numpy as np

        if self._sample is None:
            room = self.capacity - self._filled
            self._parts.append(values[:room])
            self._filled += min(room, len(values))
            self.seen += min(room, len(values))
            values = values[room:]
            if self._filled < self.capacity:
                return
            self._sample = np.concatenate(self._parts)
            self._parts = []
        if not len(values):
            return
        slots = self._rng.integers(0, np.arange(self.seen, self.seen + len(values)) + 1)
        taken = slots < self.capacity
        slots, kept = slots[taken], values[taken]
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]  # a slot drawn twice keeps the later value
        self._sample[slots[last]] = kept[last]
        self.seen += len(values)

    def values(self) -> np.ndarray:
        import numpy as np

        return self._sample if self._sample is not None else np.concatenate([np.empty(0), *self._parts])


def numeric_values(series: pd.Series) -> np.ndarray:
    """A numeric column's non-missing values as float64."""
    import numpy as np

    values = series.to_numpy(dtype="float64", na_value=np.nan)
    return values[~np.isnan(values)]


@dataclass
class ReferenceSummary:
    """What drift and schema are checked against: the reference's kinds, numeric values and category counts."""

    kinds: ColumnKinds
    rows: int
    numeric: dict[str, NumericReference]
    categorical: dict[str, CategoryCounts]
    category_limit: int = CATEGORY_LIMIT

    @classmethod
    def build(cls, batches: Callable[[], Iterable[pd.DataFrame]], *, categorical: Sequence[str],
              exclude: Sequence[str] = (), sample_size: int = REFERENCE_SAMPLE, category_limit: int = CATEGORY_LIMIT,
              ) -> ReferenceSummary:
        """Read the reference twice: once for the kinds, once for the values of each kind of feature.

        :param batches: returns a fresh iterator over the reference's batches.
        :param categorical: the features tested with PSI (besides those that are not numeric).
        :param exclude: the features not tested.
        :param sample_size: reference values per numeric feature kept for KS.
        :param category_limit: categories per feature counted one by one, in the reference and besides them in the data.
        """
        import numpy as np

        kinds, rows = ColumnKinds(), 0
        for batch in batches():
            kinds.add(batch)
            rows += len(batch)
        numeric_cols = [c for c in kinds.columns if c not in exclude and c not in categorical
                        and kinds.of(c)[0] == "numeric"]
        category_cols = [c for c in kinds.columns if c not in exclude and c not in numeric_cols]
        samples = {c: Reservoir(sample_size, (SAMPLE_SEED, zlib.crc32(c.encode()))) for c in numeric_cols}
        counts = {c: CategoryCounts(limit=category_limit) for c in category_cols}
        for batch in batches():
            for col, sample in samples.items():
                sample.add(numeric_values(batch[col]))
            for col, count in counts.items():
                count.add(batch[col])
        numeric = {}
        for col, sample in samples.items():
            points, how_many = np.unique(sample.values(), return_counts=True)
            numeric[col] = NumericReference(points, np.cumsum(how_many), int(how_many.sum()), sample.seen)
        return cls(kinds, rows, numeric, counts, category_limit)


class KsCounts:
    """Counts of a data column's values at and between the reference's points: KS without keeping the values."""

    def __init__(self, reference: NumericReference) -> None:
        import numpy as np

        self.reference = reference
        self.at = np.zeros(len(reference.points), dtype="int64")
        self.between = np.zeros(len(reference.points) + 1, dtype="int64")  # [i]: above point i-1, below point i
        self.size = 0

    def add(self, values: np.ndarray) -> None:
        import numpy as np

        points = self.reference.points
        where = np.searchsorted(points, values, side="left")
        hit = where < len(points)
        hit[hit] = points[where[hit]] == values[hit]
        self.at += np.bincount(where[hit], minlength=len(points))
        self.between += np.bincount(where[~hit], minlength=len(points) + 1)
        self.size += len(values)

    def statistic(self) -> tuple[float, float]:
        """KS statistic and asymptotic p-value: the numbers ``scipy.stats.ks_2samp`` gives on the values themselves.

        The largest gap between the two empirical CDFs is at a reference point, or just below
        one where data values lie between it and the previous point; counts at and between
        points give the data's CDF at both, with the same divisions ks_2samp makes.
        """
        import numpy as np
        from scipy.stats import kstwo

        n1, n2 = self.size, self.reference.size
        if n1 == 0 or n2 == 0:
            return (1.0, 0.0) if n1 != n2 else (0.0, 1.0)
        upto = np.cumsum(self.between[:-1] + self.at)
        below = upto - self.at
        cumulative = self.reference.cumulative
        previous = np.concatenate(([0], cumulative[:-1]))
        gaps = np.concatenate((upto / n1 - cumulative / n2, (below / n1 - previous / n2)[self.between[:-1] > 0], [0.0]))
        max_s, min_s = float(gaps.max()), float(np.clip(-gaps.min(), 0, 1))
        d = min_s if min_s > max_s else max_s
        m, n = sorted([float(n1), float(n2)], reverse=True)
        p_value = float(np.clip(kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))
        return d, p_value


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift test; ``note`` says how it is approximate, when it is."""

    feature: str
    test: str
    statistic: float
    threshold: float
    drifted: bool
    p_value: float | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        if found["note"] is None:
            del found["note"]
        return found


class DriftCounts:
    """A data set's counts against a reference summary, batch by batch."""

    def __init__(self, reference: ReferenceSummary) -> None:
        self.reference = reference
        self.columns: list[str] | None = None
        self._ks = {col: KsCounts(ref) for col, ref in reference.numeric.items()}
        self._psi = {col: CategoryCounts(dict.fromkeys(ref.counts, 0), limit=len(ref.counts) + reference.category_limit)
                     for col, ref in reference.categorical.items()}
        self._not_numeric: set[str] = set()

    def add(self, frame: pd.DataFrame) -> None:
        if self.columns is None:
            self.columns = [str(col) for col in frame.columns]
        for col, counts in self._ks.items():
            if col not in frame.columns or col in self._not_numeric:
                continue
            series = frame[col]
            if kind(series.dtype) == "numeric":
                counts.add(numeric_values(series))
            elif series.notna().any():
                self._not_numeric.add(col)  # reported as a schema change
        for col, category_counts in self._psi.items():
            if col in frame.columns:
                category_counts.add(frame[col])

    def report(self, *, ks_max: float, psi_max: float, per_feature: dict[str, float] | None = None
               ) -> list[FeatureDrift]:
        """Every shared feature's test, in the reference's column order; ``per_feature`` overrides a threshold."""
        per_feature = per_feature or {}
        results = []
        for col in self.reference.kinds.columns:
            if col not in (self.columns or []):
                continue
            if col in self._psi:
                threshold = per_feature.get(col, psi_max)
                value, note = psi_of_counts(self._psi[col], self.reference.categorical[col])
                results.append(FeatureDrift(col, "psi", value, threshold, value > threshold, note=note))
            elif col in self._ks and col not in self._not_numeric:
                threshold = per_feature.get(col, ks_max)
                stat, p_value = self._ks[col].statistic()
                ref = self.reference.numeric[col]
                note = (f"KS against a seeded sample of {ref.size:,} of the reference's {ref.total:,} values: within "
                        f"{ref.ks_error():.4f} of the exact value with probability {KS_CONFIDENCE}") if ref.sampled else None
                results.append(FeatureDrift(col, "ks", stat, threshold, stat > threshold, p_value, note))
        return results


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
    """Test every shared column of two whole frames for drift; ``per_feature`` overrides a feature's threshold."""
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
