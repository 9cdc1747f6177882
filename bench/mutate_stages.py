"""What one /mutate costs stage by stage, in-process and single-threaded (no HTTP, TLS or threads).

The profile of the loaded server (`bench.profile_webhook`) says where its CPU goes; this says
how long each step of `webhook.admission.mutate` takes on the benchmark's bodies, so the
suggestions in bench/README.md come with the microseconds they would save.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
from starlette.responses import JSONResponse

from webhook import annotations
from webhook.admission import MutationSettings, mutate
from webhook.extract import to_inference_request
from webhook.prior import PriorPredictor
from webhook.schema import spec_hash
from webhook.service import PredictionService


@dataclass(frozen=True)
class StageCost:
    stage: str
    microseconds: float


def _mean_microseconds(action: Callable[[int], Any], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        action(i)
    return round((time.perf_counter() - started) / count * 1e6, 1)


def _whole_object_diff(obj: dict[str, Any], wanted: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What mutate() diffed before commit a95ed0a: the whole object against its mutated copy."""
    metadata = obj["metadata"]
    mutated = dict(obj)
    mutated["metadata"] = {**metadata, "annotations": {**(metadata.get("annotations") or {}), **wanted}}
    return dict(obj), mutated


def _annotations_diff(obj: dict[str, Any], wanted: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What mutate() diffs since a95ed0a: the annotations alone, in their place."""
    metadata = obj["metadata"]
    current = metadata.get("annotations")
    before = {"metadata": {"annotations": current}} if "annotations" in metadata else {"metadata": {}}
    return before, {"metadata": {"annotations": {**(current or {}), **wanted}}}


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def direct_annotation_patch(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The ops jsonpatch finds for mutate()'s change, built without diffing: add the annotations
    when there are none, else add or replace each key whose value differs (mutate() never
    removes one). Applied, they give the same object (checked in bench/README.md's suggestion)."""
    current = before["metadata"].get("annotations")
    wanted = after["metadata"]["annotations"]
    if current is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": wanted}]
    return [{"op": "add" if key not in current else "replace", "path": f"/metadata/annotations/{_pointer_token(key)}",
             "value": value} for key, value in wanted.items() if current.get(key, _MISSING) != value]


_MISSING = object()


def stage_costs(bodies: list[bytes], model_path: Path, predictions: int = 200) -> list[StageCost]:
    reviews = [json.loads(body) for body in bodies]
    objects = [review["request"]["object"] for review in reviews]
    requests = [to_inference_request(obj) for obj in objects]
    cached = PredictionService(PriorPredictor(), model_path=model_path)
    uncached = PredictionService(PriorPredictor(), model_path=model_path, cache_entries=0)
    for service in (cached, uncached):
        if not service.load():
            raise RuntimeError(f"model not loaded: {service.status().error}")
    wanted = [annotations.render(cached.predict(r)) for r in requests]
    whole = [_whole_object_diff(obj, w) for obj, w in zip(objects, wanted)]
    shipped = [_annotations_diff(obj, w) for obj, w in zip(objects, wanted)]
    settings = MutationSettings()
    results = [mutate(review["request"], cached, settings) for review in reviews]
    n = len(bodies)
    model = uncached.predictor
    return [
        StageCost("request JSON parse (json.loads)", _mean_microseconds(lambda i: json.loads(bodies[i]), n)),
        StageCost("object -> InferenceRequest (extract)", _mean_microseconds(lambda i: to_inference_request(objects[i]), n)),
        StageCost("spec hash", _mean_microseconds(lambda i: spec_hash(requests[i]), n)),
        StageCost("prediction, cache miss (encode + KNN + interval)",
                  _mean_microseconds(lambda i: model.predict([requests[i % n]]), predictions)),
        StageCost("JSON patch, annotations only (shipped since a95ed0a)",
                  _mean_microseconds(lambda i: jsonpatch.make_patch(*shipped[i]), n)),
        StageCost("JSON patch, annotations only, built directly (suggestion)",
                  _mean_microseconds(lambda i: direct_annotation_patch(*shipped[i]), n)),
        StageCost("JSON patch, whole object (before a95ed0a)",
                  _mean_microseconds(lambda i: jsonpatch.make_patch(*whole[i]), n)),
        StageCost("response JSON encode", _mean_microseconds(lambda i: JSONResponse(results[i].review), n)),
        StageCost("mutate(), cache hit (the above but the prediction and the old patch)",
                  _mean_microseconds(lambda i: mutate(reviews[i]["request"], cached, settings), n)),
        StageCost("mutate(), cache miss", _mean_microseconds(lambda i: mutate(reviews[i % n]["request"], uncached, settings),
                                                             predictions)),
    ]
