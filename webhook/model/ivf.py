"""Approximate nearest neighbours for large training sets: an inverted file over k-means lists.

A cache miss searches every training row (`webhook.model.knn.BruteForceIndex`): at 50,000 rows
that pass costs about 0.5 ms of a 1.1 ms miss, and it grows with the rows. An inverted file
(the IVF of faiss, Jégou et al. 2011) groups the rows by their nearest of about sqrt(rows) k-means
centroids, once, when the model is fitted; a query ranks the centroids and scores only the rows
of the `probes` nearest lists, then re-ranks the best of those by exact distance. The pod specs
of a cluster come in tight clusters (the pods of one kind, with round requests), which is where
this kind of index recalls well; bench/README.md reports its recall against the exact search
and its effect on accuracy.

Everything the index needs is arrays (centroids, list offsets; the rows themselves are the
model's, stored list by list), so an artifact stays data only and loads without refitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from webhook.model.arrays import exact_nearest

# Rows per list about sqrt(rows): the centroid scan and the probed rows then cost about the same.
DEFAULT_PROBES = 4  # recall@5 0.999 at 50,000 rows, 0.983 with 2 (bench/README.md)
# k-means is fitted on a sample: faiss trains on 30-256 rows per centroid (its documentation).
TRAINING_ROWS_PER_LIST = 64
# Candidates re-ranked by exact distance for each neighbour asked.
CANDIDATES_PER_NEIGHBOUR = 4


def list_count(rows: int) -> int:
    return max(1, int(round(math.sqrt(rows))))


@dataclass(frozen=True)
class InvertedLists:
    """Rows grouped by list: `order` sorts the original rows list by list; `offsets[i]:offsets[i+1]`
    are list i's rows in that order."""

    centroids: np.ndarray  # lists x d, float32
    offsets: np.ndarray  # lists + 1, int64
    order: np.ndarray  # rows, the permutation that puts the rows list by list


def fit_lists(training: np.ndarray, lists: int | None = None, seed: int = 0) -> InvertedLists:
    """k-means centroids from a seeded sample, then every row assigned to its nearest centroid."""
    rows = training.shape[0]
    lists = min(rows, lists or list_count(rows))
    sample = training
    if rows > lists * TRAINING_ROWS_PER_LIST:
        chosen = np.sort(np.random.default_rng(seed).choice(rows, lists * TRAINING_ROWS_PER_LIST, replace=False))
        sample = training[chosen]
    kmeans = KMeans(n_clusters=lists, n_init=1, max_iter=20, random_state=seed).fit(sample.astype(np.float32))
    centroids = kmeans.cluster_centers_.astype(np.float32)
    labels = _nearest_centroid(training, centroids)
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=lists))]).astype(np.int64)
    return InvertedLists(centroids, offsets, order)


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
                 probes: int = DEFAULT_PROBES) -> None:
        self.training = np.ascontiguousarray(training, dtype=np.float32)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if (self.centroids.ndim != 2 or self.centroids.shape[1] != self.training.shape[1]
                or self.offsets.shape != (self.centroids.shape[0] + 1,) or self.offsets[0] != 0
                or self.offsets[-1] != self.training.shape[0] or np.any(np.diff(self.offsets) < 0)):
            raise ValueError("an inverted file needs lists x columns centroids and lists + 1 rising offsets "
                             "from 0 to the rows")
        self.probes = max(1, min(int(probes), self.centroids.shape[0]))
        self.squared_norms = np.einsum("ij,ij->i", self.training, self.training)
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
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.training.shape[1]:
            raise ValueError(f"queries must be n x {self.training.shape[1]}, got shape {queries.shape}")
        if not 1 <= k <= self.rows:
            raise ValueError(f"k must be between 1 and the {self.rows} training rows, got {k}")
        centroid_scores = self.centroid_norms - 2.0 * (queries @ self.centroids.T)
        if queries.shape[0] == 1:  # the webhook's one query: its answer is already 1 x k
            return self._one(queries[0], centroid_scores[0], k)
        distances = np.empty((queries.shape[0], k), dtype=np.float64)
        indices = np.empty((queries.shape[0], k), dtype=np.intp)
        for q in range(queries.shape[0]):
            distances[q], indices[q] = self._one(queries[q], centroid_scores[q], k)
        return distances, indices

    def _probed_lists(self, centroid_scores: np.ndarray, wanted_rows: int) -> np.ndarray:
        lists = centroid_scores.shape[0]
        if self.probes < lists:
            # The method, not np.argpartition: the same partition without fromnumeric's wrapper (~1 us).
            nearest = centroid_scores.argpartition(self.probes - 1)[:self.probes]
            if self.sizes[nearest].sum() >= wanted_rows:
                return nearest
        # Too few rows in the nearest lists (small or empty ones): take lists in order until enough.
        ranked = np.argsort(centroid_scores, kind="stable")
        enough = int(np.searchsorted(np.cumsum(self.sizes[ranked]), wanted_rows)) + 1
        return ranked[:max(self.probes, enough)]

    def _one(self, query: np.ndarray, centroid_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        width = CANDIDATES_PER_NEIGHBOUR * k
        offsets = self.offset_list
        spans = [(offsets[i], offsets[i + 1]) for i in self._probed_lists(centroid_scores, width).tolist()]
        # A list is a contiguous block of rows: a GEMV on each slice reads the rows in place, where
        # gathering ~2,000 rows of 155 columns first cost more than the products (cProfile, 50k rows).
        candidates = np.concatenate([self.row_numbers[a:b] for a, b in spans])
        dots = np.empty(candidates.size, dtype=np.float32)
        position = 0
        for a, b in spans:
            np.matmul(self.training[a:b], query, out=dots[position:position + b - a])
            position += b - a
        scores = self.squared_norms[candidates] - 2.0 * dots
        if candidates.size > width:
            candidates = candidates[scores.argpartition(width - 1)[:width]]
        return exact_nearest(self.training, query[None, :], candidates[None, :], k)
