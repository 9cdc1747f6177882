"""The trainer's `evaluate` step: an existing model artifact on a dataset, as the webhook serves it.

The dataset is aggregated into targets exactly as `fit` did (the unit and minimum number of
windows come from the model's card unless overridden); each target's spec is predicted with
`TrainedModel.predict` (so queries beyond the trust radius get the prior, as in the webhook) and
scored with the same metrics as cross-validation, next to the prior on the same targets. When the
dataset is the model's own training data the report says so: that measures fit, not how the
model does on new workloads (the cross-validation in the model card does).

Writes `evaluation.json`, `evaluation.md`, `predicted_vs_measured.png`, `residuals.png` and
`evaluation.html` (`trainer.report_html`: all of it, with the model card's cross-validation and the
dataset's join summary, in one self-contained page).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from webhook.files import write_text_atomically
from trainer.baselines import from_pod_predictions
from trainer.dataset import summary_path
from trainer.metrics import MethodMetrics, metrics_table, score
from trainer.plots import predicted_vs_measured, residuals
from trainer.report_html import EvaluationSet, card_evaluation_sets, write_report
from trainer.targets import DEFAULT_MIN_ACTIVE_WINDOWS, DEFAULT_TARGET_UNIT, TrainingTable, read_targets
from webhook.model.artifact import TrainedModel, load_model
from webhook.model.prior import shipped_priors


@dataclass
class EvaluationOutcome:
    model_id: str
    metrics: list[MethodMetrics]
    in_sample: bool
    workloads_seen_in_training: int
    paths: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def run_evaluate(model_path: str | os.PathLike[str], dataset_path: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str], *, expected_sha256: str | None = None,
                 target_unit: str | None = None, min_active_windows: int | None = None) -> EvaluationOutcome:
    model = load_model(Path(model_path), expected_sha256=expected_sha256)
    data_card = dict(model.metadata.get("data") or {})
    table, _ = read_targets(
        dataset_path,
        target_unit or str(data_card.get("target_unit") or DEFAULT_TARGET_UNIT),
        min_active_windows or int(data_card.get("min_active_windows") or DEFAULT_MIN_ACTIVE_WINDOWS),
    )
    if not table.requests:
        raise ValueError("no targets to evaluate: no pod in the dataset has enough windows with energy")
    return evaluate(model, table, Path(out_dir), data_card, join_summary_path=summary_path(dataset_path),
                    artifact_file=Path(model_path).name)


def calibrated_prior_watts(model: TrainedModel, table: TrainingTable) -> np.ndarray:
    """The model's own calibrated prior (what it answers beyond its trust radius) for every target."""
    knn = model.pipeline[-1]
    physics, _ = knn._split(model.pipeline[:-1].transform(list(table.requests)))
    return np.asarray(knn.prior_.predict(physics), dtype=np.float64)


def evaluate(model: TrainedModel, table: TrainingTable, out_dir: Path, data_card: dict[str, Any], *,
             join_summary_path: Path | None = None, artifact_file: str | None = None) -> EvaluationOutcome:
    served = from_pod_predictions(model.predict(table.requests))
    assert served.p10_watts is not None and served.p90_watts is not None and served.prior_fallback is not None
    prior_predictions = [(predictor, why, from_pod_predictions(predictor.predict(table.requests)))
                         for predictor, why in shipped_priors()]
    metrics = [
        score(f"{model.model_id} as served", table, served.power_watts, served.p10_watts, served.p90_watts,
              served.prior_fallback),
        *(score(f"prior {predictor.model_id} ({why})", table, predicted.power_watts, predicted.p10_watts,
                predicted.p90_watts) for predictor, why, predicted in prior_predictions),
        score("calibrated prior (the model's own, no neighbours)", table, calibrated_prior_watts(model, table)),
    ]
    in_sample = data_card.get("training_data_sha256") == table.data_sha256()
    trained_on = set(data_card.get("workload_list") or [])
    seen = len(trained_on & set(table.workload_keys.tolist()))
    title = f"{model.model_id}\n{len(table.requests)} targets, {table.pods} pods, {table.workloads} workloads"
    if in_sample:
        title += " (training data)"
    out_dir.mkdir(parents=True, exist_ok=True)
    knn = model.pipeline[-1]
    paths = {
        "scatter": predicted_vs_measured(out_dir / "predicted_vs_measured.png", table.power_watts, served.power_watts,
                                         served.p10_watts, served.p90_watts, served.prior_fallback, title),
        "residuals": residuals(out_dir / "residuals.png", table.power_watts, served.power_watts, served.prior_fallback,
                               title, knn.interval_log_offsets_),
    }
    per_target = table.frame[["namespace", "workload_kind", "workload_name", "pod", "period", "power_watts"]].copy()
    per_target["predicted_watts"] = served.power_watts
    per_target["p10_watts"] = served.p10_watts
    per_target["p90_watts"] = served.p90_watts
    per_target["basis"] = np.where(served.prior_fallback, "prior", "model")
    note = ("in-sample: these are the model's training targets, so this measures fit, not generalisation "
            "(see the model card's grouped cross-validation)") if in_sample else (
        f"{seen} of the {table.workloads} workloads evaluated were in the training data")
    report = {
        "model_id": model.model_id,
        "model_sha256": model.sha256,
        "in_sample": in_sample,
        "note": note,
        "workloads_seen_in_training": seen,
        "metrics": [m.to_dict() for m in metrics],
        "targets": json.loads(per_target.to_json(orient="records")),
    }
    paths["json"] = write_text_atomically(out_dir / "evaluation.json", json.dumps(report, indent=2) + "\n")
    markdown = "\n".join([
        f"# Evaluation of {model.model_id}", "", f"Artifact sha256 `{model.sha256}`. {note}.", "",
        metrics_table(metrics), "", "![predicted vs measured](predicted_vs_measured.png)", "",
        "![residuals](residuals.png)", "",
    ])
    paths["markdown"] = write_text_atomically(out_dir / "evaluation.md", markdown)
    paths["html"] = write_evaluation_report(out_dir / "evaluation.html", model, report, paths, join_summary_path,
                                            artifact_file)
    return EvaluationOutcome(model_id=model.model_id, metrics=metrics, in_sample=in_sample,
                             workloads_seen_in_training=seen, paths=paths, report=report)


def write_evaluation_report(path: Path, model: TrainedModel, report: dict[str, Any], paths: dict[str, Path],
                            join_summary_path: Path | None, artifact_file: str | None = None) -> Path:
    """`evaluation.html`: this evaluation next to the card's cross-validation, with the join summary."""
    artifact = dict(model.metadata.get("artifact") or {})
    artifact.update(sha256=model.sha256, file=artifact_file or artifact.get("file") or "")
    card = {**model.metadata, "artifact": artifact}
    sets = [EvaluationSet("evaluation", "Evaluation on the dataset", str(report["note"]), report["metrics"]),
            *card_evaluation_sets(card)]
    summary = None
    if join_summary_path is not None and join_summary_path.is_file():
        summary = json.loads(join_summary_path.read_text(encoding="utf-8"))
    return write_report(path, title=f"Evaluation of {model.model_id}", note=f"Artifact sha256 {model.sha256}. "
                        f"{report['note']}.", card=card, sets=sets, targets=report["targets"],
                        targets_title="the served model on the evaluation dataset",
                        plots={"predicted against measured (log axes, p10-p90 bars)": paths["scatter"],
                               "residuals: log(measured / predicted) against measured power": paths["residuals"]},
                        join_summary=summary,
                        join_source=join_summary_path.name if join_summary_path is not None else "no dataset path")
