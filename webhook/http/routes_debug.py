"""Debugging endpoints: predict for an InferenceRequest (``/predict``) or for workload YAML
(``/infer/from-yaml`` reads it, ``/predict/from-yaml`` predicts for it).

They run the model in the review pipeline's worker slots, so debugging never stalls admission,
and can be switched off (``--no-debug-endpoints``). Unreadable input is a 400 or 422 problem
naming the field.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook.http.body import parse_json, read_body, text
from webhook.http.endpoint import observed
from webhook.http.problems import HTTPProblem
from webhook.http.state import AppState
from webhook.model.manifests import ManifestError, ManifestReport, read_manifests
from webhook.model.report import predict_out
from webhook.model.schema import InferenceRequest


async def predict(request: Request, state: AppState) -> tuple[Response, str]:
    body = parse_json(await read_body(request, state.settings.max_body_bytes))
    try:
        inference_request = InferenceRequest.model_validate(body)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]} for e in exc.errors()
        ]
        raise HTTPProblem(422, "invalid InferenceRequest", problems=problems) from None
    prediction = await state.pipeline.predict(inference_request)
    state.metrics.predictions.labels(prediction.pod.basis).inc()
    return JSONResponse(predict_out(prediction)), "ok"


async def _manifests(request: Request, state: AppState) -> ManifestReport:
    try:
        report = read_manifests(text(await read_body(request, state.settings.max_body_bytes)))
    except ManifestError as exc:
        raise HTTPProblem(400, str(exc)) from None
    if report.errors:
        raise HTTPProblem(422, "some workload documents cannot be read", errors=report.errors, skipped=report.skipped)
    return report


async def infer_from_yaml(request: Request, state: AppState) -> tuple[Response, str]:
    report = await _manifests(request, state)
    requests = [{**where.as_dict(), "request": r.model_dump(mode="json")} for where, r in report.requests]
    return JSONResponse({"requests": requests, "skipped": report.skipped}), "ok"


async def predict_from_yaml(request: Request, state: AppState) -> tuple[Response, str]:
    report = await _manifests(request, state)
    predictions = []
    for where, inference_request in report.requests:
        prediction = await state.pipeline.predict(inference_request)
        state.metrics.predictions.labels(prediction.pod.basis).inc()
        predictions.append({**where.as_dict(), **predict_out(prediction)})
    return JSONResponse({"predictions": predictions, "skipped": report.skipped}), "ok"


ROUTES = [
    Route("/predict", observed("predict", predict), methods=["POST"]),
    Route("/infer/from-yaml", observed("infer_from_yaml", infer_from_yaml), methods=["POST"]),
    Route("/predict/from-yaml", observed("predict_from_yaml", predict_from_yaml), methods=["POST"]),
]
