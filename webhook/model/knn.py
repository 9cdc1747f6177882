"""K-nearest-neighbour regression of pod power, anchored on physics, with intervals and a trust radius.

`AnchoredKNN` first fits a calibrated prior (`webhook.model.calibration`) on the physics
columns, then regresses, over the other columns, either the correction to it (log measured W -
log calibrated prior W: `target="correction"`) or log power itself (`target="log_power"`). With
the correction, a spec with close neighbours gets their correction and one with none gets the
physics: the model extrapolates where its neighbours are far (a GPU product it never saw still
gets its datasheet power). `n_neighbors=0` is the calibrated prior alone.

With `local_columns` (the encoder's resource columns, `webhook.model.features.LOCAL_REGRESSION_FEATURES`)
the neighbours' answer is moved for the query's own size by a ridge regression fitted among those
neighbours alone (`local_adjustment`), and `unsearched_columns` can leave the numerics out of the
search, so that neighbours are pods of the same kind (words and classes) of any size.
`target="auto"` answers each query from its neighbours' log power and from their correction,
weighted towards whichever they agree on more closely (inverse variance): an idle service's power
ignores its request, a batch pod's follows it as the prior does, and no one anchor is right for both.

Log scale because pod power spans orders of magnitude (a sidecar at 0.1 W, a GPU server at
5 kW) and errors are multiplicative. Distance weighting lets an exact spec match dominate.
The trust radius is learned from the training set itself: a query farther from every
training pod than almost any training pod is from its own nearest neighbour is outside
what the data covers, and it gets the calibrated prior's answer, flagged.

p10/p90 are part of `fit`: split-conformal offsets (`webhook.model.intervals`) from residuals
of the same estimator fitted on grouped folds of the training data (`groups`, e.g. one per
workload, passed to `fit`); with fewer than two groups, the neighbours' weighted spread.

Brute force is searched here (`BruteForceIndex`), not by scikit-learn: the webhook asks one
spec at a time, and one BLAS matrix-vector product over the training matrix answers that 5x
faster than scikit-learn's brute force (bench/README.md). kd and ball trees stay scikit-learn's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import validate_data
from scipy.linalg.blas import saxpy

from webhook.model.arrays import ColumnShift, checked_queries, checked_rows, exact_nearest, limit_blas_threads_once, require_fitted
from webhook.model.calibration import CalibratedPrior
from webhook.model.intervals import grouped_conformal_offsets
from webhook.model.ivf import InvertedFileIndex, InvertedLists, fit_lists


TRUST_SAMPLE_ROWS = 2000
# Local slopes (`local_adjustment`) are bounded by the spread of the neighbours weighing at least
# this share of a query's nearest: the kernel leaves far ones next to nothing.
NEGLIGIBLE_WEIGHT_SHARE = 0.01
ALGORITHMS = ("auto", "brute", "ivf", "kd_tree", "ball_tree")
# "auto" searches an inverted file from this many training rows on, exactly below it.
IVF_MIN_ROWS = 20_000
# The float32 scores of one block of queries against every training row stay within this.
QUERY_BLOCK_BYTES = 64 * 2**20
# Candidates re-ranked with exact distances; more than k, so that the bound below rarely fails.
CANDIDATES_PER_NEIGHBOUR = 4
FLOAT32_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2


class BruteForceIndex:
    """Exact k nearest neighbours (Euclidean) by one matrix product per block of queries.

    ||q - x||² = ||q||² + ||x||² - 2 q·x, with ||x||² precomputed: ranking needs only
    ||x||² - 2 q·x, one GEMV for a query (GEMM for a block). In float32 that expansion cancels
    catastrophically for near and exact matches, so it only picks candidates; their distances
    are recomputed exactly as ||q - x|| in float64. A bound on the expansion's rounding error
    proves that no row left out could be as near as the k-th candidate; where it cannot (ties,
    duplicated rows), every row within the bound is re-ranked. Neighbours come ordered by
    (distance, row), so ties always go to the lowest rows, whatever BLAS rounded.

    One query at a time (the webhook's case) is mostly zeros once each column is shifted by a
    value most rows share (`ColumnShift`). The matrix is kept column-major, so the product reads
    only the columns where the shifted query is not zero, one BLAS axpy each: a 50,000 x 155
    search read 17 columns instead of 155 and took 0.31 ms against 1.1 ms for the GEMV
    (bench/README.md). A query with many nonzero columns, and a block of queries, take the
    GEMV/GEMM.
    """

    def __init__(self, training: np.ndarray) -> None:
        # Column-major: a sparse query reads whole columns. No copy when the matrix already is
        # (AnchoredKNN keeps its training matrix so).
        self.training = np.asfortranarray(training, dtype=np.float32)
        if self.training.ndim != 2 or self.training.shape[0] == 0:
            raise ValueError("BruteForceIndex needs a 2-d training matrix with at least one row")
        self.squared_norms = np.einsum("ij,ij->i", self.training, self.training)
        self.max_norm = float(np.sqrt(self.squared_norms.max()))
        self.shift = ColumnShift.of(self.training, self.squared_norms)
        # Each float32 score is off by at most (d + 2) unit roundoffs times (||x|| + ||q||)²
        # (Higham's dot-product bound for q·x and for ||x||², and the subtraction); doubled
        # for a margin over BLAS kernels that accumulate in another order.
        self.score_error_factor = 2.0 * (self.training.shape[1] + 2) * FLOAT32_UNIT_ROUNDOFF

    @property
    def rows(self) -> int:
        return int(self.training.shape[0])

    def kneighbors(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances float64, row indices), each queries x k, nearest first."""
        queries = checked_queries(queries, self.training, k)
        limit_blas_threads_once()
        distances = np.empty((queries.shape[0], k), dtype=np.float64)
        indices = np.empty((queries.shape[0], k), dtype=np.intp)
        block_rows = max(1, QUERY_BLOCK_BYTES // (np.dtype(np.float32).itemsize * self.rows))
        for start in range(0, queries.shape[0], block_rows):
            stop = start + block_rows
            distances[start:stop], indices[start:stop] = self._search_block(queries[start:stop], k)
        return distances, indices

    def _scores(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """||x||² - 2 q·x per (query, row), i.e. ||q - x||² less the query's own ||q||², and per
        query a bound on the float32 rounding error of its scores."""
        sparse = self.shift.sparse(block[0]) if block.shape[0] == 1 else None
        if sparse is not None:
            shifted, nonzero = sparse
            scores = self.shift.shifted_base.copy()
            for column in nonzero:
                scores = saxpy(self.training[:, column], scores, a=-2.0 * float(shifted[column]))
            # The base (||x||² and c·x) and the axpys each round like a dot product of these norms.
            norm = self.max_norm + self.shift.offset_norm + float(np.linalg.norm(shifted.astype(np.float64)))
            return scores[None, :], np.array([2.0 * self.score_error_factor * norm**2])
        # Scaling the query by -2 is exact in binary and saves a pass over the scores.
        scores = (-2.0 * block) @ self.training.T  # a single query makes this a GEMV
        scores += self.squared_norms
        query_norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        return scores, self.score_error_factor * (self.max_norm + query_norms) ** 2

    def _score_thresholds(self, block: np.ndarray, kth_distances: np.ndarray, error: np.ndarray) -> np.ndarray:
        """Per query, the highest score a row could have and still be as near as the k-th neighbour."""
        query_squared_norms = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        return kth_distances**2 - query_squared_norms + error

    def _search_block(self, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, error = self._scores(block)
        width = CANDIDATES_PER_NEIGHBOUR * k
        if width >= self.rows:
            every_row = np.broadcast_to(np.arange(self.rows), scores.shape)
            return self._nearest_exact(block, every_row, k)
        candidates, least_excluded = _lowest_scores(scores, width)
        distances, indices = self._nearest_exact(block, candidates, k)
        thresholds = self._score_thresholds(block, distances[:, -1], error)
        for row in np.flatnonzero(least_excluded <= thresholds):
            # The union only guards against a bound that failed: every candidate is within it.
            within = np.union1d(np.flatnonzero(scores[row] <= thresholds[row]), indices[row])
            row_distances, row_indices = self._nearest_exact(block[row:row + 1], within[None, :], k)
            distances[row], indices[row] = row_distances[0], row_indices[0]
        return distances, indices

    def _nearest_exact(self, block: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k candidates nearest each query by exact distance, ties to the lowest row."""
        return exact_nearest(self.training, block, candidates, k)


def _lowest_scores(scores: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the rows of the `width` lowest scores (in no order) and the lowest score left
    out, which every row left out reaches or exceeds. A row at a time, so that argpartition's
    int64 indices add one row's worth to the block's scores, not a block's."""
    candidates = np.empty((scores.shape[0], width), dtype=np.intp)
    least_excluded = np.empty(scores.shape[0], dtype=scores.dtype)
    for row, row_scores in enumerate(scores):
        partitioned = np.argpartition(row_scores, width)
        candidates[row] = partitioned[:width]
        least_excluded[row] = row_scores[partitioned[width]]
    return candidates, least_excluded


def resolve_algorithm(algorithm: str, rows: int = 0) -> str:
    """"auto" is exact brute force below `IVF_MIN_ROWS` training rows and the inverted file
    (`webhook.model.ivf`) from there on, where one exact pass over the rows is most of a cache miss.

    Measured on the served features (157 dimensions; bench/results/predictor_scale*.json, one
    BLAS thread): at 100k rows this search answers one query about as fast as the kd-tree
    (2.6-3.1 against 2.2-2.6 ms) and a batch of 100 four times faster, from an artifact and a
    serving process a third and a quarter smaller. At 1M rows the kd-tree answers one query
    faster (10 against 25 ms, from 86 ms for scikit-learn's brute force), but its artifact is
    2 GiB against 0.6, its process 2.2 GiB against 0.9, it loads in 8 s against 1 and fits in
    2.5 times as long. Under concurrent load the two served about the same throughput
    (bench/README.md, admission what-ifs at 50k rows). scikit-learn's own "auto" would pick a
    tree only below 16 features, which the encoder's hashed text block alone exceeds.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if algorithm == "auto":
        return "ivf" if rows >= IVF_MIN_ROWS else "brute"
    return algorithm


def _nearest_other_spec_distances(distinct: np.ndarray, algorithm: str) -> np.ndarray:
    """Distance from each of a seeded sample of distinct specs to its nearest other spec.

    A sample estimates the quantile well and keeps fitting linear in the rows: querying every
    row of a 1M-row set took about an hour (bench/README.md).
    """
    queries = distinct
    if distinct.shape[0] > TRUST_SAMPLE_ROWS:
        chosen = np.random.default_rng(0).choice(distinct.shape[0], TRUST_SAMPLE_ROWS, replace=False)
        queries = distinct[chosen]
    if algorithm in ("brute", "ivf"):  # a fit-time estimate: exact, whatever serves
        distances, _ = BruteForceIndex(distinct).kneighbors(queries, 2)
    else:
        distances, _ = NearestNeighbors(n_neighbors=2, algorithm=algorithm).fit(distinct).kneighbors(queries)
    # Column 0 is the spec itself: column 1 is its nearest other spec.
    return distances[:, 1]


TARGETS = ("correction", "log_power", "auto")
COLUMN_WEIGHTINGS = ("none", "correlation")
ANCHORS = ("calibrated_prior", "constant")


@dataclass(frozen=True)
class NeighbourPrediction:
    power_watts: np.ndarray
    power_watts_p10: np.ndarray
    power_watts_p90: np.ndarray
    nearest_distance: np.ndarray
    beyond_trust: np.ndarray  # rows whose nearest training spec is beyond the trust radius
    prior_only: np.ndarray  # rows answered by the calibrated prior alone (beyond the radius, correction not faded)


def _weighted_std(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    mean = (weights * values).sum(axis=1, keepdims=True) / weights.sum(axis=1, keepdims=True)
    return np.sqrt((weights * (values - mean) ** 2).sum(axis=1) / weights.sum(axis=1))


def _log_power_share(log_power_spread: np.ndarray, correction_spread: np.ndarray, log_anchor: np.ndarray,
                     neighbour_log_anchors: np.ndarray, weights: np.ndarray, reach: float | None) -> np.ndarray:
    """How much of `target="auto"`'s answer comes from its neighbours' log power (the rest from
    their correction): the inverse of each spread's variance, as a share, and no more than the
    neighbours can vouch for. Neighbours whose calibrated priors lie close together cannot tell
    whether power follows the prior (their log powers agree either way), so beyond their priors'
    own spread plus `reach` (log W; None: no limit) the share falls as 1 / distance, and the prior's
    scaling, which the physics carries to any size, takes over. (Two 1-2 GPU training Jobs drawing
    420 and 450 W made the log power of an 8-GPU one 460 W, measured 2,160 W.) Five simulated
    draws, with `local_adjustment`'s bound on the neighbours that carry weight: served MAE 7.05 /
    11.51 / 8.74 / 11.99 / 27.16 -> 3.45 / 12.17 / 8.17 / 9.99 / 27.26 W, mean |log error| 0.286 /
    0.282 / 0.268 / 0.250 / 0.313 -> 0.282 / 0.284 / 0.272 / 0.249 / 0.316, energy per run's worst
    median APE 30.5 -> 25.8% (reach 0.3); either change alone left that worst draw at 30.5%. But a GPU
    product's prior is only its datasheet: ML.ENERGY grouped by product went 0.209 -> 0.233 with the
    same limit, so grouped CV chooses it (`trainer.crossval`), as it chooses k (bench/README.md)."""
    share = correction_spread**2 / np.maximum(correction_spread**2 + log_power_spread**2, 1e-24)
    share = np.where(correction_spread + log_power_spread > 0, share, 0.5)
    return share * _within_reach(log_anchor, neighbour_log_anchors, weights, reach)


def _within_reach(log_anchor: np.ndarray, neighbour_log_anchors: np.ndarray, weights: np.ndarray,
                  reach: float | None) -> np.ndarray:
    """1 for a query whose calibrated prior lies within the neighbours' own priors' spread plus
    `reach` (log W) of their mean, falling as 1 / distance beyond it; 1 everywhere without a reach."""
    if reach is None:
        return np.ones(log_anchor.shape[0])
    normalised = weights / weights.sum(axis=1, keepdims=True)
    mean_anchor = (normalised * neighbour_log_anchors).sum(axis=1)
    anchor_spread = np.sqrt((normalised * (neighbour_log_anchors - mean_anchor[:, None]) ** 2).sum(axis=1))
    vouched = anchor_spread + reach
    return np.minimum(1.0, vouched / np.maximum(np.abs(log_anchor - mean_anchor), 1e-12))


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    order = np.argsort(values, axis=1)
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    cumulative = np.cumsum(w, axis=1) - 0.5 * w
    cumulative /= w.sum(axis=1, keepdims=True)
    return np.array([np.interp(q, cumulative[i], v[i]) for i in range(v.shape[0])])


def local_adjustment(weights: np.ndarray, neighbour_targets: np.ndarray, neighbour_local: np.ndarray,
                     query_local: np.ndarray, alpha: float, extrapolate: bool = False) -> np.ndarray:
    """How far each query's own local columns move its neighbours' weighted mean target: a weighted
    ridge regression of the targets on those columns, fitted among each query's neighbours alone.

    Neighbours of one kind still differ in size (a batch job asking 1 core or 4, a service with
    or without a sidecar), and their weighted mean answers for their average size, not the
    query's. The slope is the neighbourhood's own, so it can be 0 where power ignores requests
    (idle services) and 1 where it follows them (batch), which no global anchor can be. Ridge
    (`alpha`, on the encoder's standardised columns) keeps a slope from few neighbours small,
    and the move is bounded by the spread of the targets of the neighbours that carry weight.

    The kernel can leave a query with fewer neighbours that count than it has (two close ones,
    six far ones at a weight near 0), and a slope through two points extrapolates whatever
    separates them. The far ones' targets used to widen the bound all the same: an 8-GPU training
    Job whose close neighbours were two 1-2 GPU ones, at corrections 0.50 and 1.11, was moved to
    -0.65 by a far neighbour's -0.35 widening the bound to 1.46. Only neighbours with at least
    `NEGLIGIBLE_WEIGHT_SHARE` of the nearest's weight now bound it (the run model's too; with
    `_log_power_share`'s limit, five simulated draws' worst energy per run went from 30.5 to 25.8%
    median APE).

    Unless `extrapolate`, the slopes interpolate and do not extrapolate: each of the query's local
    values is taken at the nearest edge of what those neighbours span. A line through 1-2 GPU
    training Jobs says little of an 8-GPU one, whose size beyond them the calibrated prior's physics
    carries (the correction target adds it back; so does `target="auto"` in proportion to its
    correction share). The run model extrapolates: nothing else carries a run's stated work
    (`--epochs 30` where its neighbours state 3-10) to its length. Five
    simulated draws (`python -m bench.accuracy --sets simulated --draws 5`, bench/README.md), served
    MAE 2.76 / 21.18 / 13.94 / 8.24 / 26.28 -> 3.09 / 9.94 / 9.49 / 7.48 / 22.89 W (the prior's
    11.80 / 16.95 / 18.91 / 10.29 / 23.09), mean |log error| 0.277 / 0.265 / 0.268 / 0.236 / 0.291
    -> 0.279 / 0.256 / 0.266 / 0.236 / 0.285; ML.ENERGY by model family 0.163 -> 0.164, by GPU
    product 0.209 -> 0.208. Allowing a quarter or all of the span beyond its edges kept less of the
    gain (scratch, draw 2: 10.83, 17.49 W).
    Shapes: weights and targets queries x k, local values queries x k x m and queries x m.
    """
    weights = weights / weights.sum(axis=1, keepdims=True)
    centre = np.einsum("qk,qkm->qm", weights, neighbour_local)
    mean_target = (weights * neighbour_targets).sum(axis=1)
    centred = neighbour_local - centre[:, None, :]
    gram = np.einsum("qkm,qk,qkn->qmn", centred, weights, centred) + alpha * np.eye(centred.shape[2])
    moment = np.einsum("qkm,qk->qm", centred, weights * (neighbour_targets - mean_target[:, None]))
    slopes = np.linalg.solve(gram, moment[:, :, None])[:, :, 0]
    carrying = weights >= NEGLIGIBLE_WEIGHT_SHARE * weights.max(axis=1, keepdims=True)
    if not extrapolate:
        lowest = np.where(carrying[:, :, None], neighbour_local, np.inf).min(axis=1)
        highest = np.where(carrying[:, :, None], neighbour_local, -np.inf).max(axis=1)
        query_local = np.clip(query_local, lowest, highest)
    move = np.einsum("qm,qm->q", query_local - centre, slopes)
    span = (np.where(carrying, neighbour_targets, -np.inf).max(axis=1)
            - np.where(carrying, neighbour_targets, np.inf).min(axis=1))
    return np.clip(move, -span, span)


class AnchoredKNN(RegressorMixin, BaseEstimator):
    """Fit on feature rows (the first `physics_columns` are `PHYSICS_COLUMNS`) and power in W
    (> 0); predict W.

    ``local_columns`` are regressed among each query's neighbours (ridge ``local_alpha`` on the
    encoder's standardised values), within the range those neighbours span unless
    ``local_extrapolation`` (`local_adjustment`); ``unsearched_columns`` do not choose neighbours; both are
    column indices into X, after the physics columns. ``trust_factor=None``: no trust radius.

    ``log_power_reach`` (log W; None: anywhere): how far beyond its neighbours' own calibrated priors
    ``target="auto"`` or ``"log_power"`` trusts their log power (`_within_reach`); past it the
    answer moves to their correction on the query's own prior, which the physics scales.

    ``algorithm`` is "brute" (the default "auto" means it, see :func:`resolve_algorithm`),
    "kd_tree" or "ball_tree". ``interval_folds`` grouped folds calibrate p10/p90 (0: none).

    Beyond the trust radius r, a correction fades: a query at distance d keeps (r / d) **
    ``correction_decay`` of it (half at 2r with the default 1), so a spec unlike any training spec
    tends to the calibrated prior without a step at r. ``anchor="constant"`` anchors on the
    targets' typical value instead of the physics (the run model's targets are seconds, not W). ``correction_decay=0``, and the log-power
    target, answer with the calibrated prior alone beyond r. (Grouped CV on ML.ENERGY's families:
    a hard stop sent 61% of held-out families' pods to the calibrated prior, mean |log error|
    0.196 at k=13 against 0.176 fading; bench/README.md.)
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        target: str = "correction",
        physics_columns: int = 0,
        algorithm: str = "auto",
        trust_quantile: float = 0.99,
        trust_factor: float | None = 2.0,
        interval_quantiles: tuple[float, float] = (0.1, 0.9),
        interval_folds: int = 5,
        prior: CalibratedPrior | None = None,
        correction_decay: float = 1.0,
        column_weighting: str = "none",
        anchor: str = "calibrated_prior",
        local_columns: tuple[int, ...] = (),
        local_alpha: float = 0.3,
        unsearched_columns: tuple[int, ...] = (),
        log_power_reach: float | None = None,
        local_extrapolation: bool = False,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.target = target
        self.physics_columns = physics_columns
        self.algorithm = algorithm
        self.trust_quantile = trust_quantile
        self.trust_factor = trust_factor
        self.interval_quantiles = interval_quantiles
        self.interval_folds = interval_folds
        self.prior = prior
        self.correction_decay = correction_decay
        self.column_weighting = column_weighting
        self.anchor = anchor
        self.local_columns = local_columns
        self.local_alpha = local_alpha
        self.unsearched_columns = unsearched_columns
        self.log_power_reach = log_power_reach
        self.local_extrapolation = local_extrapolation

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True  # power in W
        return tags

    def _split(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        X = checked_rows(self, X, np.float32)
        # A view: the search gathers the columns it reads (`_search`), so a copy here is wasted.
        return self._physics_of(X), X[:, self.physics_columns:]

    def _keeps_anchors(self) -> bool:
        """Whether the training rows' log calibrated priors are kept: `auto` weighs their log power
        against their correction, and `log_power` with a reach falls back on their correction."""
        return self.target == "auto" or (self.target == "log_power" and self.log_power_reach is not None)

    def _physics_of(self, X: np.ndarray) -> np.ndarray:
        # No physics columns, or a constant anchor: the calibrated prior sees one column of zeros
        # and learns a floor (a run's typical length, say, for the run model).
        if self.physics_columns and self.anchor == "calibrated_prior":
            return X[:, :self.physics_columns]
        return np.zeros((X.shape[0], 1), dtype=X.dtype)

    def fit(self, X: Any, y: Any, groups: Any = None, *, shared_fits: dict[Any, Any] | None = None
            ) -> "AnchoredKNN":
        """`shared_fits`: a dict the caller keeps for one training set, in which what depends on the
        training rows alone is kept and found again by later fits on the same rows: the calibrated
        prior fitted for each prior's parameters (it depends on neither k, the target nor the
        columns, and a trainer's grid refitted it for every candidate of a fold: 7.9 of
        `compare_methods`' 14.5 s on a simulated draw of 197 workloads, cProfile), and each searched
        matrix's distances from its specs to their nearest other spec, the trust radius's."""
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        if self.n_neighbors < 0 or (self.n_neighbors == 0 and self.target != "correction"):
            raise ValueError("n_neighbors must be >= 1, or 0 (the calibrated prior alone) with target='correction'")
        if self.log_power_reach is not None and not self.log_power_reach >= 0:
            raise ValueError(f"log_power_reach must be None or >= 0 (log W), got {self.log_power_reach!r}")
        X, power = validate_data(self, X, y, dtype=np.float32, y_numeric=True)
        power = np.asarray(power, dtype=np.float64)
        if np.any(power <= 0):
            raise ValueError("power_watts targets must be > 0 W")
        physics, space = self._physics_of(X), X[:, self.physics_columns:]
        local = self._local_columns(X.shape[1])
        if self.local_alpha <= 0:
            raise ValueError(f"local_alpha must be > 0, got {self.local_alpha}")
        self._check_local_extrapolation()
        self.prior_ = self._fitted_prior(physics, power, shared_fits)
        log_power = np.log(power)
        log_anchors = np.log(self.prior_.predict(physics))
        self.targets_ = log_power if self.target == "log_power" else log_power - log_anchors
        # "auto" weighs the neighbours' log power (corrections plus these) against their correction;
        # "log_power" with a reach falls back on their correction (log power minus these).
        self.training_log_anchors_ = log_anchors if self._keeps_anchors() else np.zeros(0)
        # Columns constant over the training rows rank no neighbour: searched without them (a
        # 50,000-row CPU model has a dozen, the LLM-serving ones among them), added back to the
        # distances exactly, so a query that differs there is still as far as it is.
        searched = self._searched(X.shape[1])
        varying = (np.ptp(space, axis=0) > 0) & searched if space.shape[1] else np.zeros(0, dtype=bool)
        if searched.any() and not varying.any():
            varying[np.flatnonzero(searched)[0]] = True
        self.varying_columns_ = np.flatnonzero(varying)
        self.constant_columns_ = np.flatnonzero(~varying & searched)
        self.local_features_ = np.ascontiguousarray(X[:, local], dtype=np.float32)
        self.constant_values_ = space[0, self.constant_columns_].astype(np.float32)
        self.column_weights_ = self._column_weights(space[:, self.varying_columns_], self.targets_)
        # Column-major, the layout BruteForceIndex searches (shared, not copied).
        self.training_features_ = np.asfortranarray(space[:, self.varying_columns_] * self.column_weights_)
        self.n_neighbors_ = min(self.n_neighbors, X.shape[0])
        self.inverted_lists_ = None
        if self.n_neighbors_ and resolve_algorithm(self.algorithm, X.shape[0]) == "ivf":
            self._store_list_by_list(fit_lists(self.training_features_))
        self._build_index()
        self.trust_radius_ = self._trust_radius(self.training_features_, shared_fits) if self.n_neighbors_ else float("inf")
        self.interval_log_offsets_ = self._calibrate_intervals(X, power, groups)
        return self

    def _fitted_prior(self, physics: np.ndarray, power: np.ndarray,
                      shared_fits: dict[Any, Any] | None) -> CalibratedPrior:
        if self.prior is not None:
            prior = clone(self.prior)
        else:  # a constant anchor is the targets' own typical value, not pulled towards any prior
            prior = CalibratedPrior() if self.anchor == "calibrated_prior" else CalibratedPrior(penalty=0.0)
        if shared_fits is None:
            return prior.fit(physics, power)
        # Unfitted, its attributes are its parameters (`get_params` inspects the signature each call:
        # 0.45 of a grid's 7.1 s). The rows' shape and sums guard against a dict carried over to other
        # rows by mistake.
        key = ("prior", repr(sorted(vars(prior).items())), physics.shape, float(physics.sum()), float(power.sum()))
        if key not in shared_fits:
            shared_fits[key] = prior.fit(physics, power)
        return shared_fits[key]

    def _columns(self, columns: tuple[int, ...], name: str, width: int) -> np.ndarray:
        indices = np.asarray(tuple(columns), dtype=np.intp)
        if indices.size and (indices.min() < self.physics_columns or indices.max() >= width
                             or len(np.unique(indices)) != indices.size):
            raise ValueError(f"{name} must be distinct columns between {self.physics_columns} and {width - 1}, "
                             f"got {list(columns)}")
        return indices

    def _local_columns(self, width: int) -> np.ndarray:
        return self._columns(self.local_columns, "local_columns", width)

    def _searched(self, width: int) -> np.ndarray:
        """Which columns after the physics ones choose neighbours: all but `unsearched_columns`."""
        searched = np.ones(width - self.physics_columns, dtype=bool)
        searched[self._columns(self.unsearched_columns, "unsearched_columns", width) - self.physics_columns] = False
        if searched.size and not searched.any():
            raise ValueError("unsearched_columns leaves no column to choose neighbours by")
        return searched

    def _column_weights(self, varying: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per searched column, its weight in the distance: 1, or with "correlation" the square
        root of |Pearson r| between the column and the regression target on the training rows,
        so that columns which do not move the target stop choosing the neighbours (a service's
        CPU request, when its power does not follow it)."""
        if self.column_weighting not in COLUMN_WEIGHTINGS:
            raise ValueError(f"column_weighting must be one of {', '.join(COLUMN_WEIGHTINGS)}, got {self.column_weighting!r}")
        if self.column_weighting == "none" or varying.shape[0] < 3:
            return np.ones(varying.shape[1], dtype=np.float32)
        centred = varying.astype(np.float64) - varying.mean(axis=0)
        target = targets - targets.mean()
        scale = np.sqrt((centred**2).sum(axis=0) * (target**2).sum())
        r = np.divide(centred.T @ target, scale, out=np.zeros(varying.shape[1]), where=scale > 0)
        weights = np.sqrt(np.abs(r))
        return (weights if weights.any() else np.ones_like(weights)).astype(np.float32)

    def _store_list_by_list(self, lists: InvertedLists) -> None:
        """Every per-row array in the inverted file's order, which the index's row numbers follow."""
        order = lists.order
        # Column by column: indexing a column-major matrix by rows gives a row-major one, and
        # converting that back would hold three copies of the matrix at once.
        ordered = np.empty(self.training_features_.shape, dtype=self.training_features_.dtype, order="F")
        for column in range(ordered.shape[1]):
            ordered[:, column] = self.training_features_[order, column]
        self.training_features_ = ordered
        self.targets_ = self.targets_[order]
        self.local_features_ = self.local_features_[order]
        if self.training_log_anchors_.size:
            self.training_log_anchors_ = self.training_log_anchors_[order]
        self.inverted_lists_ = (lists.centroids, lists.offsets)

    def _build_index(self) -> None:
        self._prepare_queries()
        algorithm = resolve_algorithm(self.algorithm, self.training_features_.shape[0])
        self.index_: BruteForceIndex | InvertedFileIndex | NearestNeighbors | None = None
        if self.n_neighbors_ == 0:
            return
        if self.inverted_lists_ is not None:
            self.index_ = InvertedFileIndex(self.training_features_, *self.inverted_lists_)
        elif algorithm in ("brute", "ivf"):  # "ivf" without lists: an artifact from before them
            self.index_ = BruteForceIndex(self.training_features_)
        else:
            self.index_ = NearestNeighbors(n_neighbors=self.n_neighbors_, algorithm=algorithm).fit(self.training_features_)

    def _prepare_queries(self) -> None:
        """What every query reads and only the fitted state decides, computed once instead of per
        query: the weight of the constant columns (a mean over the weights, ~20,000 instructions a
        query through numpy's Python `_mean`) and where the local columns sit in the search space."""
        self._constant_weight = float(self.column_weights_.mean() if self.column_weights_.size else 1.0)
        self._local_space_columns = self._local_columns(self.n_features_in_) - self.physics_columns

    def _trust_radius(self, space: np.ndarray, shared_fits: dict[Any, Any] | None = None) -> float:
        if self.trust_factor is None:  # no radius: the neighbours answer anywhere
            return float("inf")
        algorithm = resolve_algorithm(self.algorithm)
        key, nearest_other = None, None
        if shared_fits is not None:
            # The same searched matrix (the grid's candidates of one encoding and weighting, whatever
            # their k or target) has the same distances: its shape, columns' weights and sums key it.
            key = ("nearest other spec", space.shape, algorithm, self.column_weights_.tobytes(), float(space.sum()),
                   float(np.einsum("ij,ij->", space, space, dtype=np.float64)))
            nearest_other = shared_fits.get(key)
        if nearest_other is None:
            # Distances between distinct specs: pods of one workload share a feature vector, and
            # counting those twins would shrink the radius to 0 and send every query to the prior.
            distinct = np.unique(space, axis=0)
            nearest_other = _nearest_other_spec_distances(distinct, algorithm) if distinct.shape[0] >= 2 else np.zeros(0)
            if shared_fits is not None:
                shared_fits[key] = nearest_other
        if nearest_other.size == 0:
            return float("inf")
        return float(np.quantile(nearest_other, self.trust_quantile) * self.trust_factor)

    def _calibrate_intervals(self, X: np.ndarray, power: np.ndarray, groups: Any) -> tuple[float, float] | None:
        """Conformal offsets from grouped out-of-fold residuals of this same estimator (the trainer
        calibrates the whole Pipeline instead, `trainer.crossval.fit_pipeline`)."""
        if self.interval_folds < 2:
            return None
        inner = clone(self).set_params(interval_folds=0)

        def held_out_residuals(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            return np.log(power[test]) - np.log(clone(inner).fit(X[train], power[train]).predict(X[test]))

        offsets = grouped_conformal_offsets(np.arange(len(power)) if groups is None else np.asarray(groups),
                                            held_out_residuals, folds=self.interval_folds,
                                            quantiles=self.interval_quantiles)
        return None if offsets is None else (offsets.log_offset_p10, offsets.log_offset_p90)

    def __getstate__(self) -> dict[str, Any]:
        # The search index is derived from training_features_: rebuilt, never stored.
        state = dict(super().__getstate__())
        state.pop("index_", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if hasattr(self, "training_features_"):
            self._build_index()

    def kneighbors(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(distances, training row indices) of each row's n_neighbors_ nearest, nearest first."""
        require_fitted(self, "training_features_")
        return self._search(self._split(X)[1])

    def _search(self, space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        varying = np.ascontiguousarray(space[:, self.varying_columns_] * self.column_weights_)
        assert self.index_ is not None, "n_neighbors=0 has no neighbours"
        if isinstance(self.index_, (BruteForceIndex, InvertedFileIndex)):
            distances, indices = self.index_.kneighbors(varying, self.n_neighbors_)
        else:
            distances, indices = self.index_.kneighbors(varying)
        if self.constant_columns_.size:
            # Unweighted by the data (they never varied), constant columns count at the mean weight.
            offsets = (space[:, self.constant_columns_].astype(np.float64) - self.constant_values_) * self._constant_weight
            distances = np.sqrt(distances**2 + np.einsum("ij,ij->i", offsets, offsets)[:, None])
        return distances, indices

    def predict_detail(self, X: Any) -> NeighbourPrediction:
        require_fitted(self, "training_features_")
        physics, space = self._split(X)
        log_anchor = np.log(self._anchor_watts(physics))
        n = log_anchor.shape[0]
        # The neighbours' spread makes p10/p90 only without calibrated offsets (the served models have them).
        spread_wanted = self.interval_log_offsets_ is None
        spread: tuple[np.ndarray, np.ndarray] | None = None
        if self.n_neighbors_ == 0:
            point = log_anchor
            distances = np.zeros((n, 1))
            spread = np.zeros((n, 1)), np.ones((n, 1))
        else:
            distances, indices = self._search(space)
            weights = self._neighbour_weights(distances)
            local = None
            if self.local_features_.shape[1] and self.n_neighbors_ > 1:
                local = (self.local_features_[indices], space[:, self._local_space_columns])
            neighbour_targets = self.targets_[indices]
            point = self._answer(weights, neighbour_targets, local)
            if self.target == "log_power":
                spread = neighbour_targets, weights
                if self.log_power_reach is not None:
                    anchors = self.training_log_anchors_[indices]
                    trusted = _within_reach(log_anchor, anchors, weights, self.log_power_reach)
                    if (trusted < 1.0).any():
                        by_correction = self._answer(weights, neighbour_targets - anchors, local) + log_anchor
                        point = trusted * point + (1.0 - trusted) * by_correction
            else:
                if spread_wanted:
                    spread = neighbour_targets + log_anchor[:, None], weights
                point = point + log_anchor
            if self.target == "auto":
                # The scaling the neighbours agree on: where their log powers are closer together than
                # their corrections, size moves power less than the prior says (idle services) and
                # their log power answers; otherwise the prior's scaling plus their correction. The
                # two answers are weighted by the inverse of their spread's variance, not picked:
                # grouped CV on the simulated cluster, k=8, mean |log error| 0.300 picking, 0.291
                # weighting (its distance from the simulator's truth of the spec 0.221 -> 0.198).
                neighbour_log_anchors = self.training_log_anchors_[indices]
                neighbour_log_power = neighbour_targets + neighbour_log_anchors
                log_power_spread = _weighted_std(neighbour_log_power, weights)
                correction_spread = _weighted_std(neighbour_targets, weights)
                by_log_power = log_power_spread < correction_spread
                share = _log_power_share(log_power_spread, correction_spread, log_anchor, neighbour_log_anchors,
                                         weights, self.log_power_reach)
                point = share * self._answer(weights, neighbour_log_power, local) + (1.0 - share) * point
                if spread is not None:
                    spread = np.where(by_log_power[:, None], neighbour_log_power, spread[0]), weights
        nearest = distances[:, 0]
        beyond = nearest > self.trust_radius_
        fades = self.target != "log_power" and self.correction_decay > 0
        if fades:
            if beyond.any():  # most queries are within the radius: no work for them
                # Beyond the radius the correction fades instead of stopping: (radius / distance) ** decay of it.
                kept = np.where(beyond, (self.trust_radius_ / np.maximum(nearest, 1e-12)) ** self.correction_decay, 1.0)
                point = log_anchor + kept * (point - log_anchor)
        else:
            point = np.where(beyond, log_anchor, point)
        if self.interval_log_offsets_ is not None:
            low = point + self.interval_log_offsets_[0]
            high = point + self.interval_log_offsets_[1]
        else:
            assert spread is not None
            values, weights = spread
            low = np.minimum(_weighted_quantile(values, weights, self.interval_quantiles[0]), point)
            high = np.maximum(_weighted_quantile(values, weights, self.interval_quantiles[1]), point)
        prior_only = np.zeros(n, dtype=bool) if fades else beyond
        return NeighbourPrediction(np.exp(point), np.exp(low), np.exp(high), nearest, beyond, prior_only)

    def _anchor_watts(self, physics: np.ndarray) -> np.ndarray:
        """The calibrated prior's watts of each row. One row (a cache miss) goes straight to its
        one-row formula: `CalibratedPrior.predict` would check the row again, which `_split` just did
        (40,000 -> ~10,000 instructions with the log, valgrind --tool=callgrind, 50,000-row model)."""
        if physics.shape[0] == 1:
            return np.array([self.prior_.predict_row(physics[0].tolist())])
        return self.prior_.predict(physics)

    def _answer(self, weights: np.ndarray, neighbour_targets: np.ndarray,
                local: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """The neighbours' weighted mean target, moved by the local slopes when there are any."""
        point = (weights * neighbour_targets).sum(axis=1) / weights.sum(axis=1)
        if local is not None:
            point = point + local_adjustment(weights, neighbour_targets, local[0], local[1], self.local_alpha,
                                             self.local_extrapolation)
        return point

    def _neighbour_weights(self, distances: np.ndarray) -> np.ndarray:
        """Each neighbour's weight. Exact matches take all of it (scikit-learn's rule for distance
        weighting). Otherwise 1 / distance; with local columns a Gaussian kernel whose width is the
        nearest neighbour's distance, so that the local fit sees several neighbours at comparable
        weight instead of one dominating (grouped CV on the simulated cluster, local ridge at k=8:
        mean |log error| 0.310 against 0.326 with 1 / distance)."""
        exact = distances <= 1e-12
        if self.local_features_.shape[1]:
            scale = np.maximum(distances[:, :1], 1e-12)
            smooth = np.exp(-0.5 * (distances / scale) ** 2)
        else:
            smooth = 1.0 / np.maximum(distances, 1e-12)
        if not np.logical_or.reduce(exact, axis=None):  # the usual case: no exact match, nothing to pick
            return smooth
        return np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), smooth)

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_detail(X).power_watts

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Fitted state as (JSON, arrays), for `webhook.model.artifact`."""
        require_fitted(self, "training_features_")
        return ({
            "n_neighbors_": self.n_neighbors_,
            "trust_radius_": None if self.trust_radius_ == float("inf") else self.trust_radius_,
            "interval_log_offsets_": list(self.interval_log_offsets_) if self.interval_log_offsets_ else None,
            "n_features_in_": self.n_features_in_,
            "prior_": self.prior_.to_state(),
            "prior_params": {k: v for k, v in self.prior_.get_params().items() if k != "coefficients"},
            "varying_columns_": self.varying_columns_.tolist(),
            "constant_columns_": self.constant_columns_.tolist(),
        }, {"training_features": self.training_features_, "targets": self.targets_,
            "constant_values": self.constant_values_, "column_weights": self.column_weights_,
            "local_features": self.local_features_, "training_log_anchors": self.training_log_anchors_,
            **({} if self.inverted_lists_ is None else
               {"ivf_centroids": self.inverted_lists_[0], "ivf_offsets": self.inverted_lists_[1]})})

    def _check_local_extrapolation(self) -> None:
        if not isinstance(self.local_extrapolation, bool):  # a file's "false" would otherwise be true
            raise ValueError(f"local_extrapolation must be true or false, got {self.local_extrapolation!r}")

    def set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> "AnchoredKNN":
        self._check_local_extrapolation()
        # Column-major, the layout both indexes search and `to_state` stores: a mapped artifact's
        # rows are then used in place. An inverted file stored row-major (before 2026-11-29) is
        # searched row-major, not copied (`InvertedFileIndex`).
        features = np.asarray(arrays["training_features"], dtype=np.float32)
        if not (features.flags.f_contiguous or ("ivf_centroids" in arrays and features.flags.c_contiguous)):
            features = np.asfortranarray(features)
        targets = np.asarray(arrays["targets"], dtype=np.float64)
        if features.ndim != 2 or targets.shape != (features.shape[0],):
            raise ValueError("training_features must be rows x columns and targets one value per row")
        self.training_features_, self.targets_ = features, targets
        self.n_neighbors_ = int(state["n_neighbors_"])
        if not 0 <= self.n_neighbors_ <= features.shape[0]:
            raise ValueError(f"n_neighbors_ {self.n_neighbors_} is not within the {features.shape[0]} training rows")
        radius = state["trust_radius_"]
        self.trust_radius_ = float("inf") if radius is None else float(radius)
        offsets = state["interval_log_offsets_"]
        self.interval_log_offsets_ = None if offsets is None else (float(offsets[0]), float(offsets[1]))
        self.n_features_in_ = int(state["n_features_in_"])
        self.varying_columns_ = np.asarray(state["varying_columns_"], dtype=np.intp)
        self.constant_columns_ = np.asarray(state["constant_columns_"], dtype=np.intp)
        self.constant_values_ = np.asarray(arrays["constant_values"], dtype=np.float32)
        self.column_weights_ = np.asarray(arrays["column_weights"], dtype=np.float32)
        if self.column_weights_.shape != self.varying_columns_.shape:
            raise ValueError("column_weights must hold one weight per searched column")
        local = self._local_columns(self.n_features_in_)
        self.local_features_ = np.ascontiguousarray(
            arrays.get("local_features", np.zeros((features.shape[0], 0))), dtype=np.float32)
        self.training_log_anchors_ = np.asarray(arrays.get("training_log_anchors", np.zeros(0)), dtype=np.float64)
        if self.training_log_anchors_.shape != ((features.shape[0],) if self._keeps_anchors() else (0,)):
            raise ValueError("training_log_anchors must hold one value per row with target='auto', or 'log_power' "
                             "with a log_power_reach, none otherwise")
        if self.local_features_.shape != (features.shape[0], local.size):
            raise ValueError(f"local_features must be rows x {local.size} (one column per local column)")
        searched = np.flatnonzero(self._searched(self.n_features_in_)).tolist()
        if (self.varying_columns_.size != features.shape[1] or self.constant_values_.shape != self.constant_columns_.shape
                or sorted([*self.varying_columns_.tolist(), *self.constant_columns_.tolist()]) != searched):
            raise ValueError("varying and constant columns must split the searched columns, with a value per constant one")
        self.prior_ = CalibratedPrior(**state["prior_params"]).set_state(state["prior_"])
        self.inverted_lists_ = None
        if "ivf_centroids" in arrays:
            self.inverted_lists_ = (np.asarray(arrays["ivf_centroids"], dtype=np.float32),
                                    np.asarray(arrays["ivf_offsets"], dtype=np.int64))
        self._build_index()
        return self
