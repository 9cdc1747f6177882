"""What makes `train fit` scale, checked against the plain way: candidates sharing one encoding per
fold give the Pipelines, predictions and offsets that fitting each Pipeline on its own gives; past
`selection_max_groups` groups the grid is scored on a seeded sample of whole groups, and the card
says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.synthetic_dataset import dataset, scaling_pods
from trainer.baselines import from_pod_predictions
from trainer.crossval import (
    candidate_params,
    compare_methods,
    describe_params,
    fit_pipeline,
    fit_pipelines,
    grouped_folds,
    index_mask,
    out_of_fold,
    selection_sample,
    served_out_of_fold,
)
from trainer.dataset import write_dataset
from trainer.fit import FitSettings, run_fit
from trainer.model_card import render_markdown
from trainer.targets import TrainingTable, build_targets
from webhook.model.artifact import TrainedModel, build_pipeline
from webhook.model.intervals import grouped_conformal_offsets


def plain_fit(params: dict[str, Any], table: TrainingTable, interval_folds: int = 5) -> Any:
    """`fit_pipeline` as it was: Pipeline.fit per candidate, and per calibration fold."""
    pipeline = build_pipeline().set_params(**params, knn__interval_folds=0)
    pipeline.fit(table.requests, table.power_watts)
    n = len(table.requests)

    def held_out(train_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
        inner = plain_fit(params, table.subset(index_mask(n, train_index)), 0)
        return np.log(table.power_watts[test_index]) - np.log(inner.predict([table.requests[i] for i in test_index]))

    offsets = grouped_conformal_offsets(table.groups, held_out, folds=interval_folds,
                                        quantiles=pipeline[-1].interval_quantiles)
    if offsets is not None:
        pipeline[-1].interval_log_offsets_ = (offsets.log_offset_p10, offsets.log_offset_p90)
    return pipeline


def plain_served(params: dict[str, Any], interval_folds: int):  # type: ignore[no-untyped-def]
    def predict(train: TrainingTable, test: TrainingTable):  # type: ignore[no-untyped-def]
        model = TrainedModel(pipeline=plain_fit(params, train, interval_folds), model_id="plain")
        return from_pod_predictions(model.predict(test.requests))

    return predict


@pytest.fixture(scope="module")
def table() -> TrainingTable:
    return build_targets(dataset(scaling_pods(14)))


def test_candidates_sharing_an_encoding_predict_what_each_pipeline_fitted_alone_predicts(table: TrainingTable) -> None:
    folds = grouped_folds(table.groups)
    # Block weights change the encoder: the grid switches encodings between candidates.
    candidates = candidate_params((1, 3, 5), True, min(len(train) for train, _ in folds.splits))
    assert len({tuple(sorted((k, v) for k, v in p.items() if k.startswith("features__"))) for p in candidates}) > 2
    shared = served_out_of_fold(table, folds, candidates, interval_folds=0)
    for params, prediction in zip(candidates, shared):
        plain = out_of_fold(table, folds, plain_served(params, 0))
        for name in ("power_watts", "p10_watts", "p90_watts", "prior_fallback"):
            np.testing.assert_array_equal(getattr(prediction, name), getattr(plain, name), err_msg=f"{name} of {params}")


def test_pipelines_fitted_together_calibrate_the_offsets_each_would_alone(table: TrainingTable) -> None:
    folds = grouped_folds(table.groups)
    candidates = candidate_params((2, 5), True, min(len(train) for train, _ in folds.splits))
    chosen = [candidates[0], candidates[1], candidates[5], candidates[-1], candidates[-7]]
    together = fit_pipelines(chosen, table)
    for params, pipeline in zip(chosen, together):
        alone = plain_fit(params, table)
        assert pipeline[-1].interval_log_offsets_ == alone[-1].interval_log_offsets_ is not None
        np.testing.assert_array_equal(pipeline.predict(table.requests), alone.predict(table.requests))
    assert fit_pipeline(chosen[2], table)[-1].interval_log_offsets_ == together[2][-1].interval_log_offsets_
    # And out of fold with intervals, as the reported candidates are scored.
    for params, prediction in zip(chosen[:2], served_out_of_fold(table, folds, chosen[:2])):
        plain = out_of_fold(table, folds, plain_served(params, 5))
        np.testing.assert_array_equal(prediction.p10_watts, plain.p10_watts)
        np.testing.assert_array_equal(prediction.p90_watts, plain.p90_watts)


def test_a_sample_of_whole_groups_is_seeded_and_only_taken_beyond_the_limit() -> None:
    groups = np.repeat([f"w{i:02d}" for i in range(30)], 3)
    assert selection_sample(groups, 30) is None and selection_sample(groups, 0) is None
    sample = selection_sample(groups, 8)
    assert sample is not None and len(np.unique(groups[sample])) == 8 and sample.sum() == 24
    assert np.array_equal(sample, selection_sample(groups[::-1], 8)[::-1])  # the groups drawn, not the row order
    assert not np.array_equal(sample, selection_sample(groups, 8, seed=1))


def test_beyond_the_limit_the_grid_is_chosen_on_a_sample_and_everything_reported_on_all(table: TrainingTable) -> None:
    every = compare_methods(table, k_grid=(1, 2, 3), selection_max_groups=0)
    at_limit = compare_methods(table, k_grid=(1, 2, 3), selection_max_groups=14)
    assert [g.mean_abs_log_error for g in at_limit.grid] == [g.mean_abs_log_error for g in every.grid]
    assert at_limit.to_dict()["selection"] == every.to_dict()["selection"] and not every.selection.sampled

    sampled = compare_methods(table, k_grid=(1, 2, 3), selection_max_groups=8)
    selection = sampled.selection
    assert (selection.groups, selection.of_groups, selection.targets, selection.of_targets) == (8, 14, 8, 14)
    sample = selection_sample(table.groups, 8)
    on_sample = compare_methods(table.subset(sample), k_grid=(1, 2, 3), selection_max_groups=0)
    assert [g.mean_abs_log_error for g in sampled.grid] == [g.mean_abs_log_error for g in on_sample.grid]
    # The reported methods are scored on every target, on the folds of every group.
    assert {m.targets for m in sampled.metrics} == {14} and sampled.scheme == every.scheme
    served = sampled.metrics[0]
    plain = out_of_fold(table, grouped_folds(table.groups), plain_served(sampled.chosen, 5))
    assert served.mean_abs_log_error == pytest.approx(
        float(np.mean(np.abs(np.log(plain.power_watts) - np.log(table.power_watts)))), rel=1e-12)
    # The sample screens; on all groups the served one is the best of the finalists: the sample's
    # best overall and on each target, and the embedded and calibrated priors.
    grid = [g.params for g in on_sample.grid]
    finalists = [on_sample.chosen, grid[0], grid[1]] + [p for p in grid if p["knn__n_neighbors"] > 0 and any(
        describe_params(p) == m.method for m in sampled.metrics[1:3])]
    assert len(finalists) == 5 and sampled.chosen in finalists
    folds = grouped_folds(table.groups)
    errors = [float(np.mean(np.abs(np.log(out_of_fold(table, folds, plain_served(p, 0)).power_watts)
                                   - np.log(table.power_watts)))) for p in finalists]
    assert served.mean_abs_log_error == pytest.approx(min(errors), rel=1e-12)
    text = sampled.to_dict()["selection"]
    assert "sample of 8 of the 14 groups" in text and "the lowest error there serves" in text


def test_the_card_says_on_how_many_workloads_the_candidates_were_compared(tmp_path: Path) -> None:
    path = write_dataset(dataset(scaling_pods(14)), tmp_path / "train.parquet")
    outcome = run_fit(path, tmp_path / "model.esmodel", FitSettings(k_grid=(1, 2), selection_max_groups=8))
    card = json.loads(outcome.card_paths[0].read_text())
    rows = card["cross_validation"]["selection_rows"]
    assert rows["sampled"] and (rows["groups"], rows["of_groups"]) == (8, 14)
    markdown = render_markdown(card)
    assert "chosen by out-of-fold mean absolute error of log power" in markdown
    assert "on a seeded sample of 8 of the 14 groups: 8 of 14 targets" in markdown
    assert card["cross_validation"]["versus_priors"]["workloads"] == 14
