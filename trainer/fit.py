"""The trainer's `fit` step: the Pipeline the webhook loads, chosen and checked by grouped CV.

`webhook.model.artifact.build_pipeline` (PodFeatureEncoder -> AnchoredKNN: a calibrated prior and
KNN on its correction, or on log power) is fitted on per-pod targets (`trainer.targets`: why not raw
windows), with the target, k and optionally the encoder's block weights chosen by grouped
cross-validation (`trainer.crossval`); `fit` itself calibrates p10/p90 (split-conformal on grouped
folds). It is written as one data-only artifact with `webhook.model.artifact.save_model`, plus a
model card (JSON and Markdown) beside it that says which candidate serves, how it compares with
the priors and a constant on the same folds, and on how many workloads; and the same as one HTML
page (`model.report.html`, `trainer.report_html`) with the out-of-fold plots and the join summary.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trainer.crossval import (
    DEFAULT_K_GRID,
    DEFAULT_LOGO_MAX_GROUPS,
    DEFAULT_MAX_SPLITS,
    DEFAULT_SELECTION_MAX_GROUPS,
    Comparison,
    NotEnoughWorkloads,
    compare_methods,
    describe_params,
    fit_pipeline,
    params_json,
)
from trainer.dataset import summary_path
from trainer.model_card import card_paths, library_versions, write_card
from trainer.plots import predicted_vs_measured, residuals
from trainer.report_html import card_evaluation_sets, write_report
from trainer.targets import DEFAULT_MIN_ACTIVE_WINDOWS, DEFAULT_TARGET_UNIT, DatasetFacts, TrainingTable, read_targets
from trainer.text_embedding import default_text_embedding
from webhook.model.features import CATEGORICAL_FEATURES, FEATURE_VERSION, NUMERIC_FEATURES
from trainer.run_fit import fit_runs, read_run_targets
from webhook.model.artifact import TrainedModel, save_model
from webhook.model.prior import PHYSICS_COLUMNS, PriorPredictor

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
    selection_max_groups: int = DEFAULT_SELECTION_MAX_GROUPS  # beyond it, the grid is scored on a sample of groups
    progress: bool = False


@dataclass
class FitOutcome:
    model_path: Path
    card_paths: tuple[Path, Path]
    model_id: str
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)
    comparison: Comparison | None = None
    report_path: Path | None = None


def make_model_id(table: TrainingTable, created: datetime) -> str:
    return f"knn-{created.strftime('%Y%m%d%H%M%S')}-{table.data_sha256()[:8]}"


def compare(table: TrainingTable, settings: FitSettings, prior: PriorPredictor | None = None) -> Comparison:
    embedding = default_text_embedding() if settings.text_embedding == "auto" else settings.text_embedding
    return compare_methods(table, k_grid=settings.k_grid, weight_grid=settings.weight_grid, text_embedding=embedding,
                           prior=prior, max_splits=settings.max_splits, logo_max_groups=settings.logo_max_groups,
                           selection_max_groups=settings.selection_max_groups, progress=settings.progress)


def _data_section(table: TrainingTable, facts: DatasetFacts) -> dict[str, Any]:
    first, last = facts.first_window_start, facts.last_window_start
    return {
        "first_window_start": first.isoformat() if first is not None else None,
        "last_window_start": last.isoformat() if last is not None else None,
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
        "join_rules": dict(facts.join_rule_pods),
        "workload_list": sorted(set(table.workload_keys.tolist())),
    }


MIN_WORKLOADS_FOR_TRUST = 10


def fit_warnings(table: TrainingTable, trust_radius: float, offsets: tuple[float, float] | None,
                 comparison: Comparison | None) -> list[str]:
    """What a reader of the card must know before trusting the model."""
    warnings = []
    if table.workloads < MIN_WORKLOADS_FOR_TRUST:
        warnings.append(f"only {table.workloads} workloads: the cross-validation metrics rest on very little data")
    if trust_radius == float("inf"):
        warnings.append("one distinct spec (or no neighbours): no trust radius, so the model answers for any spec, "
                        "however far from its training data")
    if offsets is None:
        warnings.append("no interval calibration (fewer than 2 groups): p10/p90 are the neighbours' spread")
    elif len(table.requests) < MIN_TARGETS_FOR_CONFORMAL:
        warnings.append(f"{len(table.requests)} targets are too few for the conformal finite-sample guarantee "
                        f"(needs {MIN_TARGETS_FOR_CONFORMAL})")
    if comparison is not None:
        served = comparison.metrics[0]
        if served.prior_fallback_share and served.prior_fallback_share > 0.5:
            warnings.append(f"in cross-validation the calibrated prior answered {served.prior_fallback_share:.0%} of "
                            "held-out targets (beyond the trust radius)")
        embedded = next(m for m in comparison.metrics if m.method.endswith("(embedded)"))
        if served.mean_abs_log_error > embedded.mean_abs_log_error:
            warnings.append(f"the served model's out-of-fold mean |log error| {served.mean_abs_log_error:.3f} is worse "
                            f"than the embedded prior's {embedded.mean_abs_log_error:.3f}")
    return warnings


MIN_TARGETS_FOR_CONFORMAL = 9


def versus_priors(comparison: Comparison) -> dict[str, Any]:
    """By how much the served model beats (or not) the priors, out of fold, and on how much data."""
    served = comparison.metrics[0]
    result: dict[str, Any] = {"served": served.method, "targets": served.targets, "workloads": served.workloads}
    for metric in comparison.metrics[1:]:
        if metric.method.startswith(("prior", "calibrated prior", "constant")):
            result[metric.method] = {
                "mean_abs_log_error": metric.mean_abs_log_error,
                "served_mean_abs_log_error": served.mean_abs_log_error,
                "mae_watts_ratio": served.mae_watts / metric.mae_watts if metric.mae_watts else None,
            }
    return result


def fit_table(table: TrainingTable, settings: FitSettings, *, facts: DatasetFacts, model_id: str | None = None,
              created: datetime | None = None) -> tuple[Any, dict[str, Any], Comparison | None]:
    """Fit the chosen pipeline (intervals calibrated inside fit) on all targets; return it with its card (no sha yet)."""
    if len(table.requests) == 0:
        raise ValueError("no training targets: the dataset joined nothing, or no pod had enough windows with energy")
    created = created or datetime.now(timezone.utc)
    comparison: Comparison | None = None
    try:
        comparison = compare(table, settings)
        params = comparison.chosen
        cv_section: dict[str, Any] = {**comparison.to_dict(), "versus_priors": versus_priors(comparison)}
    except NotEnoughWorkloads as exc:
        params = {"knn__n_neighbors": min(DEFAULT_K_WITHOUT_CV, len(table.requests)), "knn__target": "correction"}
        cv_section = {"skipped": str(exc)}
    pipeline = fit_pipeline(params, table)
    knn = pipeline[-1]
    offsets = knn.interval_log_offsets_
    card = {
        "model_id": model_id or make_model_id(table, created),
        "warnings": fit_warnings(table, knn.trust_radius_, offsets, comparison),
        "created_at": created.isoformat(timespec="seconds"),
        "artifact": {"file": "", "sha256": "", "feature_version": FEATURE_VERSION},
        "data": _data_section(table, facts),
        "model": {
            "description": f"PodFeatureEncoder -> AnchoredKNN: {describe_params(params)}, distance weighted",
            "params": params_json(params),
            "calibrated_prior": knn.prior_.describe(),
            "features": {"physics": list(PHYSICS_COLUMNS), "numeric": list(NUMERIC_FEATURES),
                         "categorical": list(CATEGORICAL_FEATURES), "text_dimensions": pipeline[0].text_dimensions},
            "trust_radius": None if knn.trust_radius_ == float("inf") else float(knn.trust_radius_),
            "interval": {
                "method": "split-conformal offsets on log power from grouped out-of-fold residuals of the "
                          "whole Pipeline, groups weighing alike, inside fit"
                if offsets else "weighted 10th/90th percentile of the neighbours' power (not calibrated)",
                "log_offsets_p10_p90": list(offsets) if offsets else None,
            },
        },
        "cross_validation": cv_section,
        "libraries": library_versions(),
    }
    return pipeline, card, comparison


def run_fit(dataset_path: str | os.PathLike[str], out: str | os.PathLike[str], settings: FitSettings = FitSettings(),
            *, model_id: str | None = None, created: datetime | None = None,
            runs_dataset_path: str | os.PathLike[str] | None = None) -> FitOutcome:
    """`energetiscope train fit`: dataset -> artifact (atomic, via save_model) + model card; with a run
    dataset (`train dataset --runs`) the artifact also holds the run model (`trainer.run_fit`)."""
    # The dataset's rows pass in batches: only the per-pod sums behind the targets are kept.
    table, facts = read_targets(dataset_path, settings.target_unit, settings.min_active_windows)
    # Read before the pod model's cross-validation: a wrong file must fail in seconds, not after it.
    run_targets = read_run_targets(runs_dataset_path) if runs_dataset_path is not None else None
    pipeline, card, comparison = fit_table(table, settings, facts=facts, model_id=model_id, created=created)
    run_pipeline = None
    if run_targets is not None:
        pod_model = TrainedModel(pipeline=pipeline, model_id=card["model_id"])
        run_pipeline, card["runs"] = fit_runs(run_targets, pod_model, PriorPredictor())
    out_path = Path(out)
    sha256 = save_model(out_path, pipeline, card["model_id"], metadata=card, run_pipeline=run_pipeline)
    card["artifact"].update(file=out_path.name, sha256=sha256)
    paths = write_card(card, out_path)
    report = write_fit_report(report_path(out_path), card, table, comparison, summary_path(dataset_path))
    return FitOutcome(model_path=out_path, card_paths=paths, model_id=card["model_id"], sha256=sha256, card=card,
                      comparison=comparison, report_path=report)


def report_path(artifact: str | os.PathLike[str]) -> Path:
    """`model.joblib` -> `model.report.html` beside it."""
    json_path, _ = card_paths(artifact)
    return json_path.with_name(json_path.name.removesuffix(".card.json") + ".report.html")


def write_fit_report(path: Path, card: dict[str, Any], table: TrainingTable, comparison: Comparison | None,
                     join_summary_path: Path) -> Path:
    """The card as one HTML page, plotting the served candidate's out-of-fold predictions: how it does
    on workloads it was not fitted on, which in-sample predictions would not show."""
    targets: list[dict[str, Any]] = []
    plots: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="energetiscope-report-") as scratch:
        oof = comparison.out_of_fold.get("served") if comparison is not None else None
        if oof is not None and oof.p10_watts is not None and oof.p90_watts is not None:
            fallback = oof.prior_fallback if oof.prior_fallback is not None else np.zeros(len(oof.power_watts), bool)
            title = f"{card['model_id']} out of fold\n{len(table.requests)} targets, {table.workloads} workloads"
            plots = {
                "predicted against measured, out of fold (log axes, p10-p90 bars)": predicted_vs_measured(
                    Path(scratch) / "scatter.png", table.power_watts, oof.power_watts, oof.p10_watts, oof.p90_watts,
                    fallback, title),
                "residuals out of fold: log(measured / predicted) against measured power": residuals(
                    Path(scratch) / "residuals.png", table.power_watts, oof.power_watts, fallback, title,
                    tuple(card["model"]["interval"]["log_offsets_p10_p90"] or ()) or None),
            }
            frame = table.frame[["namespace", "workload_kind", "workload_name", "pod"]].astype(str)
            for i, row in enumerate(frame.itertuples(index=False)):
                targets.append({"namespace": row.namespace, "workload_kind": row.workload_kind,
                                "workload_name": row.workload_name, "pod": row.pod,
                                "power_watts": float(table.power_watts[i]), "predicted_watts": float(oof.power_watts[i]),
                                "p10_watts": float(oof.p10_watts[i]), "p90_watts": float(oof.p90_watts[i]),
                                "basis": "prior" if fallback[i] else "model"})
        summary = json.loads(join_summary_path.read_text(encoding="utf-8")) if join_summary_path.is_file() else None
        return write_report(path, title=f"Model card and evaluation of {card['model_id']}",
                            note=f"Artifact {card['artifact']['file']}, sha256 {card['artifact']['sha256']}. The plots, "
                                 "coverage and largest errors are the served candidate's grouped cross-validation, "
                                 "out of fold.", card=card, sets=card_evaluation_sets(card), targets=targets,
                            targets_title="the served candidate, out of fold", plots=plots, join_summary=summary,
                            join_source=join_summary_path.name)

