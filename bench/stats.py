"""Small statistics shared by the benchmarks: nearest-rank percentiles and a least-squares line
(the soak's slopes of memory, file descriptors and threads over time)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of values sorted ascending, by the nearest rank; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(q / 100 * len(sorted_values))
    return float(sorted_values[min(len(sorted_values), max(1, rank)) - 1])


@dataclass(frozen=True)
class LinearFit:
    """Ordinary least squares y = intercept + slope * x, with the slope's standard error."""

    slope: float
    intercept: float
    slope_standard_error: float  # NaN with fewer than 3 points
    residual_standard_deviation: float
    points: int


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least-squares line through (x, y); NaN slope when x does not vary (or fewer than 2 points)."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"{n} x values but {len(y)} y values")
    if n < 2:
        return LinearFit(math.nan, math.nan, math.nan, math.nan, n)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    sxx = sum((xi - mean_x) ** 2 for xi in x)
    if sxx == 0:
        return LinearFit(math.nan, math.nan, math.nan, math.nan, n)
    slope = sum((xi - mean_x) * (yi - mean_y) for xi, yi in zip(x, y)) / sxx
    intercept = mean_y - slope * mean_x
    squared_residuals = sum((yi - intercept - slope * xi) ** 2 for xi, yi in zip(x, y))
    if n < 3:
        return LinearFit(slope, intercept, math.nan, 0.0, n)
    residual_variance = squared_residuals / (n - 2)
    return LinearFit(slope, intercept, math.sqrt(residual_variance / sxx), math.sqrt(residual_variance), n)
