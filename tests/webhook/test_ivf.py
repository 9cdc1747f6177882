"""The inverted-file index: recall against the exact search, enough rows from small lists, and an
AnchoredKNN that keeps every per-row array in the index's order through an artifact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import webhook.model.arrays
import webhook.model.knn
from webhook.model.ivf import InvertedFileIndex, fit_lists, max_list_rows
from webhook.model.knn import AnchoredKNN, BruteForceIndex


def _clustered(rows: int, columns: int, seed: int) -> np.ndarray:
    """Rows around 60 centres, as pod specs sit around a cluster's kinds of pod."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, columns)) * 3.0
    return (centres[rng.integers(0, 60, rows)] + 0.3 * rng.standard_normal((rows, columns))).astype(np.float32)


def test_the_inverted_file_recalls_the_exact_neighbours() -> None:
    training = _clustered(6000, 24, 1)
    lists = fit_lists(training)
    index = InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets)
    queries = _clustered(300, 24, 2)
    distances, rows = index.kneighbors(queries, 5)
    exact, _ = BruteForceIndex(training).kneighbors(queries, 5)
    assert np.mean(distances <= exact[:, -1:] + 1e-6) >= 0.98  # recall@5 by distance
    # The distances it reports are the true ones of the rows it names.
    true = np.linalg.norm(training[lists.order][rows] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(distances, true, rtol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_lists_too_small_for_k_are_topped_up_from_the_next_nearest() -> None:
    training = _clustered(400, 8, 3)
    lists = fit_lists(training, lists=100)
    index = InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets, probes=1)
    distances, rows = index.kneighbors(training[:3], 40)  # far more than one list holds
    assert rows.shape == (3, 40) and len(set(rows[0].tolist())) == 40
    assert distances[:, 0] == pytest.approx(0.0, abs=1e-5)


def test_bad_lists_are_refused() -> None:
    training = _clustered(100, 4, 4)
    lists = fit_lists(training, lists=5)
    with pytest.raises(ValueError, match="offsets"):
        InvertedFileIndex(training, lists.centroids, lists.offsets[:-1])


@pytest.mark.parametrize("query, k, problem", [
    (np.zeros((1, 7)), 3, "queries must be n x 8, got shape (1, 7)"),
    (np.zeros(8), 3, "queries must be n x 8, got shape (8,)"),
    (np.full((1, 8), np.nan), 3, "queries must be finite"),
    (np.full((1, 8), np.inf), 3, "queries must be finite"),
    (np.zeros((1, 8)), 0, "k must be between 1 and the 600 training rows, got 0"),
    (np.zeros((1, 8)), 601, "k must be between 1 and the 600 training rows, got 601"),
])
def test_both_indexes_refuse_the_same_bad_queries_alike(query: np.ndarray, k: int, problem: str) -> None:
    training = _clustered(600, 8, seed=5)
    lists = fit_lists(training, lists=10)
    for index in (BruteForceIndex(training), InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets)):
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            index.kneighbors(query, k)


def test_an_ivf_model_predicts_like_the_exact_one_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from webhook.model.artifact import build_pipeline, load_model, save_model
    from tests.webhook.test_predictors import _request, _training_set

    requests, power = _training_set(rows=600)
    monkeypatch.setattr(webhook.model.knn, "IVF_MIN_ROWS", 500)  # "auto" takes the inverted file here
    approximate = build_pipeline(n_neighbors=5).fit(requests, power)
    exact = build_pipeline(n_neighbors=5).set_params(knn__algorithm="brute").fit(requests, power)
    assert approximate[-1].inverted_lists_ is not None and exact[-1].inverted_lists_ is None
    queries = [_request(cpu, 512, image) for cpu in (100, 777, 3000) for image in ("nginx:1.27", "postgres:16")]
    np.testing.assert_allclose(approximate.predict(queries), exact.predict(queries), rtol=1e-6)
    path = tmp_path / "model.esmodel"
    save_model(path, approximate, "ivf", {})
    loaded = load_model(path)
    assert isinstance(loaded.pipeline[-1].index_, InvertedFileIndex)
    np.testing.assert_allclose([p.power_watts for p in loaded.predict(queries)], approximate.predict(queries), rtol=1e-6)
    assert loaded.pipeline[-1].index_.training.flags.f_contiguous  # mapped as stored, column-major

    # An artifact from before the column-major layout (rows stored row-major) loads and predicts the same.
    approximate[-1].training_features_ = np.ascontiguousarray(approximate[-1].training_features_)
    old = tmp_path / "row-major.esmodel"
    save_model(old, approximate, "ivf", {})
    reloaded = load_model(old)
    # Searched as stored, not copied: a column-major copy of a mapped 1M-row matrix is ~0.6 GB.
    assert reloaded.pipeline[-1].index_.training.flags.c_contiguous and reloaded.pipeline[-1].index_.shift is None
    np.testing.assert_allclose([p.power_watts for p in reloaded.predict(queries)],
                               [p.power_watts for p in loaded.predict(queries)], rtol=1e-6)


