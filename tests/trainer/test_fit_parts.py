"""Targets, folds, conformal offsets and the method comparison, on small synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.trainer.synthetic_dataset import dataset, request, scaling_pods
from trainer.crossval import NotEnoughWorkloads, compare_methods, fit_pipeline, grouped_folds, recall_params
from trainer.targets import build_targets
from webhook.model.artifact import TrainedModel
from webhook.model.intervals import conformal_offsets
from webhook.model.prior import PriorPredictor


def test_targets_average_windows_with_energy_and_leave_out_pods_with_too_few() -> None:
    web, job = request("web", 500), request("job", 100)
    table = build_targets(dataset([(web, "web-1", [60, 120, 0, 180, 60, 0]), (job, "job-1", [30, 0, 0, 0, 0, 0])]),
                          unit="pod", min_active_windows=4)
    assert table.frame["pod"].tolist() == ["web-1"]
    assert table.power_watts.tolist() == [pytest.approx(420 / 240)]  # 0 J windows: not running, not 0 W
    assert (table.excluded_pods, table.excluded_rows, table.source_rows) == (1, 6, 6)
    assert table.requests == [web] and table.groups.tolist() == ["apps/Deployment/web"]


def test_workload_targets_average_the_pods_of_one_spec() -> None:
    web, job = request("web", 500), request("job", 100)
    table = build_targets(dataset([(web, "web-1", [60] * 5), (web, "web-2", [180] * 5), (job, "job-1", [30] * 5)]))
    assert table.unit == "workload" and len(table.requests) == 2
    assert dict(zip(table.frame["workload_name"], table.power_watts)) == {"job": 0.5, "web": 2.0}
    assert (table.pods, table.workloads, table.source_rows) == (3, 2, 15)
    assert table.per_workload()["pods"].tolist() == [2 - 1, 2]  # job: 1 pod, web: 2 pods


def test_pod_day_targets_split_at_midnight_utc() -> None:
    web = request("web", 500)
    table = build_targets(dataset([(web, "web-1", [60, 60, 120, 120])]), unit="pod-day", min_active_windows=1)
    assert table.frame["period"].tolist() == ["2025-10-30", "2025-10-31"]
    assert table.power_watts.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="target unit"):
        build_targets(dataset([(web, "web-1", [60])]), unit="window")


def test_training_data_hash_ignores_row_order() -> None:
    pods = [(request("a", 100), "a-1", [60.0] * 5), (request("b", 900), "b-1", [600.0] * 5)]
    assert build_targets(dataset(pods)).data_sha256() == build_targets(dataset(pods[::-1])).data_sha256()
    changed = [(request("a", 100), "a-1", [61.0] * 5), pods[1]]
    assert build_targets(dataset(changed)).data_sha256() != build_targets(dataset(pods)).data_sha256()


def test_conformal_offsets_use_the_finite_sample_ranks() -> None:
    residuals = np.arange(1, 20, dtype=float) - 10  # -9 .. 9, n = 19
    offsets = conformal_offsets(residuals)
    # floor(20 * 0.1) = 2nd smallest, ceil(20 * 0.9) = 18th smallest.
    assert (offsets.rank_p10, offsets.rank_p90) == (2, 18)
    assert (offsets.log_offset_p10, offsets.log_offset_p90) == (-8.0, 8.0)
    assert offsets.finite_sample_guarantee
    few = conformal_offsets(np.array([0.5, 1.0, 2.0]))
    assert not few.finite_sample_guarantee and few.rank_p90 == 3
    assert few.log_offset_p10 == 0.0  # all residuals positive: p10 still brackets the point


def test_folds_never_split_a_workload() -> None:
    groups = np.repeat([f"w{i}" for i in range(4)], 3)
    folds = grouped_folds(groups)
    assert folds.scheme.startswith("leave-one-group-out") and len(folds.splits) == 4
    many = np.repeat([f"w{i}" for i in range(12)], 2)
    folds = grouped_folds(many)
    assert folds.scheme.startswith("GroupKFold") and len(folds.splits) == 5
    for train, test in folds.splits:
        assert not set(many[train]) & set(many[test])
    assert (folds.fold_of >= 0).all()
    with pytest.raises(NotEnoughWorkloads):
        grouped_folds(np.array(["only", "only"]))


def test_the_served_model_beats_the_spec_blind_baselines_when_power_follows_the_spec() -> None:
    pods = scaling_pods(14)
    table = build_targets(dataset(pods))
    assert len(table.requests) == 14  # one target per workload spec, the mean of its two pods
    comparison = compare_methods(table, k_grid=(1, 2, 3))
    by_name = {m.method: m for m in comparison.metrics}
    served = comparison.metrics[0]
    assert served.method.startswith("served: ")
    constant = by_name["constant: mean of log power"]
    embedded = by_name["prior ccf-prior-v3 (embedded)"]
    assert {"calibrated prior", "prior ccf-prior-v1 (first shipped)", "prior ccf-prior-v2 (CCF's 50% CPU utilisation)",
            "gradient-boosted trees on log power, same features"} <= set(by_name)
    assert served.mean_abs_log_error < constant.mean_abs_log_error / 2
    assert served.mean_abs_log_error < embedded.mean_abs_log_error / 2
    # The served candidate is the grid's best, and every candidate was scored on the same folds.
    assert served.mean_abs_log_error == pytest.approx(min(p.mean_abs_log_error for p in comparison.grid), rel=1e-9)
    assert len(comparison.grid) == 3 + 2 * 2 * 3  # the embedded prior, the calibrated prior, recall, then targets x weightings x k
    assert (served.targets, served.pods, served.workloads, served.pod_windows) == (14, 28, 14, 168)
    assert served.coverage_p10_p90 is not None and by_name[next(m for m in by_name if m.startswith("prototype"))].coverage_p10_p90 is None
    assert comparison.scheme == "GroupKFold (5 folds, 14 groups)"


def test_targets_from_categorical_text_columns_equal_those_from_text() -> None:
    """fit reads the dataset's text columns as categoricals, in the Parquet dictionary's order."""
    text = dataset(scaling_pods(6, pods_per_workload=2))  # windows from 23:58 UTC: two days
    categorical = text.astype({c: "category" for c in ["namespace", "workload_kind", "workload_name", "pod", "spec_hash",
                                                       "request_json", "join_rule"]})
    for column in ["pod", "request_json"]:
        categorical[column] = categorical[column].cat.reorder_categories(categorical[column].cat.categories[::-1])
    for unit in ("workload", "pod", "pod-day"):
        expected, table = build_targets(text, unit, 1), build_targets(categorical, unit, 1)
        pd.testing.assert_frame_equal(table.frame, expected.frame, check_exact=True)
        assert table.requests == expected.requests and table.data_sha256() == expected.data_sha256()
    assert build_targets(categorical, "pod-day", 1).frame["period"].unique().tolist() == ["2025-10-30", "2025-10-31"]


def test_specs_with_one_hash_but_different_json_stay_apart() -> None:
    web = request("web", 500)
    annotated = web.model_copy(update={"annotations": {"team": "shop"}})  # annotations are outside the spec hash
    table = build_targets(dataset([(web, "web-1", [60] * 5), (annotated, "web-2", [180] * 5)]))
    assert len(set(table.frame["spec_hash"])) == 1
    assert dict(zip((r.annotations.get("team", "") for r in table.requests), table.power_watts)) == {"": 1.0, "shop": 3.0}


def test_fit_reads_the_run_dataset_before_the_pod_models_cross_validation(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import trainer.fit as fit

    wrong = tmp_path / "runs.parquet"  # `train runs` output, not `train dataset --runs`'
    pd.DataFrame({"namespace": ["a"], "run_seconds": [60.0]}).to_parquet(wrong)
    monkeypatch.setattr(fit, "read_targets", lambda *args: (None, {}))

    def cross_validation_started(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the pod model was fitted before the run dataset was read")

    monkeypatch.setattr(fit, "fit_table", cross_validation_started)
    with pytest.raises(ValueError, match="cannot read it as a run dataset"):
        fit.run_fit(tmp_path / "dataset.parquet", tmp_path / "model.esmodel", runs_dataset_path=wrong)


def test_recall_answers_a_measured_spec_from_its_measurement_and_anything_else_as_the_embedded_prior() -> None:
    """`recall_params`: the same spec deployed elsewhere (another namespace, which is not a feature)
    gets what it was measured at; a spec unlike every training spec gets the embedded prior itself."""
    pods = [(request(f"svc-{i}", 100 * (i + 1), image=f"example/svc{i}:1"), f"svc-{i}-0", [6.0 * (i + 1)] * 6)
            for i in range(8)]
    table = build_targets(dataset(pods))
    model = TrainedModel(fit_pipeline(recall_params(5), table), "recall")
    elsewhere = pods[3][0].model_copy(update={"namespace": "other-cluster"})
    new = request("new", 3000, image="another/thing:2")
    recalled, unknown = model.predict([elsewhere, new])
    assert recalled.power_watts == pytest.approx(table.power_watts[3], rel=1e-5)  # 0.4 W measured
    assert recalled.fallback_reason is None
    assert unknown.power_watts == pytest.approx(PriorPredictor().predict_one(new).power_watts, rel=1e-6)
    assert unknown.fallback_reason is not None and unknown.fallback_reason.endswith("the embedded prior answers")
