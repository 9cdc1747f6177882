"""The brute-force neighbour search of LogPowerKNN against scikit-learn's, and its artifacts."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors

import webhook.model.knn
from webhook.model.knn import BruteForceIndex, LogPowerKNN

K = 5


def _training_with_duplicates(rows: int, features: int, seed: int) -> np.ndarray:
    """Random rows, some repeated many times (the pods of one workload share a spec)."""
    rng = np.random.default_rng(seed)
    training = rng.standard_normal((rows, features)).astype(np.float32)
    training[10:40] = training[3]  # 31 copies: more than the candidates kept per query
    training[50:53] = training[49]  # 4 copies: fewer than k
    training[rows // 2] = training[rows - 1]
    return training


def _queries(training: np.ndarray, seed: int) -> np.ndarray:
    """Exact matches (of a unique row, of a row with twins, of the 31 copies), near matches, strangers."""
    rng = np.random.default_rng(seed)
    exact = training[[0, 3, 12, 49, 51, training.shape[0] - 1]]
    near = training[[1, 2, 60]] + np.float32(1e-4) * rng.standard_normal((3, training.shape[1])).astype(np.float32)
    strangers = rng.standard_normal((20, training.shape[1])).astype(np.float32)
    return np.vstack([exact, near, strangers])


def _exact_reference(training: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distance as ||q - x|| in float64; the k smallest by (distance, row)."""
    distances = np.sqrt(((training.astype(np.float64)[None] - queries.astype(np.float64)[:, None]) ** 2).sum(-1))
    rows = np.broadcast_to(np.arange(training.shape[0]), distances.shape)
    order = np.lexsort((rows, distances), axis=-1)[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.mark.parametrize(("rows", "features"), [(400, 157), (3000, 24)])
def test_brute_force_finds_scikit_learns_neighbours(rows: int, features: int) -> None:
    training = _training_with_duplicates(rows, features, seed=rows)
    queries = _queries(training, seed=rows + 1)
    distances, indices = BruteForceIndex(training).kneighbors(queries, K)
    sk_distances, sk_indices = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(training).kneighbors(queries)
    # scikit-learn's distances come from the expansion: exact matches are off by ~1e-7 there.
    np.testing.assert_allclose(distances, sk_distances, rtol=1e-5, atol=1e-5)
    exact_distances, _ = _exact_reference(training, queries, K + 1)
    for q in range(queries.shape[0]):
        tied_at_kth = np.isclose(exact_distances[q, K - 1], exact_distances[q, K], rtol=0, atol=1e-9)
        if not tied_at_kth:
            assert set(indices[q]) == set(sk_indices[q]), f"query {q}"


def test_ties_go_to_the_lowest_rows_and_exact_matches_are_zero() -> None:
    training = _training_with_duplicates(500, 157, seed=1)
    queries = _queries(training, seed=2)
    distances, indices = BruteForceIndex(training).kneighbors(queries, K)
    expected_distances, expected_indices = _exact_reference(training, queries, K)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12, atol=0)
    assert indices[1].tolist() == [3, 10, 11, 12, 13]  # 31 copies of row 3: the lowest five
    assert indices[3].tolist()[:4] == [49, 50, 51, 52]
    assert (distances[:6, 0] == 0.0).all()  # exactly, not the expansion's ~1e-4
    assert (distances[1] == 0.0).all()


def test_query_blocks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    training = _training_with_duplicates(1000, 40, seed=3)
    queries = _queries(training, seed=4)
    index = BruteForceIndex(training)
    whole = index.kneighbors(queries, K)
    # One query per block: the block budget is smaller than one row of scores.
    monkeypatch.setattr(webhook.model.knn, "QUERY_BLOCK_BYTES", 1)
    one_by_one = index.kneighbors(queries, K)
    np.testing.assert_array_equal(whole[1], one_by_one[1])
    np.testing.assert_array_equal(whole[0], one_by_one[0])


@pytest.mark.parametrize("rows", [1, 7, 20, 21])
def test_few_rows_rank_every_row(rows: int) -> None:
    training = _training_with_duplicates(60, 6, seed=5)[:rows]
    queries = np.vstack([training[:1], np.zeros((1, 6), dtype=np.float32)])
    k = min(K, rows)
    distances, indices = BruteForceIndex(training).kneighbors(queries, k)
    expected_distances, expected_indices = _exact_reference(training, queries, k)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_bad_queries_are_refused() -> None:
    index = BruteForceIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        index.kneighbors(np.array([[np.nan, 0, 0, 0]]), 2)
    with pytest.raises(ValueError, match="n x 4"):
        index.kneighbors(np.zeros((1, 3)), 2)
    with pytest.raises(ValueError, match="k must be"):
        index.kneighbors(np.zeros((1, 4)), 5)


