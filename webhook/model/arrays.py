"""Checked feature arrays on the serving path, and what both neighbour indexes share: the exact
re-ranking, the column shift that makes one query sparse, and one BLAS thread per process for
their searches.

The webhook predicts one row at a time. scikit-learn's `validate_data` costs about 0.35 ms a call
there (measured with cProfile on a 50,000-row model: three calls per prediction, a third of a
cache miss), so an array of the right shape takes a fast path with the checks that matter
(2-d, the fitted width, finite); anything else goes through `validate_data`, messages included.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits


# Set by the operator, a BLAS thread count is theirs to choose; otherwise the search uses one.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
SEARCH_BLAS_THREADS = 1

# What the exact re-ranking of a block of queries holds at once (`exact_nearest`).
EXACT_BLOCK_BYTES = 16 * 2**20
# A query takes the sparse path when at most 1 / SPARSE_QUERY_SHARE of its shifted columns are nonzero.
SPARSE_QUERY_SHARE = 3
# The column shift is the median of this many seeded rows: any shift is exact, a median only sparse.
SHIFT_SAMPLE_ROWS = 10_000

_blas_threads_lock = threading.Lock()
_blas_threads_set = False


def limit_blas_threads_once() -> None:
    """One BLAS thread per process, from the first search on (brute force or inverted file).

    The webhook predicts in a pool of worker threads: concurrent reviews are its parallelism.
    On its 2 cores a 2-thread GEMV started by each of several reviews at once oversubscribes
    them (bench/admission_load.py: a third of the throughput), and waiting for OpenBLAS's helper
    thread made even a lone query slower on this shared machine (a 100k x 157 float32 GEMV:
    2.6 ms on one thread, 7.5 ms on two; a product with 100 queries, 36 against 54 ms; the
    inverted file at 1M rows, 1,000 single predictions at load average ~6: p99 19.6 ms on two
    threads, 6.3 ms on one). The limit
    is process-wide (BLAS has no per-call setting), so it is set once, before any search runs,
    and never changed under a running product.
    """
    global _blas_threads_set
    if _blas_threads_set:  # set once and never unset: no lock to take on every query
        return
    with _blas_threads_lock:
        if _blas_threads_set:
            return
        if not any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES):
            threadpool_limits(limits=SEARCH_BLAS_THREADS, user_api="blas")
        _blas_threads_set = True


def require_fitted(estimator: BaseEstimator, attribute: str) -> None:
    """scikit-learn's `check_is_fitted` (its NotFittedError and message) only when `attribute` is
    missing: the check itself costs about 17 us, four times a prediction (cProfile, 50,000 rows)."""
    if not hasattr(estimator, attribute):
        check_is_fitted(estimator, attribute)


def checked_rows(estimator: BaseEstimator, X: Any, dtype: type) -> np.ndarray:
    """X as a 2-d array of `dtype` with the fitted estimator's `n_features_in_` columns."""
    if (isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] > 0
            and X.shape[1] == getattr(estimator, "n_features_in_", -1) and X.dtype.kind == "f"):
        X = np.asarray(X, dtype=dtype)
        # The ufunc's reduce, not ndarray.all: the same answer without numpy's Python wrapper
        # (`_methods._all`, 1.1% of a prediction's samples, py-spy; twice a prediction).
        if not np.logical_and.reduce(np.isfinite(X), axis=None):
            raise ValueError("Input X contains NaN or infinity.")
        return X
    return validate_data(estimator, X, dtype=dtype, reset=False)


