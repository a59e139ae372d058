"""Drift of served features against the training data: PSI, with a KS or chi-squared test.

Pure arithmetic: no Flask, no database. :class:`Reference` bins the training
features once; :meth:`Reference.compare` measures a window of served features
against it. Every feature gets a population stability index (PSI) over the
same bins, read in bands (below 0.1 stable, 0.1 to 0.25 moderate, above 0.25
drift), and a test: two-sample Kolmogorov-Smirnov for numeric features,
chi-squared on the category counts for categorical ones. A window with fewer
rows than the minimum gets no numbers at all, because on a handful of rows
both measures are noise.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

#: Share given to an empty bin, so that PSI stays finite (ln of 0 is not).
EPSILON = 1e-4
#: PSI bands: below STABLE_BELOW stable, up to DRIFT_ABOVE moderate, above it drift.
STABLE_BELOW = 0.1
DRIFT_ABOVE = 0.25
#: Numeric features are binned at the training data's deciles.
QUANTILE_BINS = 10
#: The bin (numeric) or category (categorical) of a missing value.
MISSING = "missing"


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, *, epsilon: float = EPSILON
) -> float:
    """Population stability index of two count (or share) vectors over the same bins.

    sum((a - e) * ln(a / e)) over the bins' shares, an empty bin counting as
    ``epsilon``; 0 for identical distributions, and it grows without sign.

    :raise ValueError: the vectors differ in length, are empty, or one has no counts.
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.ndim != 1 or e.shape != a.shape or e.size == 0:
        raise ValueError(f"PSI needs two count vectors of one length, got shapes {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any():
        raise ValueError("PSI counts must not be negative")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs at least one count on each side")
    p = np.maximum(e / e.sum(), epsilon)
    q = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def band(value: float) -> str:
    """The PSI band of a value: "stable", "moderate" or "drift"."""
    if value < STABLE_BELOW:
        return "stable"
    if value <= DRIFT_ABOVE:
        return "moderate"
    return "drift"


def _numbers(values: Iterable[Any]) -> np.ndarray:
    """Numeric values as a float array; None (missing) becomes NaN."""
    # numpy converts None to NaN for a float array, in C: tens of thousands of rows per call.
    return np.asarray(values if isinstance(values, Sequence | np.ndarray) else list(values), dtype=float)


def _category(value: Any) -> str:
    return MISSING if value is None else str(value)


def _numeric_bins(edges: Sequence[float], array: np.ndarray) -> np.ndarray:
    missing = np.isnan(array)
    index = np.searchsorted(np.asarray(edges), array[~missing], side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return np.append(counts, int(missing.sum()))


def _format_edge(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Bin:
    """One bin of a feature: its label and the share of each side in it."""

    label: str
    reference: float
    current: float


@dataclass(frozen=True)
class NumericReference:
    """A numeric training feature: decile edges, counts per bin (the last bin is missing), sorted values."""

    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    values: np.ndarray

    kind = "numeric"
    test = "KS"

    @classmethod
    def from_values(cls, name: str, values: Iterable[Any], *, bins: int = QUANTILE_BINS) -> NumericReference:
        """Bin the training values: at their deciles, or at each value when there are few distinct ones."""
        array = _numbers(values)
        present = np.sort(array[~np.isnan(array)])
        if present.size == 0:
            raise ValueError(f"feature {name} has no values in the training data")
        distinct = np.unique(present)
        if distinct.size <= 2 * bins:
            # A discrete feature (class, head counts): a bin per value, so a shift
            # among the rarer values is not hidden in a shared decile.
            edges = tuple(float(e) for e in distinct)
        else:
            edges = tuple(float(e) for e in np.unique(np.quantile(present, np.arange(1, bins) / bins)))
        return cls(name, edges, tuple(int(c) for c in _numeric_bins(edges, array)), present)

    def bin_counts(self, array: np.ndarray) -> np.ndarray:
        """Counts per bin: below the first edge, between edges, from the last edge up, then missing."""
        return _numeric_bins(self.edges, array)

    def labels(self) -> list[str]:
        """A label per bin, in :meth:`bin_counts` order."""
        edges = [_format_edge(e) for e in self.edges]
        inner = [f"{low} to <{high}" for low, high in itertools.pairwise(edges)]
        return [f"<{edges[0]}", *inner, f"≥{edges[-1]}", MISSING]

    def compare(self, values: Sequence[Any]) -> tuple[float, float | None, float | None, list[Bin]]:
        """(PSI, KS statistic, KS p-value, bins) of served values against this reference."""
        array = _numbers(values)
        current = self.bin_counts(array)
        expected = np.asarray(self.counts, dtype=float)
        present = array[~np.isnan(array)]
        statistic = p_value = None
        if present.size:
            # The asymptotic distribution: exact p-values cost O(n*m) at tens of thousands of rows.
            result = stats.ks_2samp(self.values, present, method="asymp")
            statistic, p_value = float(result.statistic), float(result.pvalue)
        shares = _bins(self.labels(), expected, current)
        return psi(expected, current), statistic, p_value, shares


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical training feature: the count of each category (missing counted as MISSING)."""

    name: str
    counts: Mapping[str, int]

    kind = "categorical"
    test = "chi-squared"

    @classmethod
    def from_values(cls, name: str, values: Iterable[Any]) -> CategoricalReference:
        """Count the training categories."""
        counts = Counter(_category(v) for v in values)
        if not counts:
            raise ValueError(f"feature {name} has no values in the training data")
        return cls(name, dict(sorted(counts.items())))

    def compare(self, values: Sequence[Any]) -> tuple[float, float | None, float | None, list[Bin]]:
        """(PSI, chi-squared statistic, p-value, bins) of served categories against this reference."""
        served = Counter(_category(v) for v in values)
        # Categories never seen in training are bins of their own (empty on the reference side).
        categories = list(self.counts) + sorted(set(served) - set(self.counts))
        expected = np.array([self.counts.get(c, 0) for c in categories], dtype=float)
        current = np.array([served.get(c, 0) for c in categories], dtype=float)
        # Homogeneity of the two samples; with one category there is nothing to test (p = 1).
        result = stats.chi2_contingency(np.vstack([expected, current]))
        shares = _bins(categories, expected, current)
        return psi(expected, current), float(result.statistic), float(result.pvalue), shares


def _bins(labels: Sequence[str], expected: np.ndarray, current: np.ndarray) -> list[Bin]:
    e = expected / expected.sum()
    c = current / current.sum()
    return [Bin(label, float(x), float(y)) for label, x, y in zip(labels, e, c, strict=True)]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift in a window; without enough rows every number is None."""

    feature: str
    kind: str  # numeric | categorical
    test: str  # KS | chi-squared
    rows: int
    min_rows: int
    psi: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    bins: tuple[Bin, ...] = ()

    @property
    def enough(self) -> bool:
        """Whether the window had the minimum number of rows to be measured."""
        return self.rows >= self.min_rows

    @property
    def band(self) -> str | None:
        """stable, moderate or drift; None without enough data."""
        return None if self.psi is None else band(self.psi)


@dataclass(frozen=True)
class Reference:
    """The training data's features, binned once, to measure served windows against."""

    features: Mapping[str, NumericReference | CategoricalReference]
    rows: int

    @classmethod
    def from_columns(
        cls, columns: Mapping[str, Sequence[Any]], *, numeric: Sequence[str], categorical: Sequence[str]
    ) -> Reference:
        """Build from training columns (feature name -> values; NaN or None where missing)."""
        built: dict[str, NumericReference | CategoricalReference] = {}
        for name in numeric:
            built[name] = NumericReference.from_values(name, columns[name])
        for name in categorical:
            built[name] = CategoricalReference.from_values(
                name, (None if isinstance(v, float) and math.isnan(v) else v for v in columns[name])
            )
        sizes = {len(columns[name]) for name in built}
        if len(sizes) != 1:
            raise ValueError(f"training columns differ in length: {sorted(sizes)}")
        return cls(built, sizes.pop())

    def compare(self, current: Mapping[str, Sequence[Any]], *, min_rows: int) -> list[FeatureDrift]:
        """Measure every reference feature in a window of served values (feature name -> values).

        A feature absent from ``current`` counts as all missing. Below ``min_rows``
        rows a feature is reported with its row count and no numbers.
        """
        rows = max((len(values) for values in current.values()), default=0)
        out = []
        for name, reference in self.features.items():
            values = current.get(name)
            if values is None:
                values = [None] * rows
            drift = FeatureDrift(name, reference.kind, reference.test, rows=len(values), min_rows=min_rows)
            if drift.enough and len(values) > 0:
                value, statistic, p_value, bins = reference.compare(values)
                drift = FeatureDrift(
                    name,
                    reference.kind,
                    reference.test,
                    rows=len(values),
                    min_rows=min_rows,
                    psi=value,
                    statistic=statistic,
                    p_value=p_value,
                    bins=tuple(bins),
                )
            out.append(drift)
        return out
