"""The inverted-file index: recall against the exact search, enough rows from small lists, and an
AnchoredKNN that keeps every per-row array in the index's order through an artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import webhook.model.knn
from webhook.model.ivf import InvertedFileIndex, fit_lists
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


def test_ivf_is_an_algorithm_and_auto_is_exact_below_the_threshold() -> None:
    X = _clustered(200, 6, 5)
    power = np.exp(X[:, 0] / 3)
    assert AnchoredKNN(n_neighbors=3, interval_folds=0).fit(X, power).inverted_lists_ is None
    forced = AnchoredKNN(n_neighbors=3, interval_folds=0, algorithm="ivf").fit(X, power)
    assert isinstance(forced.index_, InvertedFileIndex)
    np.testing.assert_allclose(forced.predict(X[:20]), power[:20], rtol=1e-5)  # exact matches take all weight
