"""The brute-force neighbour search of AnchoredKNN against scikit-learn's; the estimator's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import webhook.model.arrays
import webhook.model.knn
from webhook.model.calibration import CalibratedPrior
from webhook.model.knn import AnchoredKNN, BruteForceIndex

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
    predictions = {a: AnchoredKNN(n_neighbors=K, algorithm=a, target="log_power").fit(training, power)
                   for a in ("auto", "brute", "kd_tree")}
    brute = predictions["brute"].predict_detail(queries)
    for algorithm in ("auto", "kd_tree"):
        other = predictions[algorithm].predict_detail(queries)
        np.testing.assert_allclose(other.power_watts, brute.power_watts, rtol=1e-6)
        np.testing.assert_allclose(other.nearest_distance, brute.nearest_distance, atol=1e-6)
    assert brute.power_watts[0] == pytest.approx(power[0], rel=1e-6)
    assert predictions["kd_tree"].trust_radius_ == pytest.approx(predictions["brute"].trust_radius_, rel=1e-6)


def test_auto_means_brute_force_and_unknown_algorithms_are_refused() -> None:
    training = _training_with_duplicates(100, 4, seed=8)  # few features: scikit-learn's "auto" would build a tree
    knn = AnchoredKNN(algorithm="auto").fit(training, _power(training))
    assert isinstance(knn.index_, BruteForceIndex)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        AnchoredKNN(algorithm="annoy").fit(training, _power(training))


def _physics(vcpu: np.ndarray, gpus: np.ndarray, runs_to_completion: np.ndarray | None = None) -> np.ndarray:
    """Physics rows (webhook.model.prior.PHYSICS_COLUMNS): vCPU, GB, and a 70-700 W GPU product (index 5);
    with `runs_to_completion`, the batch flag too (9 columns, feature version 4), else 8 as before it."""
    rows = np.zeros((len(vcpu), 8 if runs_to_completion is None else 9))
    rows[:, 0] = rows[:, 1] = vcpu
    rows[:, 2] = rows[:, 3] = 0.5
    rows[:, 4], rows[:, 5], rows[:, 6], rows[:, 7] = gpus, 70.0, 700.0, 5
    if runs_to_completion is not None:
        rows[:, 8] = runs_to_completion
    return rows


def test_the_correction_target_extrapolates_with_physics_where_log_power_cannot() -> None:
    # Training pods use 1-2 GPUs at 60% utilisation; a query asks for 8: far from every training row.
    rng = np.random.default_rng(3)
    gpus = rng.integers(1, 3, 200).astype(float)
    physics = _physics(np.full(200, 4.0), gpus)
    other = rng.standard_normal((200, 6))
    X = np.hstack([physics, other]).astype(np.float32)
    power = 0.5 + 2.0 * 4.0 + 0.196 + gpus * (70 + 0.6 * 630) * np.exp(0.05 * rng.standard_normal(200))
    query = np.hstack([_physics(np.array([4.0]), np.array([8.0])), np.zeros((1, 6))]).astype(np.float32)
    expected = 0.5 + 8.0 + 0.196 + 8 * (70 + 0.6 * 630)
    anchored = AnchoredKNN(n_neighbors=5, physics_columns=8).fit(X, power)
    plain = AnchoredKNN(n_neighbors=5, physics_columns=8, target="log_power", trust_factor=1e9).fit(X, power)
    assert anchored.predict(query)[0] == pytest.approx(expected, rel=0.1)
    assert plain.predict(query)[0] < 0.3 * expected  # the neighbours' 1-2 GPU powers
    assert anchored.prior_.product_utilisation_[5] == pytest.approx(0.6, abs=0.05)


def test_calibrated_prior_learns_a_floor_and_stays_at_the_embedded_values_without_data() -> None:
    idle = _physics(np.array([0.1, 0.5, 1.0, 2.0, 0.25] * 8), np.zeros(40))
    fitted = CalibratedPrior().fit(idle, np.full(40, 0.02))
    assert fitted.predict(idle).max() < 0.2  # idle services: far below the embedded 1.0 W per requested vCPU
    # One measurement moves the coefficients only part of the way from the embedded prior's (1.016 W
    # per vCPU at 10% utilisation, no floor) towards it: the penalty holds them.
    one = CalibratedPrior().fit(_physics(np.array([1.0]), np.zeros(1)), np.array([2.5]))
    assert 1.016 < one.cpu_watts_per_vcpu_ < 2.5 - one.floor_watts_


def test_calibrated_prior_fits_the_w_per_vcpu_of_pods_that_run_to_completion_apart() -> None:
    # Services idle at 0.02 W whatever they request; batch pods of the same sizes work at 2 W per vCPU.
    vcpu = np.array([0.1, 0.5, 1.0, 2.0, 4.0] * 8)
    batch = np.repeat([0.0, 1.0], 20)
    power = np.where(batch > 0, 2.0 * vcpu, 0.02)
    fitted = CalibratedPrior().fit(_physics(vcpu, np.zeros(40), batch), power)
    assert fitted.batch_cpu_watts_per_vcpu_ > 10 * fitted.cpu_watts_per_vcpu_
    predicted = fitted.predict(_physics(vcpu, np.zeros(40), batch))
    assert np.all(np.abs(np.log(predicted[batch > 0] / power[batch > 0])) < 0.3)
    assert predicted[batch == 0].max() < 0.2
    row = _physics(np.array([2.0]), np.zeros(1), np.ones(1))
    assert fitted.predict_row(row[0].tolist()) == fitted.predict(np.vstack([row, row]))[0]
    # Rows without the column (an artifact before feature version 4) read as services' pods.
    older_rows = CalibratedPrior().fit(_physics(vcpu, np.zeros(40)), power)
    assert older_rows.batch_cpu_watts_per_vcpu_ == pytest.approx(older_rows.cpu_watts_per_vcpu_, rel=1e-3)
    # Without batch pods nothing pulls theirs from the services' (the penalty holds it there); an
    # older artifact's state, which has no batch coefficient, reads the same way.
    services = CalibratedPrior().fit(_physics(vcpu, np.zeros(40), np.zeros(40)), np.full(40, 0.02))
    assert services.batch_cpu_watts_per_vcpu_ == pytest.approx(services.cpu_watts_per_vcpu_, rel=1e-3)
    state = {k: v for k, v in fitted.to_state().items() if k != "batch_cpu_watts_per_vcpu"}
    older = CalibratedPrior().set_state(state)
    assert older.batch_cpu_watts_per_vcpu_ == fitted.cpu_watts_per_vcpu_
    assert CalibratedPrior().set_state(fitted.to_state()).batch_cpu_watts_per_vcpu_ == fitted.batch_cpu_watts_per_vcpu_


def test_what_fits_on_the_same_rows_share_is_what_each_would_compute() -> None:
    rng = np.random.default_rng(11)
    vcpu = rng.uniform(0.1, 4.0, 200)
    physics = _physics(vcpu, np.zeros(200), rng.integers(0, 2, 200).astype(float))
    X = np.hstack([physics, rng.standard_normal((200, 4))]).astype(np.float32)
    power = 0.2 + vcpu * np.where(physics[:, 8] > 0, 2.0, 0.1) * np.exp(0.1 * rng.standard_normal(200))
    fits: dict = {}
    first = AnchoredKNN(n_neighbors=5, physics_columns=9).fit(X, power, shared_fits=fits)
    shared = AnchoredKNN(n_neighbors=3, physics_columns=9, target="log_power").fit(X, power, shared_fits=fits)
    def kept(kind: str) -> int:
        return sum(key[0] == kind for key in fits)

    # k and the target change neither the prior nor the searched matrix (no column weighting).
    assert kept("prior") == 1 and kept("nearest other spec") == 1 and shared.prior_ is first.prior_
    alone = AnchoredKNN(n_neighbors=3, physics_columns=9, target="log_power").fit(X, power)
    assert alone.prior_.to_state() == shared.prior_.to_state() and alone.trust_radius_ == shared.trust_radius_
    assert np.array_equal(alone.predict(X[:40]), shared.predict(X[:40]))
    # Another prior's parameters, other rows or another searched matrix are another fit.
    AnchoredKNN(n_neighbors=3, physics_columns=9, prior=CalibratedPrior(fit_coefficients=False)).fit(
        X, power, shared_fits=fits)
    other_rows = AnchoredKNN(n_neighbors=3, physics_columns=9).fit(X[:150], power[:150], shared_fits=fits)
    assert kept("prior") == 3 and other_rows.prior_ is not first.prior_
    weighted = AnchoredKNN(n_neighbors=3, physics_columns=9, column_weighting="correlation").fit(X, power, shared_fits=fits)
    assert kept("nearest other spec") == 3
    assert weighted.trust_radius_ == AnchoredKNN(n_neighbors=3, physics_columns=9, column_weighting="correlation").fit(
        X, power).trust_radius_


def test_intervals_are_calibrated_inside_fit_and_survive_clone() -> None:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 6)).astype(np.float32)
    power = np.exp(X[:, 0] + 0.3 * rng.standard_normal(300))
    groups = np.repeat(np.arange(60), 5)
    knn = AnchoredKNN(n_neighbors=8).fit(X, power, groups=groups)
    assert knn.interval_log_offsets_ is not None
    low, high = knn.interval_log_offsets_
    assert low < 0 < high
    again = clone(knn).fit(X, power, groups=groups)
    assert again.interval_log_offsets_ == knn.interval_log_offsets_
    fresh = rng.standard_normal((2000, 6)).astype(np.float32)
    truth = np.exp(fresh[:, 0] + 0.3 * rng.standard_normal(2000))
    detail = knn.predict_detail(fresh)
    coverage = np.mean((detail.power_watts_p10 <= truth) & (truth <= detail.power_watts_p90))
    assert 0.7 <= coverage <= 0.9
    assert AnchoredKNN(n_neighbors=8, interval_folds=0).fit(X, power).interval_log_offsets_ is None


def test_a_correction_fades_beyond_the_trust_radius_and_a_hard_stop_gives_the_calibrated_prior() -> None:
    rng = np.random.default_rng(9)
    X = rng.standard_normal((100, 4)).astype(np.float32)
    power = np.full(100, 10.0)  # the calibrated prior learns 10 W; the correction is ~0 everywhere ...
    power[:50] = 40.0  # ... except near the first half's rows, which say 4x
    near = X[:1] + np.float32(1e-3)
    far = X[:1] * np.float32(50.0)
    fading = AnchoredKNN(n_neighbors=1, interval_folds=0).fit(X, power)
    hard = AnchoredKNN(n_neighbors=1, interval_folds=0, correction_decay=0).fit(X, power)
    anchor = fading.prior_.predict(np.zeros((1, 1)))[0]
    assert fading.predict(near)[0] == pytest.approx(40.0, rel=0.01)
    far_detail = fading.predict_detail(far)
    assert far_detail.beyond_trust[0] and not far_detail.prior_only[0]
    assert anchor < far_detail.power_watts[0] < 40.0
    hard_detail = hard.predict_detail(far)
    assert hard_detail.prior_only[0] and hard_detail.power_watts[0] == pytest.approx(anchor)


def _kinds_of_different_sizes(seed: int, rows: int = 240) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two kinds of pod told apart by one word column (column 9): idle services at about 0.1 W
    per container whatever they request, and batch pods drawing 6 W per requested vCPU. Column 8
    is the standardised log CPU request; physics first, as the encoder lays them out."""
    rng = np.random.default_rng(seed)
    batch = rng.random(rows) < 0.5
    vcpu = rng.choice([0.25, 0.5, 1.0, 2.0, 4.0], rows)
    power = np.where(batch, 6.0 * vcpu, 0.1) * np.exp(0.05 * rng.standard_normal(rows))
    X = np.hstack([_physics(vcpu, np.zeros(rows)), np.log(vcpu)[:, None], batch[:, None].astype(float)])
    return X.astype(np.float32), power, batch


