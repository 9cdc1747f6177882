"""Approximate nearest neighbours for large training sets: an inverted file over k-means lists.

A cache miss searches every training row (`webhook.model.knn.BruteForceIndex`): at 50,000 rows
that pass costs about 0.5 ms of a 1.1 ms miss, and it grows with the rows. An inverted file
(the IVF of faiss, Jégou et al. 2011) groups the rows by their nearest of about sqrt(rows) k-means
centroids, once, when the model is fitted; a query ranks the centroids and scores only the rows
of the nearest lists, then re-ranks the best of those by exact distance. The pod specs
of a cluster come in tight clusters (the pods of one kind, with round requests), which is where
this kind of index recalls well; bench/README.md reports its recall against the exact search
and its effect on accuracy.

A query's cost is the rows it scores, so both ends bound them: no list is fitted larger than
twice the mean list (k-means alone left lists of up to 3.4 times the mean at 1M rows), and a
query scores lists nearest first until it has `probes` mean lists' worth of rows, not a fixed
number of lists, which made a query that landed among the largest lists score 11,193 rows where
the median one scored 4,674.

The rows are stored column-major, list by list within each column, so that a query, shifted by
the training medians (`webhook.model.arrays.ColumnShift`), reads from each probed list only the
columns where it differs from them: at 1M rows a query scored ~6,200 rows of 155 columns, ~3.8
MB read from memory no cache holds, 0.58 of a ~1.0 ms prediction (cProfile); on random lists of a
1M x 220 matrix, 7 lists of 900 rows and 50 columns took 171 us at the median against 417 us for
the row-major GEMV over every column (bench/README.md).

Everything the index needs is arrays (centroids, list offsets; the rows themselves are the
model's, stored list by list), so an artifact stays data only and loads without refitting.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from webhook.model.arrays import ColumnShift, checked_queries, exact_nearest, limit_blas_threads_once

# Rows per list about sqrt(rows): the centroid scan and the probed rows then cost about the same.
# A query scores this many mean lists' worth of rows. On the 1M-row benchmark model (2,000 unseen
# specs), recall@5 0.9986 scoring 6,158 rows at the median, 7,202 at p99, 7,579 at most; 4 fixed
# lists, as before, 0.9967 and 4,674 / 10,450 / 11,193 rows. At 50,000 rows 1.0000 (4 lists:
# 0.9995); a budget of 4 lists' rows: 0.9949 at 1M, 0.9980 at 50k (bench/ivf_recall.py).
DEFAULT_PROBES = 6
# k-means is fitted on a sample: faiss trains on 30-256 rows per centroid (its documentation).
TRAINING_ROWS_PER_LIST = 64
# Candidates re-ranked by exact distance for each neighbour asked.
CANDIDATES_PER_NEIGHBOUR = 4
# No list holds more than this many times the mean list's rows: k-means on the 1M-row benchmark
# model left lists of up to 3,358 rows (mean 1,000, median 944), and a query scores every row of a
# list it probes. Splitting those above 2,000 made 1,062 lists in 0.6 s.
MAX_LIST_ROWS_FACTOR = 2.0


def list_count(rows: int) -> int:
    return max(1, int(round(math.sqrt(rows))))


def max_list_rows(rows: int, lists: int) -> int:
    """The most rows one list may hold once fitted: MAX_LIST_ROWS_FACTOR times the mean list."""
    return max(1, int(math.ceil(MAX_LIST_ROWS_FACTOR * rows / max(1, lists))))


@dataclass(frozen=True)
class InvertedLists:
    """Rows grouped by list: `order` sorts the original rows list by list; `offsets[i]:offsets[i+1]`
    are list i's rows in that order."""

    centroids: np.ndarray  # lists x d, float32
    offsets: np.ndarray  # lists + 1, int64
    order: np.ndarray  # rows, the permutation that puts the rows list by list


def fit_lists(training: np.ndarray, lists: int | None = None, seed: int = 0,
              list_rows_bound: int | None = None) -> InvertedLists:
    """k-means centroids from a seeded sample, every row assigned to its nearest centroid, then
    every list above `list_rows_bound` rows (default `max_list_rows`) split until none is."""
    rows = training.shape[0]
    lists = min(rows, lists or list_count(rows))
    bound = list_rows_bound or max_list_rows(rows, lists)
    centroids = _kmeans_centroids(training, np.arange(rows), lists, seed)
    labels = _nearest_centroid(training, centroids)
    centroids, labels = _split_oversized(training, centroids, labels, bound, target_rows=max(1, rows // lists),
                                         seed=seed)
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=centroids.shape[0]))]).astype(np.int64)
    return InvertedLists(centroids, offsets, order)


