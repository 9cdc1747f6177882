"""A trained model artifact from a synthetic training set, as `energetiscope train fit` would write it.

The training set is `rows` synthetic workloads (`bench.workloads`), one row per workload spec as
the trainer's default target unit makes it, labelled with the week-mean power the truth
(`bench.power_model`) gives. The Pipeline is `webhook.model.artifact.build_pipeline`'s (PodFeatureEncoder
-> AnchoredKNN), its p10/p90 calibrated inside `fit` (split-conformal on grouped folds, a
2,000-row sample of them), and written with `webhook.model.artifact.save_model`.

    python -m bench.model_artifact --rows 50000 --out model.esmodel
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from bench.workloads import draw_workloads, measured_training_rows
from webhook.model.artifact import build_pipeline, save_model
from webhook.model.features import PodFeatureEncoder
from webhook.model.knn import AnchoredKNN
from webhook.model.schema import InferenceRequest

TRAINING_SEED = 20251101


@dataclass(frozen=True)
class TrainingSet:
    requests: list[InferenceRequest]
    power_watts: np.ndarray
    draw_seconds: float


def training_set(rows: int, seed: int = TRAINING_SEED) -> TrainingSet:
    started = time.perf_counter()
    draws = draw_workloads(rows, seed)
    power = measured_training_rows(draws, seed + 1)
    return TrainingSet([d.request for d in draws], power, time.perf_counter() - started)


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    rows: int
    algorithm: str
    encode_seconds: float  # encoder fit + transform of the training set
    knn_fit_seconds: float  # calibrated prior, index build, trust radius, interval folds
    save_seconds: float
    artifact_bytes: int
    sha256: str
    trust_radius: float
    features: int


def fit_encoder(requests: list[InferenceRequest]) -> tuple[PodFeatureEncoder, np.ndarray, float]:
    started = time.perf_counter()
    encoder: PodFeatureEncoder = build_pipeline()[0]
    features = encoder.fit(requests).transform(requests)
    return encoder, features, time.perf_counter() - started


def calibrated_knn(features: np.ndarray, power_watts: np.ndarray, algorithm: str) -> tuple[AnchoredKNN, float]:
    """Fit, p10/p90 calibrated inside fit; returns the fit's seconds (calibrated prior, index, trust
    radius and the interval folds)."""
    started = time.perf_counter()
    knn = build_pipeline()[-1].set_params(algorithm=algorithm).fit(features, power_watts)
    return knn, time.perf_counter() - started


def write_artifact(out: Path, encoder: PodFeatureEncoder, knn: AnchoredKNN, rows: int, algorithm: str,
                   encode_seconds: float, knn_fit_seconds: float) -> ArtifactInfo:
    pipeline = Pipeline([("features", encoder), ("knn", knn)])
    started = time.perf_counter()
    metadata = {"source": "bench.model_artifact", "rows": rows, "algorithm": algorithm}
    sha256 = save_model(out, pipeline, f"bench-{rows}-{algorithm}", metadata=metadata)
    return ArtifactInfo(
        path=str(out), rows=rows, algorithm=algorithm, encode_seconds=round(encode_seconds, 3),
        knn_fit_seconds=round(knn_fit_seconds, 3), save_seconds=round(time.perf_counter() - started, 3),
        artifact_bytes=out.stat().st_size, sha256=sha256, trust_radius=float(knn.trust_radius_),
        features=int(encoder.n_features_out_),
    )


def build_artifacts(rows: int, outputs: dict[str, Path]) -> dict[str, ArtifactInfo]:
    """One training set and encoder; one artifact per neighbour-search algorithm in `outputs`."""
    data = training_set(rows)
    encoder, features, encode_seconds = fit_encoder(data.requests)
    written = {}
    for algorithm, out in outputs.items():
        knn, knn_fit_seconds = calibrated_knn(features, data.power_watts, algorithm)
        written[algorithm] = write_artifact(out, encoder, knn, rows, algorithm, encode_seconds, knn_fit_seconds)
    return written


def build_artifact(rows: int, out: Path, algorithm: str = "auto") -> ArtifactInfo:
    return build_artifacts(rows, {algorithm: out})[algorithm]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--algorithm", default="auto", choices=["auto", "brute", "kd_tree", "ball_tree"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(asdict(build_artifact(args.rows, args.out, args.algorithm)))


if __name__ == "__main__":
    main()