def test_local_slopes_answer_for_the_querys_own_size() -> None:
    X, power, batch = _kinds_of_different_sizes(21)
    query_vcpu = np.array([0.25, 4.0, 0.25, 4.0])
    query_batch = np.array([1.0, 1.0, 0.0, 0.0])
    query = np.hstack([_physics(query_vcpu, np.zeros(4)), np.log(query_vcpu)[:, None], query_batch[:, None]]).astype(np.float32)
    expected = np.where(query_batch == 1, 6.0 * query_vcpu, 0.1)
    # Neighbours by the word column alone: every neighbour is of the query's kind, of any size.
    words_only = dict(n_neighbors=20, physics_columns=8, interval_folds=0, unsearched_columns=(8,), trust_factor=None)
    mean_only = AnchoredKNN(target="log_power", **words_only).fit(X, power)
    local = AnchoredKNN(target="log_power", local_columns=(8,), local_alpha=0.01, **words_only).fit(X, power)
    assert np.allclose(local.predict(query), expected, rtol=0.15)
    # Without slopes a batch pod gets its kind's typical size: off by far more at either end.
    assert np.all(np.abs(np.log(mean_only.predict(query)[:2] / expected[:2])) > 0.9)
    # The local ridge's slope is the neighbourhood's own: about 0 for the idle kind.
    assert local.predict(query)[2] == pytest.approx(local.predict(query)[3], rel=0.15)


