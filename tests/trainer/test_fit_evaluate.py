"""fit and evaluate on synthetic datasets written to Parquet: the artifact, its card, and the
evaluation of a model on data it has and has not seen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.synthetic_dataset import dataset, request, scaling_pods
from trainer.dataset import write_dataset
from trainer.evaluate import run_evaluate
from trainer.fit import FitSettings, run_fit
from webhook.model.artifact import load_model
from webhook.model.features import FEATURE_VERSION


def written(tmp_path: Path, name: str, pods: list) -> Path:  # type: ignore[type-arg]
    return write_dataset(dataset(pods), tmp_path / name)


def test_fit_writes_a_calibrated_artifact_and_its_card(tmp_path: Path) -> None:
    pods = scaling_pods(12)
    outcome = run_fit(written(tmp_path, "train.parquet", pods), tmp_path / "model.joblib", FitSettings(k_grid=(1, 2, 3)))
    card = json.loads((tmp_path / "model.card.json").read_text())
    assert card["artifact"] == {"file": "model.joblib", "sha256": outcome.sha256, "feature_version": FEATURE_VERSION}
    assert card["cross_validation"]["scheme"] == "GroupKFold (5 folds, 12 groups)"
    assert card["data"]["targets"] == 12 and card["data"]["pods"] == 24 and card["data"]["pod_windows"] == 144
    assert card["data"]["first_window_start"].startswith("2025-10-30T23:58")
    low, high = card["model"]["interval"]["log_offsets_p10_p90"]
    assert low < 0 < high and "inside fit" in card["model"]["interval"]["method"]
    assert not any("trust radius 0" in w for w in card["warnings"])
    assert card["cross_validation"]["versus_priors"]["targets"] == 12

    model = load_model(tmp_path / "model.joblib", expected_sha256=outcome.sha256)
    assert model.pipeline[-1].interval_log_offsets_ == (low, high)
    prediction = model.predict([pods[0][0]])[0]
    assert prediction.basis == "model"
    assert prediction.power_watts_p10 < prediction.power_watts < prediction.power_watts_p90
    assert model.metadata["model_id"] == outcome.model_id == card["model_id"]


def test_evaluate_tells_training_data_from_new_workloads(tmp_path: Path) -> None:
    train = written(tmp_path, "train.parquet", scaling_pods(12))
    run_fit(train, tmp_path / "model.joblib", FitSettings(k_grid=(2,)))
    seen = run_evaluate(tmp_path / "model.joblib", train, tmp_path / "seen")
    assert seen.in_sample and seen.workloads_seen_in_training == 12
    new_pods = [(request(f"new-{i}", cpu), f"new-{i}-0", [60.0 * (1 + 8 * cpu / 1000)] * 6)
                for i, cpu in enumerate((150, 300, 1200, 5000))]
    fresh = run_evaluate(tmp_path / "model.joblib", written(tmp_path, "new.parquet", new_pods), tmp_path / "new")
    assert not fresh.in_sample and fresh.workloads_seen_in_training == 0
    assert "0 of the 4 workloads evaluated were in the training data" in fresh.report["note"]
    served, prior, second_prior, first_prior, calibrated = fresh.metrics
    assert prior.method == "prior ccf-prior-v3 (embedded)" and first_prior.method == "prior ccf-prior-v1 (first shipped)"
    assert second_prior.method == "prior ccf-prior-v2 (CCF's 50% CPU utilisation)"
    assert calibrated.method.startswith("calibrated prior") and calibrated.coverage_p10_p90 is None
    assert served.targets == prior.targets == 4 and served.mean_abs_log_error < prior.mean_abs_log_error
    assert {t["basis"] for t in fresh.report["targets"]} <= {"model", "prior"}
    for name in ("predicted_vs_measured.png", "residuals.png", "evaluation.md", "evaluation.json", "evaluation.html"):
        assert (tmp_path / "new" / name).stat().st_size > 0


def test_one_workload_fits_without_cross_validation_and_says_so(tmp_path: Path) -> None:
    pods = scaling_pods(1, pods_per_workload=3)
    outcome = run_fit(written(tmp_path, "one.parquet", pods), tmp_path / "model.joblib")
    assert "skipped" in outcome.card["cross_validation"] and outcome.comparison is None
    assert any("no interval calibration" in w for w in outcome.card["warnings"])
    model = load_model(tmp_path / "model.joblib")
    assert model.pipeline[-1].interval_log_offsets_ is None
    assert model.predict([pods[0][0]])[0].basis == "model"


def test_per_pod_targets_of_replicated_specs_keep_a_trust_radius(tmp_path: Path) -> None:
    """With one row per pod every training spec has twins at distance 0; the trust radius is
    measured between distinct specs, so it stays open and new specs are predicted by the model."""
    outcome = run_fit(written(tmp_path, "train.parquet", scaling_pods(12)), tmp_path / "model.joblib",
                      FitSettings(k_grid=(2,), target_unit="pod"))
    assert outcome.card["model"]["trust_radius"] > 0
    assert not any("trust radius 0" in w for w in outcome.card["warnings"])
    assert outcome.comparison is not None and outcome.comparison.metrics[0].prior_fallback_share < 1.0


def test_nothing_to_fit_is_an_error(tmp_path: Path) -> None:
    idle = [(request("idle", 100), "idle-0", [0.0] * 6)]
    with pytest.raises(ValueError, match="no training targets"):
        run_fit(written(tmp_path, "idle.parquet", idle), tmp_path / "model.joblib")
    assert not (tmp_path / "model.joblib").exists()