def test_a_sparse_query_scores_only_its_columns_and_finds_the_exact_neighbours() -> None:
    """Pod specs are mostly the training medians (no GPU, the usual kind, a few hashed words):
    such a query scores each list from its nonzero shifted columns alone. With every list probed
    the search is exhaustive, so it must name exactly the exact search's neighbours."""
    rng = np.random.default_rng(22)
    training = np.zeros((4000, 120), dtype=np.float32)
    training[:, :10] = rng.standard_normal((4000, 10))
    np.put_along_axis(training, rng.integers(10, 120, size=(4000, 5)), 1.0, axis=1)
    training[200:230] = training[3]  # twins
    lists = fit_lists(training, lists=30)
    ordered = training[lists.order]
    # Column-major, as AnchoredKNN stores it (a row-major matrix is searched row by row).
    index = InvertedFileIndex(np.asfortranarray(ordered), lists.centroids, lists.offsets, probes=lists.centroids.shape[0])
    near = ordered[[10, 2000]].copy()
    near[:, :10] += np.float32(1e-3)
    queries = np.vstack([ordered[[0, 3999]], near, training[3:4]])
    distances, rows = index.kneighbors(queries, 6)
    for q, query in enumerate(queries):
        assert index.shift.sparse(query) is not None  # the column-by-column path
        exact_distances, exact_rows = BruteForceIndex(ordered).kneighbors(query[None, :], 6)
        np.testing.assert_array_equal(rows[q], exact_rows[0])
        np.testing.assert_allclose(distances[q], exact_distances[0], rtol=1e-12, atol=1e-12)
    dense = rng.standard_normal((1, 120)).astype(np.float32)  # differs everywhere: the GEMV over every column
    assert index.shift.sparse(dense[0]) is None
    np.testing.assert_array_equal(index.kneighbors(dense, 6)[1], BruteForceIndex(ordered).kneighbors(dense, 6)[1])


def test_ivf_is_an_algorithm_and_auto_is_exact_below_the_threshold() -> None:
    X = _clustered(200, 6, 5)
    power = np.exp(X[:, 0] / 3)
    assert AnchoredKNN(n_neighbors=3, interval_folds=0).fit(X, power).inverted_lists_ is None
    forced = AnchoredKNN(n_neighbors=3, interval_folds=0, algorithm="ivf").fit(X, power)
    assert isinstance(forced.index_, InvertedFileIndex)
    np.testing.assert_allclose(forced.predict(X[:20]), power[:20], rtol=1e-5)  # exact matches take all weight


def _skewed(rows: int, columns: int, seed: int) -> np.ndarray:
    """Most rows in one tight cluster and a block of identical rows: k-means gives them one list
    each, many times the mean, and the identical ones cannot be split by any centroid."""
    rng = np.random.default_rng(seed)
    spread = _clustered(rows, columns, seed)
    crowded = rng.random(rows) < 0.5
    spread[crowded] = 0.05 * rng.standard_normal((int(crowded.sum()), columns)).astype(np.float32)
    spread[:rows // 10] = 7.0  # a tenth of the rows are one spec
    return spread


def test_no_list_exceeds_the_bound_after_fit_and_every_row_is_in_one_list() -> None:
    drawn = _skewed(8200, 12, 6)
    training, queries = drawn[:8000], drawn[8000:]
    lists = fit_lists(training, lists=40)
    sizes = np.diff(lists.offsets)
    assert sizes.max() <= max_list_rows(8000, 40) == 400
    assert lists.centroids.shape == (sizes.size, 12) and sizes.size > 40  # the large lists were split
    np.testing.assert_array_equal(np.sort(lists.order), np.arange(8000))
    # The split lists are searched like any: the rows named are at the distances reported.
    index = InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets)
    distances, rows = index.kneighbors(queries, 5)
    true = np.linalg.norm(training[lists.order][rows] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(distances, true, rtol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_a_query_scores_its_row_budget_and_less_than_one_more_list() -> None:
    drawn = _skewed(8300, 12, 8)
    training, queries = drawn[:8000], drawn[8000:]
    lists = fit_lists(training, lists=40)
    index = InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets, probes=3)
    assert index.row_budget == math.ceil(3 * 8000 / index.sizes.size)  # 3 mean lists, split ones counted
    scores = index.centroid_norms - 2.0 * (queries @ index.centroids.T)
    for row in scores:
        scored = int(index.sizes[index._probed_lists(row, 20)].sum())
        assert index.row_budget <= scored < index.row_budget + index.sizes.max()


def test_the_search_runs_on_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in webhook.model.arrays.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(webhook.model.arrays, "_blas_threads_set", False)
    limits: list[int] = []
    monkeypatch.setattr(webhook.model.arrays, "threadpool_limits", lambda limits_=None, **kw: limits.append(kw["limits"]))
    training = _clustered(500, 6, 10)
    lists = fit_lists(training, lists=10)
    InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets).kneighbors(training[:2], 3)
    assert limits == [1] and webhook.model.arrays._blas_threads_set
