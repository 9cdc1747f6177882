"""The trainer's `fit` step: the Pipeline the webhook loads, chosen and checked by grouped CV.

`webhook.model.artifact.build_pipeline` (PodFeatureEncoder -> LogPowerKNN: KNN on log power, distance
weighted) is fitted on per-pod targets (`trainer.targets`: why not raw windows), with k and
optionally the encoder's block weights chosen by grouped cross-validation (`trainer.crossval`),
then calibrated with split-conformal offsets from the out-of-fold residuals, and written as one
artifact with `webhook.model.artifact.save_model`, plus a model card (JSON and Markdown) beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from trainer.crossval import (
    DEFAULT_K_GRID,
    DEFAULT_LOGO_MAX_GROUPS,
    DEFAULT_MAX_SPLITS,
    Comparison,
    ConformalOffsets,
    KnnConfig,
    NotEnoughWorkloads,
    compare_methods,
    conformal_offsets,
    fit_knn,
)
from trainer.dataset import read_dataset
from trainer.model_card import library_versions, write_card
from trainer.targets import DEFAULT_MIN_ACTIVE_WINDOWS, DEFAULT_TARGET_UNIT, TrainingTable, build_targets
from trainer.text_embedding import default_text_embedding
from webhook.model.features import CATEGORICAL_FEATURES, FEATURE_VERSION, NUMERIC_FEATURES
from webhook.model.artifact import save_model
from webhook.model.prior import PriorPredictor

DEFAULT_K_WITHOUT_CV = 5


@dataclass(frozen=True)
class FitSettings:
    k_grid: tuple[int, ...] = DEFAULT_K_GRID
    weight_grid: bool = False
    target_unit: str = DEFAULT_TARGET_UNIT
    min_active_windows: int = DEFAULT_MIN_ACTIVE_WINDOWS
    text_embedding: str = "auto"  # the prototype baseline's: auto = SBERT when installed, else TF-IDF
    max_splits: int = DEFAULT_MAX_SPLITS
    logo_max_groups: int = DEFAULT_LOGO_MAX_GROUPS
    progress: bool = False


@dataclass
class FitOutcome:
    model_path: Path
    card_paths: tuple[Path, Path]
    model_id: str
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)
    comparison: Comparison | None = None


def make_model_id(table: TrainingTable, created: datetime) -> str:
    return f"knn-{created.strftime('%Y%m%d%H%M%S')}-{table.data_sha256()[:8]}"


def compare(table: TrainingTable, settings: FitSettings, prior: PriorPredictor | None = None) -> Comparison:
    embedding = default_text_embedding() if settings.text_embedding == "auto" else settings.text_embedding
    return compare_methods(table, k_grid=settings.k_grid, weight_grid=settings.weight_grid, text_embedding=embedding,
                           prior=prior, max_splits=settings.max_splits, logo_max_groups=settings.logo_max_groups,
                           progress=settings.progress)


def _data_section(table: TrainingTable, dataset: pd.DataFrame) -> dict[str, Any]:
    starts = pd.to_datetime(dataset["window_start"], utc=True)
    # As text: a categorical's value_counts would also list categories without rows, and order ties apart.
    join_rules = dataset[["namespace", "pod", "join_rule"]].drop_duplicates()["join_rule"].astype("str").value_counts()
    return {
        "first_window_start": starts.min().isoformat() if len(starts) else None,
        "last_window_start": starts.max().isoformat() if len(starts) else None,
        "target": table.describe_target(),
        "target_unit": table.unit,
        "min_active_windows": table.min_active_windows,
        "training_data_sha256": table.data_sha256(),
        "targets": len(table.requests),
        "pod_windows": table.source_rows,
        "pods": table.pods,
        "workloads": table.workloads,
        "excluded_pods": table.excluded_pods,
        "excluded_pod_windows": table.excluded_rows,
        "join_rules": {str(k): int(v) for k, v in join_rules.items()},
        "workload_list": sorted(set(table.groups.tolist())),
    }


MIN_WORKLOADS_FOR_TRUST = 10


def fit_warnings(table: TrainingTable, trust_radius: float, offsets: ConformalOffsets | None,
                 comparison: Comparison | None) -> list[str]:
    """What a reader of the card must know before trusting the model."""
    warnings = []
    if table.workloads < MIN_WORKLOADS_FOR_TRUST:
        warnings.append(f"only {table.workloads} workloads: the cross-validation metrics rest on very little data")
    if trust_radius == float("inf"):
        warnings.append("one distinct spec: no trust radius can be measured, so the model answers for any spec, "
                        "however far from its training data")
    if offsets is None:
        warnings.append("no cross-validation (fewer than 2 workloads): p10/p90 are the neighbours' spread, uncalibrated")
    elif not offsets.finite_sample_guarantee:
        warnings.append(f"{offsets.residuals} residuals are too few for the conformal finite-sample guarantee (needs 9)")
    if comparison is not None:
        served = comparison.metrics[0]
        if served.prior_fallback_share and served.prior_fallback_share > 0.5:
            warnings.append(f"in cross-validation the prior answered {served.prior_fallback_share:.0%} of held-out targets "
                            "(beyond the trust radius)")
    return warnings


def fit_table(table: TrainingTable, settings: FitSettings, *, dataset: pd.DataFrame, model_id: str | None = None,
              created: datetime | None = None) -> tuple[Any, dict[str, Any], Comparison | None]:
    """Fit and calibrate the final pipeline on all targets; return it with its card (no sha yet)."""
    if len(table.requests) == 0:
        raise ValueError("no training targets: the dataset joined nothing, or no pod had enough windows with energy")
    created = created or datetime.now(timezone.utc)
    comparison: Comparison | None = None
    offsets: ConformalOffsets | None = None
    try:
        comparison = compare(table, settings)
        config = comparison.chosen
        offsets = conformal_offsets(comparison.log_residuals)
        cv_section: dict[str, Any] = comparison.to_dict()
    except NotEnoughWorkloads as exc:
        config = KnnConfig(min(DEFAULT_K_WITHOUT_CV, len(table.requests)))
        cv_section = {"skipped": str(exc)}
    pipeline = fit_knn(config, table)
    knn = pipeline[-1]
    if offsets is not None:
        knn.calibrate(offsets.log_offset_p10, offsets.log_offset_p90)
    card = {
        "model_id": model_id or make_model_id(table, created),
        "warnings": fit_warnings(table, knn.trust_radius_, offsets, comparison),
        "created_at": created.isoformat(timespec="seconds"),
        "artifact": {"file": "", "sha256": "", "feature_version": FEATURE_VERSION},
        "data": _data_section(table, dataset),
        "model": {
            "description": "PodFeatureEncoder -> LogPowerKNN: k nearest neighbours on log power, distance weighted",
            "n_neighbors": config.n_neighbors,
            "encoder_params": config.encoder_params(),
            "features": {"numeric": list(NUMERIC_FEATURES), "categorical": list(CATEGORICAL_FEATURES),
                         "text_dimensions": pipeline[0].text_dimensions},
            "trust_radius": float(knn.trust_radius_),
            "interval": {
                "method": "split-conformal offsets on log power from grouped out-of-fold residuals" if offsets
                else "weighted 10th/90th percentile of the neighbours' power (not calibrated: no cross-validation)",
                "conformal": offsets.to_dict() if offsets else None,
            },
        },
        "cross_validation": cv_section,
        "libraries": library_versions(),
    }
    return pipeline, card, comparison


def run_fit(dataset_path: str | os.PathLike[str], out: str | os.PathLike[str], settings: FitSettings = FitSettings(),
            *, model_id: str | None = None, created: datetime | None = None) -> FitOutcome:
    """`energetiscope train fit`: dataset -> artifact (atomic, via save_model) + model card."""
    dataset = read_dataset(dataset_path, text_as_categories=True)  # millions of windows name a few thousand pods
    table = build_targets(dataset, settings.target_unit, settings.min_active_windows)
    pipeline, card, comparison = fit_table(table, settings, dataset=dataset, model_id=model_id, created=created)
    out_path = Path(out)
    sha256 = save_model(out_path, pipeline, card["model_id"], metadata=card)
    card["artifact"].update(file=out_path.name, sha256=sha256)
    paths = write_card(card, out_path)
    return FitOutcome(model_path=out_path, card_paths=paths, model_id=card["model_id"], sha256=sha256, card=card,
                      comparison=comparison)