def _power(training: np.ndarray) -> np.ndarray:
    return np.exp(training[:, 0].astype(np.float64) + 2.0)


def test_every_algorithm_predicts_alike_and_an_exact_match_takes_all_the_weight() -> None:
    training = _training_with_duplicates(600, 30, seed=6)
    power = _power(training)
    queries = _queries(training, seed=7)
    predictions = {a: LogPowerKNN(n_neighbors=K, algorithm=a).fit(training, power) for a in ("auto", "brute", "kd_tree")}
    brute = predictions["brute"].predict_detail(queries)
    for algorithm in ("auto", "kd_tree"):
        other = predictions[algorithm].predict_detail(queries)
        np.testing.assert_allclose(other.power_watts, brute.power_watts, rtol=1e-6)
        np.testing.assert_allclose(other.nearest_distance, brute.nearest_distance, atol=1e-6)
    assert brute.power_watts[0] == pytest.approx(power[0], rel=1e-12)
    assert predictions["kd_tree"].trust_radius_ == pytest.approx(predictions["brute"].trust_radius_, rel=1e-6)


def test_auto_means_brute_force_and_unknown_algorithms_are_refused() -> None:
    training = _training_with_duplicates(100, 4, seed=8)  # few features: scikit-learn's "auto" would build a tree
    knn = LogPowerKNN(algorithm="auto").fit(training, _power(training))
    assert knn.neighbors_._fit_method == "brute"
    with pytest.raises(ValueError, match="algorithm must be one of"):
        LogPowerKNN(algorithm="annoy").fit(training, _power(training))


def _artifact_from_before_the_matrix_vector_search(training: np.ndarray, power: np.ndarray) -> LogPowerKNN:
    """What LogPowerKNN.fit persisted before: scikit-learn's estimator fitted with "auto"."""
    knn = LogPowerKNN(n_neighbors=K).fit(training, power)
    knn.neighbors_ = KNeighborsRegressor(n_neighbors=K, weights="distance", algorithm="auto").fit(training, np.log(power))
    return knn


def test_artifacts_hold_the_training_matrix_once_and_old_ones_still_predict() -> None:
    training = _training_with_duplicates(2000, 157, seed=9)
    power = _power(training)
    queries = _queries(training, seed=10)
    old = pickle.loads(pickle.dumps(_artifact_from_before_the_matrix_vector_search(training, power)))
    new_bytes = pickle.dumps(LogPowerKNN(n_neighbors=K).fit(training, power))
    new = pickle.loads(new_bytes)
    assert len(new_bytes) < 1.1 * training.nbytes
    assert "_brute_force_index" not in pickle.loads(new_bytes).__getstate__()
    assert old._brute_force_index is not None and new._brute_force_index is not None
    np.testing.assert_allclose(old.predict(queries), new.predict(queries), rtol=1e-12)
    # The scikit-learn estimator inside still answers as before, for servers that predate this.
    sk_prediction = new.neighbors_.predict(queries[6:])
    np.testing.assert_allclose(np.log(new.predict(queries[6:])), sk_prediction, rtol=1e-5, atol=1e-6)


def _blas_threads_after_a_search(environment: dict[str, str]) -> list[int]:
    script = (
        "import json, numpy as np, threadpoolctl\n"
        "from webhook.model.knn import BruteForceIndex\n"
        "BruteForceIndex(np.eye(3, dtype=np.float32)).kneighbors(np.ones((1, 3)), 1)\n"
        "print(json.dumps([p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']))\n"
    )
    inherited = {k: v for k, v in os.environ.items() if k not in webhook.model.knn.BLAS_THREAD_VARIABLES}
    completed = subprocess.run([sys.executable, "-c", script], env={**inherited, **environment}, capture_output=True,
                               text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(completed.stdout)


def test_the_search_uses_one_blas_thread_unless_the_operator_chose() -> None:
    assert set(_blas_threads_after_a_search({})) == {1}
    assert set(_blas_threads_after_a_search({"OPENBLAS_NUM_THREADS": "2"})) == {2}


def test_concurrent_searches_agree_with_one_at_a_time() -> None:
    training = _training_with_duplicates(5000, 157, seed=11)
    queries = _queries(training, seed=12)
    index = BruteForceIndex(training)
    alone = [index.kneighbors(queries[i:i + 1], K) for i in range(queries.shape[0])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda i: index.kneighbors(queries[i:i + 1], K), range(queries.shape[0])))
    for (d1, i1), (d2, i2) in zip(alone, together):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)
