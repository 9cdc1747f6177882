"""Split-conformal p10/p90: offsets on log power from residuals the model did not train on.

The residuals r = log(measured) - log(predicted) come from models that did not see the residual's
group (`webhook.model.knn.AnchoredKNN` computes them on grouped folds inside `fit`). With n
residuals sorted ascending, p90's offset is the ceil((n+1)*0.9)-th and p10's the
floor((n+1)*0.1)-th: the finite-sample correction that makes each one-sided bound hold with
probability >= 0.9 for an exchangeable new residual. With fewer than 9 residuals a rank falls
outside 1..n; the extreme residual is used and `finite_sample_guarantee` says it does not hold.
Residuals out of cross-validation (CV+ style) rather than one held-out split use all the data; the
guarantee is then approximate, and exchangeable means "a new workload like the training ones".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

INTERVAL_QUANTILES = (0.1, 0.9)


@dataclass(frozen=True)
class ConformalOffsets:
    """Log-power offsets of p10 and p90 from the point prediction."""

    log_offset_p10: float
    log_offset_p90: float
    residuals: int
    rank_p10: int  # 1-based order statistic used (clipped into 1..n)
    rank_p90: int
    finite_sample_guarantee: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conformal_offsets(log_residuals: np.ndarray, quantiles: tuple[float, float] = INTERVAL_QUANTILES) -> ConformalOffsets:
    residuals = np.sort(np.asarray(log_residuals, dtype=np.float64))
    n = len(residuals)
    if n == 0:
        raise ValueError("conformal offsets need at least one residual")
    low, high = quantiles
    rank_low = math.floor((n + 1) * low)
    rank_high = math.ceil((n + 1) * high)
    exact = 1 <= rank_low and rank_high <= n
    rank_low, rank_high = min(max(rank_low, 1), n), min(max(rank_high, 1), n)
    # The interval must bracket the point prediction.
    return ConformalOffsets(
        log_offset_p10=min(float(residuals[rank_low - 1]), 0.0),
        log_offset_p90=max(float(residuals[rank_high - 1]), 0.0),
        residuals=n,
        rank_p10=rank_low,
        rank_p90=rank_high,
        finite_sample_guarantee=exact,
    )