def test_local_adjustment_is_the_weighted_ridge_fit_and_stays_within_the_neighbours_range() -> None:
    weights = np.array([[1.0, 1.0, 1.0, 1.0]])
    sizes = np.array([[[0.0], [1.0], [2.0], [3.0]]])
    targets = 2.0 * sizes[:, :, 0]  # slope 2, mean 3 at size 1.5
    move = webhook.model.knn.local_adjustment(weights, targets, sizes, np.array([[2.5]]), alpha=1e-9)
    assert move[0] == pytest.approx(2.0, rel=1e-6)  # 3 + 2 = the line at 2.5
    # Beyond the neighbours the line stops at the nearest of them: 6 at size 3, 0 at size 0, not 197.
    far = webhook.model.knn.local_adjustment(weights, targets, sizes, np.array([[100.0]]), alpha=1e-9)
    assert far[0] == pytest.approx(3.0, rel=1e-6)
    below = webhook.model.knn.local_adjustment(weights, targets, sizes, np.array([[-100.0]]), alpha=1e-9)
    assert below[0] == pytest.approx(-3.0, rel=1e-6)
    flat = webhook.model.knn.local_adjustment(weights, np.zeros((1, 4)), sizes, np.array([[2.5]]), alpha=1e-9)
    assert flat[0] == 0.0


