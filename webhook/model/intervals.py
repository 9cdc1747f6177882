"""Split-conformal p10/p90: offsets on log power from residuals the model did not train on.

The residuals r = log(measured) - log(predicted) come from models that did not see the residual's
group (`webhook.model.knn.AnchoredKNN` computes them on grouped folds inside `fit`). With n
residuals sorted ascending, p90's offset is the ceil((n+1)*0.9)-th and p10's the
floor((n+1)*0.1)-th: the finite-sample correction that makes each one-sided bound hold with
probability >= 0.9 for an exchangeable new residual. With fewer than 9 residuals a rank falls
outside 1..n; the extreme residual is used and `finite_sample_guarantee` says it does not hold.
Residuals out of cross-validation (CV+ style) rather than one held-out split use all the data; the
guarantee is then approximate, and exchangeable means "a new workload like the training ones".

Groups weigh alike. The residuals of one held-out group come from one fold's model and share
their spec family, so they are not independent draws: pooled row by row, a group with half the
rows (ML.ENERGY's qwen family, 497 of 897) sets the offsets for every other group. The unit a
new workload is exchangeable with is the group, so each group's residuals together weigh the
same ("pooling CDFs" over groups, Dunn, Wasserman and Ramdas, Distribution-free prediction sets
for two-layer hierarchical models, JASA 2022), and the ranks above become weighted ranks: with
weights w summing to 1 and a new residual weighing 1/n, p90 is the smallest residual whose
cumulative weight reaches 0.9 * (1 + 1/n) (uniform weights give exactly the ranks above).

A Job template's runs are the exception (`trainer.run_fit`): its groups are templates, but what
a user counts is runs (a CronJob every 10 minutes is most of a namespace's runs), and there
each run weighs the same.

`grouped_conformal_offsets` is the one loop that produces the residuals for every model here:
the caller refits whatever must not see the held-out groups (the whole Pipeline, so a text
vocabulary never knows a held-out family's words) and returns their log residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

INTERVAL_QUANTILES = (0.1, 0.9)
# Held-out rows whose residuals calibrate p10/p90 per fold, at most: a seeded sample keeps a fit
# linear in its rows (1M rows: 2,000 predictions a fold).
INTERVAL_SAMPLE_ROWS = 2000
# Cumulative weights are sums of floats: ranks that are exact integers must not flip on rounding.
_RANK_TOLERANCE = 1e-9


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


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Per row, 1 / (rows of its group): every group's rows together weigh 1."""
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def conformal_offsets(log_residuals: np.ndarray, quantiles: tuple[float, float] = INTERVAL_QUANTILES,
                      weights: np.ndarray | None = None) -> ConformalOffsets:
    """p10/p90 offsets from residuals; `weights` (default: all alike) make the ranks weighted."""
    residuals = np.asarray(log_residuals, dtype=np.float64)
    n = len(residuals)
    if n == 0:
        raise ValueError("conformal offsets need at least one residual")
    row_weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if row_weights.shape != (n,) or not np.all(np.isfinite(row_weights)) or np.any(row_weights <= 0):
        raise ValueError(f"weights must be {n} finite positive numbers, one per residual")
    order = np.argsort(residuals, kind="stable")
    residuals = residuals[order]
    cumulative = np.cumsum(row_weights[order])
    cumulative /= cumulative[-1]
    low, high = quantiles
    inflation = 1.0 + 1.0 / n  # the new residual's own weight
    # 1-based: p10 the largest rank whose cumulative weight stays within low * inflation, p90 the
    # smallest that reaches high * inflation; out of 1..n when the residuals are too few.
    rank_low = int(np.searchsorted(cumulative, low * inflation + _RANK_TOLERANCE, side="right"))
    rank_high = int(np.searchsorted(cumulative, high * inflation - _RANK_TOLERANCE, side="left")) + 1
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


FoldResiduals = Callable[[np.ndarray, np.ndarray], np.ndarray]


def grouped_conformal_offsets(groups: np.ndarray, fold_residuals: FoldResiduals, *, folds: int = 5,
                              quantiles: tuple[float, float] = INTERVAL_QUANTILES,
                              sample_rows: int = INTERVAL_SAMPLE_ROWS,
                              groups_weigh_alike: bool = True) -> ConformalOffsets | None:
    """Offsets from out-of-fold residuals over `folds` folds grouped by `groups`.

    `fold_residuals(train_index, test_index)` fits on the training rows and returns the log
    residuals (log measured - log predicted) of the test rows. Groups weigh alike unless
    `groups_weigh_alike` is False (then every row weighs the same). None with fewer than two
    groups or folds: there is nothing held out to calibrate on."""
    groups = np.asarray(groups)
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        return None
    per_fold = -(-sample_rows // folds)
    sampler = np.random.default_rng(0)
    tested: list[np.ndarray] = []
    residuals: list[np.ndarray] = []
    for train_index, test_index in GroupKFold(n_splits=folds).split(groups, groups=groups):
        if len(test_index) > per_fold:
            test_index = np.sort(sampler.choice(test_index, per_fold, replace=False))
        residuals.append(np.asarray(fold_residuals(train_index, test_index), dtype=np.float64))
        tested.append(test_index)
    # Weighted by the groups' sizes among the rows calibrated on (after sampling).
    weights = group_balanced_weights(groups[np.concatenate(tested)]) if groups_weigh_alike else None
    return conformal_offsets(np.concatenate(residuals), quantiles, weights)
