"""Split-conformal offsets: weighted ranks, groups weighing alike, and the grouped folds that feed them."""

from __future__ import annotations

import numpy as np
import pytest

from webhook.model.intervals import conformal_offsets, group_balanced_weights, grouped_conformal_offsets


def test_equal_weights_give_the_unweighted_ranks() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 9, 10, 19, 101, 1000):
        residuals = rng.normal(size=n)
        plain = conformal_offsets(residuals)
        weighted = conformal_offsets(residuals, weights=np.full(n, 7.0))
        assert weighted == plain
        if n >= 19:  # ceil((n + 1) * 0.9) and floor((n + 1) * 0.1) exactly
            assert plain.rank_p90 == int(np.ceil((n + 1) * 0.9 - 1e-9))
            assert plain.rank_p10 == int(np.floor((n + 1) * 0.1 + 1e-9))


def test_a_group_with_most_rows_does_not_set_every_groups_offsets() -> None:
    # 910 rows of one well-predicted group, 9 groups of 10 rows each 1.0 too low.
    residuals = np.concatenate([np.zeros(910), np.ones(90)])
    groups = np.array(["big"] * 910 + [f"small-{i // 10}" for i in range(90)])
    pooled = conformal_offsets(residuals)
    balanced = conformal_offsets(residuals, weights=group_balanced_weights(groups))
    assert pooled.log_offset_p90 == 0.0  # 91% of rows at 0: the big group decides
    assert balanced.log_offset_p90 == 1.0  # 9 of 10 groups miss by 1.0


def test_group_balanced_weights_sum_to_one_per_group() -> None:
    groups = np.array(["a", "b", "a", "c", "a", "b"])
    weights = group_balanced_weights(groups)
    for group in "abc":
        assert weights[groups == group].sum() == pytest.approx(1.0)


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="3 finite positive numbers"):
        conformal_offsets(np.zeros(3), weights=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="3 finite positive numbers"):
        conformal_offsets(np.zeros(3), weights=np.ones(2))


def test_grouped_offsets_never_calibrate_on_a_group_the_model_trained_on() -> None:
    groups = np.repeat([f"w{i}" for i in range(12)], 5)
    seen: list[tuple[set[str], set[str]]] = []

    def residuals(train_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
        seen.append((set(groups[train_index]), set(groups[test_index])))
        return np.linspace(-1.0, 1.0, len(test_index))

    offsets = grouped_conformal_offsets(groups, residuals, folds=4)
    assert offsets is not None and offsets.residuals == len(groups)
    assert len(seen) == 4
    for trained, tested in seen:
        assert not trained & tested
    assert set().union(*(tested for _, tested in seen)) == set(groups)


def test_grouped_offsets_sample_large_folds_and_need_two_groups() -> None:
    groups = np.repeat(["a", "b"], 5000)
    offsets = grouped_conformal_offsets(groups, lambda _, test: np.zeros(len(test)), folds=2, sample_rows=300)
    assert offsets is not None and offsets.residuals == 300
    assert grouped_conformal_offsets(np.array(["a"] * 10), lambda _, test: np.zeros(len(test))) is None


def test_rows_can_weigh_alike_instead_of_groups() -> None:
    groups = np.array(["big"] * 910 + [f"small-{i // 10}" for i in range(90)])
    residuals = np.concatenate([np.zeros(910), np.ones(90)])
    by_row = grouped_conformal_offsets(groups, lambda _, test: residuals[test], folds=5, sample_rows=10_000,
                                      groups_weigh_alike=False)
    by_group = grouped_conformal_offsets(groups, lambda _, test: residuals[test], folds=5, sample_rows=10_000)
    assert by_row is not None and by_group is not None
    assert (by_row.log_offset_p90, by_group.log_offset_p90) == (0.0, 1.0)
