"""The trained model: one fitted Pipeline (PodFeatureEncoder -> LogPowerKNN) in one artifact file.

The artifact is a joblib file holding the Pipeline and its metadata. Loading it runs
pickle, i.e. code: load only artifacts you built, from paths you configured.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import joblib
from sklearn.pipeline import Pipeline

from webhook.model.features import FEATURE_VERSION, PodFeatureEncoder
from webhook.model.knn import LogPowerKNN
from webhook.model.prediction import PodPrediction
from webhook.model.prior import PriorPredictor
from webhook.model.schema import InferenceRequest

ARTIFACT_FORMAT = "energetiscope.model"
ARTIFACT_FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """The model artifact cannot be used; the message says which file and why."""


def build_pipeline(n_neighbors: int = 5, **encoder_params: Any) -> Pipeline:
    """The unfitted model. The trainer fits it; the webhook only ever loads it."""
    return Pipeline([("features", PodFeatureEncoder(**encoder_params)), ("knn", LogPowerKNN(n_neighbors=n_neighbors))])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    model_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    prior: PriorPredictor = field(default_factory=PriorPredictor)
    sha256: str = ""

    def predict(self, requests: Sequence[InferenceRequest]) -> list[PodPrediction]:
        if not requests:
            return []
        features = self.pipeline[:-1].transform(list(requests))
        knn: LogPowerKNN = self.pipeline[-1]
        detail = knn.predict_detail(features)
        predictions: list[PodPrediction] = []
        for i, request in enumerate(requests):
            distance = float(detail.nearest_distance[i])
            if distance > knn.trust_radius_:
                reason = (
                    f"nearest training pod is {distance:.2f} away, beyond the model's trust radius "
                    f"{knn.trust_radius_:.2f}"
                )
                predictions.append(self.prior.predict_one(request, fallback_reason=reason))
                continue
            predictions.append(
                PodPrediction(
                    power_watts=float(detail.power_watts[i]),
                    power_watts_p10=float(detail.power_watts_p10[i]),
                    power_watts_p90=float(detail.power_watts_p90[i]),
                    model_id=self.model_id,
                    basis="model",
                )
            )
        return predictions


def save_model(path: Path, pipeline: Pipeline, model_id: str, metadata: Mapping[str, Any] | None = None) -> str:
    """Write the artifact atomically; return its sha256."""
    payload = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "feature_version": FEATURE_VERSION,
        "model_id": model_id,
        "metadata": dict(metadata or {}),
        "pipeline": pipeline,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        joblib.dump(payload, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def load_model(path: Path, prior: PriorPredictor | None = None, expected_sha256: str | None = None) -> TrainedModel:
    if not path.is_file():
        raise ArtifactError(f"model artifact {path} does not exist or is not a file")
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise ArtifactError(f"model artifact {path} has sha256 {digest}, expected {expected_sha256}")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # truncated, not joblib, unpicklable: all mean "not a usable artifact"
        raise ArtifactError(f"model artifact {path} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"model artifact {path} is not an EnergetiScope model (format {ARTIFACT_FORMAT!r})")
    if payload.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"model artifact {path} has format version {payload.get('format_version')}, "
            f"this server reads {ARTIFACT_FORMAT_VERSION}"
        )
    if payload.get("feature_version") != FEATURE_VERSION:
        raise ArtifactError(
            f"model artifact {path} was built for feature version {payload.get('feature_version')}, "
            f"this server computes version {FEATURE_VERSION}: retrain it"
        )
    pipeline = payload.get("pipeline")
    if not isinstance(pipeline, Pipeline) or not isinstance(pipeline[-1], LogPowerKNN):
        raise ArtifactError(f"model artifact {path} does not hold a fitted EnergetiScope pipeline")
    return TrainedModel(
        pipeline=pipeline,
        model_id=str(payload.get("model_id") or digest[:12]),
        metadata=payload.get("metadata") or {},
        prior=prior or PriorPredictor(),
        sha256=digest,
    )
