"""K-nearest-neighbour regression of pod power on a log scale, with intervals and a trust radius.

Log scale because pod power spans orders of magnitude (a sidecar at 0.1 W, a GPU job at
300 W) and errors are multiplicative. Distance weighting lets an exact spec match dominate.
The trust radius is learned from the training set itself: a query farther from every
training pod than almost any training pod is from its own nearest neighbour is outside
what the data covers, and the caller falls back to the prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors
from sklearn.utils.validation import check_is_fitted


TRUST_SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class NeighbourPrediction:
    power_watts: np.ndarray
    power_watts_p10: np.ndarray
    power_watts_p90: np.ndarray
    nearest_distance: np.ndarray


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    order = np.argsort(values, axis=1)
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    cumulative = np.cumsum(w, axis=1) - 0.5 * w
    cumulative /= w.sum(axis=1, keepdims=True)
    return np.array([np.interp(q, cumulative[i], v[i]) for i in range(v.shape[0])])


class LogPowerKNN(RegressorMixin, BaseEstimator):
    """Fit on power in W (must be > 0); predict W.

    ``interval_log_offsets_`` (set by :meth:`calibrate`, e.g. split-conformal residual
    quantiles) turn the point prediction into p10/p90; uncalibrated, the interval is the
    weighted 10th/90th percentile of the neighbours' powers.
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        algorithm: str = "auto",
        trust_quantile: float = 0.99,
        trust_factor: float = 2.0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.trust_quantile = trust_quantile
        self.trust_factor = trust_factor

    def fit(self, X: Any, y: Any) -> "LogPowerKNN":
        X = np.asarray(X, dtype=np.float32)
        power = np.asarray(y, dtype=np.float64).ravel()
        if X.shape[0] != power.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {power.shape[0]}")
        if X.shape[0] == 0:
            raise ValueError("LogPowerKNN.fit needs at least one training row")
        if not np.all(np.isfinite(power)) or np.any(power <= 0):
            raise ValueError("power_watts targets must be finite and > 0 W")
        self.n_neighbors_ = min(self.n_neighbors, X.shape[0])
        self.neighbors_ = KNeighborsRegressor(
            n_neighbors=self.n_neighbors_, weights="distance", algorithm=self.algorithm
        ).fit(X, np.log(power))
        self.log_power_ = np.log(power)
        # Distances between distinct specs: pods of one workload share a feature vector, and
        # counting those twins would shrink the radius to 0 and send every query to the prior.
        distinct = np.unique(X, axis=0)
        if distinct.shape[0] >= 2:
            index = NearestNeighbors(n_neighbors=2, algorithm=self.algorithm).fit(distinct)
            # A seeded sample estimates the quantile well and keeps fitting linear in the rows:
            # querying every row of a 1M-row set took about an hour (bench/README.md).
            queries = distinct
            if distinct.shape[0] > TRUST_SAMPLE_ROWS:
                chosen = np.random.default_rng(0).choice(distinct.shape[0], TRUST_SAMPLE_ROWS, replace=False)
                queries = distinct[chosen]
            distances, _ = index.kneighbors(queries)
            # Column 0 is the spec itself: column 1 is its nearest other spec.
            self.trust_radius_ = float(np.quantile(distances[:, 1], self.trust_quantile) * self.trust_factor)
        else:
            self.trust_radius_ = float("inf")
        self.interval_log_offsets_: tuple[float, float] | None = None
        self.n_features_in_ = X.shape[1]
        return self

    def calibrate(self, log_offset_p10: float, log_offset_p90: float) -> "LogPowerKNN":
        if not log_offset_p10 <= 0 <= log_offset_p90:
            raise ValueError("interval offsets must bracket the point prediction (p10 <= 0 <= p90)")
        self.interval_log_offsets_ = (float(log_offset_p10), float(log_offset_p90))
        return self

    def predict_detail(self, X: Any) -> NeighbourPrediction:
        check_is_fitted(self, "neighbors_")
        X = np.asarray(X, dtype=np.float32)
        distances, indices = self.neighbors_.kneighbors(X)
        neighbour_log_power = self.log_power_[indices]
        exact = distances <= 1e-12
        # Same rule as scikit-learn's distance weighting: exact matches take all the weight.
        weights = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), 1.0 / np.maximum(distances, 1e-12))
        point = (weights * neighbour_log_power).sum(axis=1) / weights.sum(axis=1)
        if self.interval_log_offsets_ is not None:
            low = point + self.interval_log_offsets_[0]
            high = point + self.interval_log_offsets_[1]
        else:
            low = np.minimum(_weighted_quantile(neighbour_log_power, weights, 0.1), point)
            high = np.maximum(_weighted_quantile(neighbour_log_power, weights, 0.9), point)
        return NeighbourPrediction(np.exp(point), np.exp(low), np.exp(high), distances[:, 0])

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_detail(X).power_watts
