"""What one /mutate costs stage by stage, in-process and single-threaded (no HTTP, TLS or threads).

The profile of the loaded server (`bench.profile_webhook`) says where its CPU goes; this says
how long each step of `webhook.admission.mutate.mutate` takes on the benchmark's bodies, so the
suggestions in bench/README.md come with the microseconds they would save.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from webhook.admission import annotations
from webhook.admission.mutate import MutatingHandler, MutationSettings, mutate
from webhook.admission.patch import annotations_patch
from webhook.admission.reading import ObjectReader
from webhook.admission.review import parse_review
from webhook.http.body import parse_json
from webhook.model.carbon import CarbonSettings
from webhook.model.extract import to_inference_request
from webhook.model.prior import PriorPredictor
from webhook.model.schema import spec_hash
from webhook.model.service import PredictionService


@dataclass(frozen=True)
class StageCost:
    stage: str
    microseconds: float


def _mean_microseconds(action: Callable[[int], Any], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        action(i)
    return round((time.perf_counter() - started) / count * 1e6, 1)


def stage_costs(bodies: list[bytes], model_path: Path, predictions: int = 200) -> list[StageCost]:
    reviews = [json.loads(body) for body in bodies]
    objects = [review["request"]["object"] for review in reviews]
    decoded = [parse_review(review) for review in reviews]
    requests = [to_inference_request(obj) for obj in objects]
    cached = PredictionService(PriorPredictor(), model_path=model_path)
    uncached = PredictionService(PriorPredictor(), model_path=model_path, cache_entries=0)
    for service in (cached, uncached):
        if not service.load():
            raise RuntimeError(f"model not loaded: {service.status().error}")
    wanted = [annotations.wanted(cached.predict(r), None, CarbonSettings()) for r in requests]  # as /mutate
    metadata = [obj["metadata"] for obj in objects]
    settings = MutationSettings()
    results = [mutate(request, cached, settings) for request in decoded]
    n = len(bodies)
    model = uncached.predictor
    reader = ObjectReader(n)
    for obj in objects:
        reader.read(obj)
    handler = MutatingHandler(settings, reader)

    def answered_as_served(i: int) -> Any:
        # What /mutate does with a remembered object and a cached prediction, minus HTTP.
        pending = handler.handle(decoded[i])
        return pending.complete(cached.cached(pending.request, pending.spec_hash))
    return [
        StageCost("request JSON parse (msgspec)", _mean_microseconds(lambda i: parse_json(bodies[i]), n)),
        StageCost("object -> InferenceRequest (extract)", _mean_microseconds(lambda i: to_inference_request(objects[i]), n)),
        StageCost("spec hash", _mean_microseconds(lambda i: spec_hash(requests[i]), n)),
        StageCost("object -> InferenceRequest + spec hash, remembered (ObjectReader)",
                  _mean_microseconds(lambda i: reader.read(objects[i]), n)),
        StageCost("prediction, cache miss (encode + KNN + interval)",
                  _mean_microseconds(lambda i: model.predict([requests[i % n]]), predictions)),
        *_prediction_steps(model, requests, predictions),
        StageCost("JSON patch (direct diff of the annotations)",
                  _mean_microseconds(lambda i: annotations_patch(metadata[i], wanted[i]), n)),
        StageCost("response JSON encode", _mean_microseconds(lambda i: JSONResponse(results[i].review), n)),
        StageCost("mutate(), cache hit, object read afresh",
                  _mean_microseconds(lambda i: mutate(decoded[i], cached, settings), n)),
        StageCost("as /mutate serves a repeated object: remembered read, cached prediction, patch",
                  _mean_microseconds(answered_as_served, n)),
        StageCost("mutate(), cache miss", _mean_microseconds(lambda i: mutate(decoded[i % n], uncached, settings),
                                                             predictions)),
    ]


def _prediction_steps(model: Any, requests: list[Any], predictions: int) -> list[StageCost]:
    """A trained model's prediction in its two steps (the prior has none to split)."""
    pipeline = getattr(model, "pipeline", None)
    if pipeline is None:
        return []
    encoder, knn = pipeline.steps[0][1], pipeline.steps[-1][1]
    n = len(requests)
    encoded = [encoder.transform([r]) for r in requests]
    return [
        StageCost("  of which: encode (PodFeatureEncoder.transform)",
                  _mean_microseconds(lambda i: encoder.transform([requests[i % n]]), predictions)),
        StageCost("  of which: search, calibrated prior, interval (AnchoredKNN.predict_detail)",
                  _mean_microseconds(lambda i: knn.predict_detail(encoded[i % n]), predictions)),
    ]


def main() -> None:
    """`python -m bench.mutate_stages [--rows 50000] [--model FILE]`: the stages on a freshly built
    artifact (or on FILE, an artifact already built, e.g. by `python -m bench.model_artifact`)."""
    import argparse
    import tempfile

    from bench.admission_body import review_bodies
    from bench.model_artifact import build_artifact

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="training rows of the artifact")
    parser.add_argument("--bodies", type=int, default=64)
    parser.add_argument("--model", type=Path, default=None, help="an artifact already built (--rows is then ignored)")
    parser.add_argument("--predictions", type=int, default=200, help="predictions timed per model stage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-") as tmp:
        artifact = args.model
        if artifact is None:
            artifact = Path(tmp) / "model.esmodel"
            build_artifact(args.rows, artifact)
        for cost in stage_costs(review_bodies(args.bodies), artifact, args.predictions):
            print(f"{cost.microseconds:>10.1f} us  {cost.stage}")


if __name__ == "__main__":
    main()