def checked_queries(queries: Any, training: np.ndarray, k: int) -> np.ndarray:
    """Queries for an index over `training` (rows x columns): float32, C-contiguous, n x columns,
    finite, and 1 <= k <= rows; a ValueError says which of these failed. Both indexes' `kneighbors`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows, columns = training.shape
    if queries.ndim != 2 or queries.shape[1] != columns:
        raise ValueError(f"queries must be n x {columns}, got shape {queries.shape}")
    if not np.isfinite(queries).all():
        raise ValueError("queries must be finite (no NaN or infinity)")
    if not 1 <= k <= rows:
        raise ValueError(f"k must be between 1 and the {rows} training rows, got {k}")
    return queries


def exact_nearest(training: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k candidates (queries x candidates row indices) nearest each query by exact distance,
    in float64, ties to the lowest row: (distances, row indices), each queries x k."""
    if queries.shape[0] == 1:
        return _exact_nearest_block(training, queries, candidates, k)
    # The differences are queries x candidates x columns float64: in blocks of queries, so that
    # a fold's search holds EXACT_BLOCK_BYTES of them, not 155 MiB (memray, `train fit` of
    # 20,000 simulated workloads).
    per_query = candidates.shape[1] * training.shape[1] * np.dtype(np.float64).itemsize
    block = max(1, EXACT_BLOCK_BYTES // max(1, per_query))
    distances = np.empty((queries.shape[0], k), dtype=np.float64)
    indices = np.empty((queries.shape[0], k), dtype=candidates.dtype)
    for start in range(0, queries.shape[0], block):
        stop = start + block
        distances[start:stop], indices[start:stop] = _exact_nearest_block(
            training, queries[start:stop], candidates[start:stop], k)
    return distances, indices


def _exact_nearest_block(training: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                         k: int) -> tuple[np.ndarray, np.ndarray]:
    # Cast as the ufunc goes: float64 copies of both sides would page-fault in fresh memory.
    differences = np.subtract(training[candidates], queries[:, None, :], dtype=np.float64)
    exact = np.sqrt(np.einsum("qcd,qcd->qc", differences, differences))
    if exact.shape[0] == 1:
        # One query (the webhook's): sorted and indexed as 1-d, the same order without
        # take_along_axis's index building, which cost more than the sort (py-spy, 50,000 rows).
        order = np.lexsort((candidates[0], exact[0]))[:k]
        return exact[:, order], candidates[:, order]
    order = np.lexsort((candidates, exact), axis=-1)[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(candidates, order, axis=1)


@dataclass(frozen=True)
class ColumnShift:
    """Per column, a value most training rows share (its median: no GPU, no init container, the
    usual kind, a few hashed tokens of 128), and per row what a shifted query's scores start from.

    One query at a time (the webhook's case) is mostly zeros once shifted: with q' = q - c,
    ||x||² - 2 q·x = (||x||² - 2 c·x) - 2 q'·x, the first term is `shifted_base`, and the second
    reads only the columns where q' is not zero. Stored column-major, a training matrix then
    gives a query only those columns: at 50,000 x 155, 17 columns instead of 155 (brute force,
    0.31 against 1.1 ms, bench/README.md).
    """

    offsets: np.ndarray  # columns, float32
    offset_norm: float  # ||c||, for rounding-error bounds
    shifted_base: np.ndarray  # rows, float32: ||x||² - 2 c·x

    @classmethod
    def of(cls, training: np.ndarray, squared_norms: np.ndarray) -> "ColumnShift":
        rows = training.shape[0]
        sample = training
        if rows > SHIFT_SAMPLE_ROWS:
            sample = training[np.sort(np.random.default_rng(0).choice(rows, SHIFT_SAMPLE_ROWS, replace=False))]
        offsets = np.median(sample, axis=0).astype(np.float32)
        return cls(offsets, float(np.linalg.norm(offsets.astype(np.float64))),
                   squared_norms - 2.0 * (training @ offsets))

    def sparse(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(q', the columns where q' is not zero) for a query sparse enough to score column by
        column, None for one that is not (a GEMV over every column is then cheaper)."""
        shifted = query - self.offsets
        nonzero = np.flatnonzero(shifted)
        return (shifted, nonzero) if nonzero.size * SPARSE_QUERY_SHARE <= query.size else None