def test_a_neighbour_of_negligible_weight_widens_neither_the_range_nor_the_bound() -> None:
    # Two close neighbours (corrections 0.5 and 1.1 at sizes 0 and 1) and a far one at size 10 whose
    # kernel weight is next to nothing: a query at size 20 is taken at size 1, the close ones' edge.
    weights = np.array([[1.0, 0.9, 1e-9]])
    sizes = np.array([[[0.0], [1.0], [10.0]]])
    targets = np.array([[0.5, 1.1, -0.35]])
    centre = 0.9 / 1.9
    move = webhook.model.knn.local_adjustment(weights, targets, sizes, np.array([[20.0]]), alpha=1e-9)
    assert move[0] == pytest.approx(0.6 * (1.0 - centre), rel=1e-3)
    # A far neighbour that does weigh something counts: the query is taken at size 10, on the
    # weighted least-squares line through all three.
    heavier_weights = np.array([1.0, 0.9, 0.2])
    heavier = webhook.model.knn.local_adjustment(heavier_weights[None, :], targets, sizes, np.array([[20.0]]),
                                                 alpha=1e-9)
    slope, intercept = np.polyfit(sizes[0, :, 0], targets[0], 1, w=np.sqrt(heavier_weights))
    mean_target = np.average(targets[0], weights=heavier_weights)
    assert heavier[0] == pytest.approx(slope * 10.0 + intercept - mean_target, rel=1e-6)


def test_auto_trusts_its_neighbours_log_power_only_within_its_reach_of_their_priors() -> None:
    share = webhook.model.knn._log_power_share
    spreads = np.array([0.05]), np.array([0.3])  # the neighbours' log powers agree more than their corrections
    anchors, weights = np.log(np.array([[140.0, 270.0]])), np.ones((1, 2))
    unlimited = 0.3**2 / (0.3**2 + 0.05**2)
    near = share(*spreads, np.log(np.array([200.0])), anchors, weights, 0.3)
    assert near[0] == pytest.approx(unlimited)
    # An 8-GPU pod whose prior is 5x its 1-2 GPU neighbours': their agreement says little of it.
    far = share(*spreads, np.log(np.array([1090.0])), anchors, weights, 0.3)
    distance = abs(np.log(1090.0) - anchors.mean())
    assert far[0] == pytest.approx(unlimited * (np.std(anchors) + 0.3) / distance)
    assert far[0] < 0.5 * unlimited
    # Without a reach (the default, and every artifact from before it) the share is the spreads' alone.
    assert share(*spreads, np.log(np.array([1090.0])), anchors, weights, None)[0] == pytest.approx(unlimited)
    with pytest.raises(ValueError, match="log_power_reach"):
        AnchoredKNN(target="auto", log_power_reach=-1.0).fit(np.eye(3), np.ones(3))