def _kmeans_centroids(training: np.ndarray, members: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means centroids (float32) of the rows `members`, fitted on a seeded sample of them."""
    if members.size > clusters * TRAINING_ROWS_PER_LIST:
        members = np.sort(np.random.default_rng(seed).choice(members, clusters * TRAINING_ROWS_PER_LIST, replace=False))
    sample = np.asarray(training[members], dtype=np.float32)
    # One thread (OpenMP and BLAS): on the 2 shared cores, k-means of 20,224 x 155 rows into 316
    # centroids took 105 s on two threads and 17 s on one while other jobs ran (load average ~7).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Fewer distinct rows than clusters (duplicated specs) is expected here and handled by the caller.
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=min(clusters, members.size), n_init=1, max_iter=20, random_state=seed).fit(sample)
    return kmeans.cluster_centers_.astype(np.float32)


def _split_oversized(training: np.ndarray, centroids: np.ndarray, labels: np.ndarray, bound: int,
                     target_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and labels with no list above `bound` rows.

    An oversized list is clustered again into lists of about `target_rows`, its rows assigned to
    the nearest of the new centroids; a part still above the bound is split again, and rows that
    k-means cannot separate (identical ones) are cut into consecutive blocks sharing their mean
    as centroid. The first part keeps the list's number, the others are appended."""
    sizes = np.bincount(labels, minlength=centroids.shape[0])
    if sizes.max(initial=0) <= bound:
        return centroids, labels
    labels = labels.copy()
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    added: list[np.ndarray] = []
    next_label = centroids.shape[0]
    centroids = centroids.copy()
    for oversized in np.flatnonzero(sizes > bound).tolist():
        pending = [order[offsets[oversized]:offsets[oversized + 1]]]
        parts: list[tuple[np.ndarray, np.ndarray]] = []  # (centroid, member rows)
        while pending:
            members = pending.pop()
            if members.size <= bound:
                parts.append((np.asarray(training[members], dtype=np.float64).mean(axis=0).astype(np.float32), members))
                continue
            sub_centroids = _kmeans_centroids(training, members, max(2, -(-members.size // target_rows)), seed)
            sub_labels = _nearest_centroid(training[members], sub_centroids)
            counts = np.bincount(sub_labels, minlength=sub_centroids.shape[0])
            if counts.max() == members.size:  # k-means found no split: consecutive blocks of the bound
                pending.extend(np.array_split(members, -(-members.size // bound)))
                continue
            pending.extend(members[sub_labels == part] for part in np.flatnonzero(counts).tolist())
        for number, (centroid, members) in enumerate(parts):
            label = oversized if number == 0 else next_label
            if number:
                next_label += 1
                added.append(centroid)
            else:
                centroids[oversized] = centroid
            labels[members] = label
    return np.concatenate([centroids, np.asarray(added, dtype=np.float32).reshape(-1, centroids.shape[1])]), labels


def _nearest_centroid(rows: np.ndarray, centroids: np.ndarray, block: int = 16_384) -> np.ndarray:
    norms = np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(rows.shape[0], dtype=np.int64)
    for start in range(0, rows.shape[0], block):
        part = np.asarray(rows[start:start + block], dtype=np.float32)
        labels[start:start + block] = np.argmin(norms - 2.0 * (part @ centroids.T), axis=1)
    return labels


class InvertedFileIndex:
    """k nearest neighbours among rows stored list by list (`training` already in `order`)."""

    def __init__(self, training: np.ndarray, centroids: np.ndarray, offsets: np.ndarray,
                 probes: int = DEFAULT_PROBES, row_budget: int | None = None) -> None:
        # Column-major: a query reads its nonzero columns of each list. No copy when the matrix
        # already is (AnchoredKNN stores it so, and an artifact maps it as stored). A row-major
        # matrix (an artifact from before 2026-11-29) is searched as it is, every column a GEMV:
        # a column-major copy of a mapped 1M-row matrix would be ~0.6 GB of private memory.
        training = np.asarray(training, dtype=np.float32)
        self.training = training if training.flags.c_contiguous else np.asfortranarray(training)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if (self.centroids.ndim != 2 or self.centroids.shape[1] != self.training.shape[1]
                or self.offsets.shape != (self.centroids.shape[0] + 1,) or self.offsets[0] != 0
                or self.offsets[-1] != self.training.shape[0] or np.any(np.diff(self.offsets) < 0)):
            raise ValueError("an inverted file needs lists x columns centroids and lists + 1 rising offsets "
                             "from 0 to the rows")
        self.probes = max(1, min(int(probes), self.centroids.shape[0]))
        lists = self.centroids.shape[0]
        # Rows a query scores: the probes' worth of mean lists, whatever the sizes of the nearest.
        self.row_budget = (int(math.ceil(self.probes * self.training.shape[0] / lists)) if row_budget is None
                           else int(row_budget))
        # The nearest lists ranked before the budget is counted: enough for lists half the mean.
        self.candidate_lists = min(lists, 2 * self.probes + 2)
        self.squared_norms = np.einsum("ij,ij->i", self.training, self.training)
        # Only a column-major matrix is searched by columns: a row-major one needs no shift.
        self.shift = ColumnShift.of(self.training, self.squared_norms) if self.training.flags.f_contiguous else None
        self.centroid_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self.sizes = np.diff(self.offsets)
        self.row_numbers = np.arange(self.rows)
        # The offsets as Python ints: a query reads eight of them, and a numpy scalar per read cost
        # more than the list (with the one-query shortcuts below and in `exact_nearest`, a search
        # took 91 us against 119, interleaved in one process on a 50,000-row model).
        self.offset_list: list[int] = self.offsets.tolist()

    @property
    def rows(self) -> int:
        return int(self.training.shape[0])

    def kneighbors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances float64, row indices in list order), each queries x k, nearest first."""
        queries = checked_queries(queries, self.training, k)
        limit_blas_threads_once()
        centroid_scores = self.centroid_norms - 2.0 * (queries @ self.centroids.T)
        if queries.shape[0] == 1:  # the webhook's one query: its answer is already 1 x k
            return self._one(queries[0], centroid_scores[0], k)
        distances = np.empty((queries.shape[0], k), dtype=np.float64)
        indices = np.empty((queries.shape[0], k), dtype=np.intp)
        for q in range(queries.shape[0]):
            distances[q], indices[q] = self._one(queries[q], centroid_scores[q], k)
        return distances, indices

    def _probed_lists(self, centroid_scores: np.ndarray, wanted_rows: int) -> np.ndarray:
        """The lists a query scores: nearest centroid first, until `row_budget` rows (at least
        `wanted_rows`); the list that reaches the budget is scored whole."""
        budget = max(self.row_budget, wanted_rows)
        lists = centroid_scores.shape[0]
        if self.candidate_lists < lists:
            # The method, not np.argpartition: the same partition without fromnumeric's wrapper (~1 us).
            nearest = centroid_scores.argpartition(self.candidate_lists - 1)[:self.candidate_lists]
            nearest = nearest[centroid_scores[nearest].argsort(kind="stable")]
            reached = np.cumsum(self.sizes[nearest])
            if reached[-1] >= budget:
                return nearest[:int(reached.searchsorted(budget)) + 1]
        # Too few rows in the nearest lists (small or empty ones): take lists in order until enough.
        ranked = np.argsort(centroid_scores, kind="stable")
        enough = int(np.searchsorted(np.cumsum(self.sizes[ranked]), budget)) + 1
        return ranked[:enough]

    def _one(self, query: np.ndarray, centroid_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        width = CANDIDATES_PER_NEIGHBOUR * k
        offsets = self.offset_list
        spans = [(offsets[i], offsets[i + 1]) for i in self._probed_lists(centroid_scores, width).tolist()]
        # A list is a contiguous block of rows: a GEMV on each slice reads the rows in place, where
        # gathering ~2,000 rows of 155 columns first cost more than the products (cProfile, 50k rows).
        candidates = np.concatenate([self.row_numbers[a:b] for a, b in spans])
        dots = np.empty(candidates.size, dtype=np.float32)
        sparse = self.shift.sparse(query) if self.shift is not None else None
        position = 0
        if sparse is None:
            for a, b in spans:
                np.matmul(self.training[a:b], query, out=dots[position:position + b - a])
                position += b - a
            scores = self.squared_norms[candidates] - 2.0 * dots
        else:
            shifted, nonzero = sparse
            values = shifted[nonzero]
            for a, b in spans:  # the list's rows of the query's columns: one strided copy, then a GEMV
                np.matmul(self.training[a:b, nonzero], values, out=dots[position:position + b - a])
                position += b - a
            scores = self.shift.shifted_base[candidates] - 2.0 * dots
        if candidates.size > width:
            candidates = candidates[scores.argpartition(width - 1)[:width]]
        return exact_nearest(self.training, query[None, :], candidates[None, :], k)