def test_log_power_with_a_reach_takes_the_prior_s_scaling_far_beyond_its_neighbours() -> None:
    # Batch pods of 0.25-1 vCPU drawing 6 W a vCPU, and a query of 16 vCPU: its neighbours' log
    # power says ~4 W; their correction, on the prior that scales with the request, says far more.
    rng = np.random.default_rng(31)
    vcpu = rng.choice([0.25, 0.5, 1.0], 120)
    power = 6.0 * vcpu * np.exp(0.05 * rng.standard_normal(120))
    X = np.hstack([_physics(vcpu, np.zeros(120)), np.ones((120, 1))]).astype(np.float32)
    query = np.hstack([_physics(np.array([16.0]), np.zeros(1)), np.ones((1, 1))]).astype(np.float32)
    common = dict(target="log_power", n_neighbors=10, physics_columns=8, interval_folds=0, trust_factor=None)
    unlimited = AnchoredKNN(**common).fit(X, power).predict(query)[0]
    reached = AnchoredKNN(log_power_reach=0.3, **common).fit(X, power)
    assert reached.training_log_anchors_.shape == (120,)
    assert unlimited < 8.0  # the neighbours' own size
    assert reached.predict(query)[0] > 3 * unlimited
    # Within the neighbours' own priors the reach changes nothing.
    inside = np.hstack([_physics(np.array([0.5]), np.zeros(1)), np.ones((1, 1))]).astype(np.float32)
    assert reached.predict(inside)[0] == pytest.approx(AnchoredKNN(**common).fit(X, power).predict(inside)[0])


def test_auto_takes_the_scaling_the_neighbours_agree_on() -> None:
    X, power, batch = _kinds_of_different_sizes(22, rows=400)
    fresh_X, fresh_power, _ = _kinds_of_different_sizes(24, rows=400)
    common = dict(n_neighbors=8, physics_columns=8, interval_folds=0, unsearched_columns=(8,), trust_factor=None)
    errors = {}
    for target in ("correction", "log_power", "auto"):
        model = AnchoredKNN(target=target, **common).fit(X, power)
        errors[target] = float(np.mean(np.abs(np.log(model.predict(fresh_X) / fresh_power))))
    # Idle pods' log power agrees among neighbours of any size, batch pods' correction to the prior
    # (which scales with the request) does: auto is better than either target alone.
    assert errors["auto"] < 0.8 * min(errors["correction"], errors["log_power"]), errors


@parametrize_with_checks([AnchoredKNN(n_neighbors=3, interval_folds=2), CalibratedPrior(),
                          AnchoredKNN(n_neighbors=4, interval_folds=2, target="auto", local_columns=(0,), trust_factor=None)])
def test_scikit_learn_estimator_contract(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)


def _blas_threads_after_a_search(environment: dict[str, str]) -> list[int]:
    script = (
        "import json, numpy as np, threadpoolctl\n"
        "from webhook.model.knn import BruteForceIndex\n"
        "BruteForceIndex(np.eye(3, dtype=np.float32)).kneighbors(np.ones((1, 3)), 1)\n"
        "print(json.dumps([p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']))\n"
    )
    inherited = {k: v for k, v in os.environ.items() if k not in webhook.model.arrays.BLAS_THREAD_VARIABLES}
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


def test_one_sparse_query_at_a_time_finds_the_exact_neighbours() -> None:
    """The webhook's case: a query equal to most rows' typical value in most columns takes the
    column-by-column path; it must rank exactly as the exact reference, twins and ties included."""
    rng = np.random.default_rng(21)
    training = np.zeros((3000, 150), dtype=np.float32)
    training[:, :12] = rng.standard_normal((3000, 12))  # dense numeric columns
    hot = rng.integers(12, 150, size=(3000, 6))  # a few one-hot / hashed-token columns per row
    np.put_along_axis(training, hot, 1.0, axis=1)
    training[100:140] = training[7]  # twins
    index = BruteForceIndex(training)
    near = training[[5, 9]].copy()
    near[:, :12] += np.float32(1e-3)
    queries = np.vstack([training[[0, 7, 120, 2999]], near])
    stranger = np.zeros((1, 150), dtype=np.float32)
    stranger[0, :12] = rng.standard_normal(12)
    stranger[0, [20, 60, 140]] = 1.0
    queries = np.vstack([queries, stranger]).astype(np.float32)
    for query in queries:
        shifted = query - index.shift.offsets
        assert np.count_nonzero(shifted) * 3 <= query.size  # the sparse path, not the GEMV
        distances, rows = index.kneighbors(query[None, :], K)
        expected_distances, expected_rows = _exact_reference(training, query[None, :], K)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(distances, expected_distances, rtol=1e-12, atol=1e-12)
