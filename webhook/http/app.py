"""The HTTP surface: admission, debugging endpoints, health and metrics."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import anyio
import msgspec
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook.admission.review import (
    AdmissionResult,
    MutationSettings,
    NotAnAdmissionReview,
    Plan,
    parse_review,
    plan_mutation,
    review_response,
)
from webhook.model.manifests import ManifestError, read_manifests
from webhook.http.metrics import CONTENT_TYPE, WebhookMetrics
from webhook.http.openapi import openapi_document
from webhook.admission.policy import PolicyStore
from webhook.admission.reading import ObjectReader
from webhook.model.schema import InferenceRequest, PredictOut
from webhook.model.service import PredictionService, WorkloadPrediction
from webhook.admission.validate import Budgets, plan_validation

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 3 * 2**20  # etcd's default object limit is 1.5 MiB; reviews carry old + new


@dataclass(frozen=True)
class AppSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    mutation: MutationSettings = MutationSettings()
    # Below the webhooks' timeoutSeconds (3 s in deploy/): we answer, fail-open, before the
    # apiserver gives up on us, so the user sees why nothing was annotated.
    review_timeout_seconds: float = 2.0
    # Reviews computed at once; more wait their turn (and their time budget still runs).
    max_concurrent_reviews: int = 8
    debug_endpoints: bool = True


class ReviewResponse(JSONResponse):
    """An AdmissionReview answer, encoded by msgspec (a fifth of json.dumps' time per review).

    It holds only strings, booleans and an int status code, so there is no NaN for msgspec to
    write as null where the standard library would refuse it.
    """

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


class HTTPProblem(Exception):
    def __init__(self, status: int, error: str, **detail: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, **self.detail}, status_code=self.status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_FAST_JSON = msgspec.json.Decoder()
_TOO_DEEP = "body is not valid JSON: nested too deeply"


def parse_json(body: bytes) -> Any:
    try:
        # A third of the standard library's time per review, as strict (no NaN), integers exact.
        return _FAST_JSON.decode(body)
    except msgspec.DecodeError:
        pass
    except RecursionError:
        raise HTTPProblem(400, _TOO_DEEP) from None
    # The standard library names the problem better, and reads what msgspec refuses but JSON
    # allows (escaped lone surrogates, numbers beyond a double's range, UTF-16 and UTF-32).
    try:
        # Strict JSON: Python would accept NaN and Infinity, which no Kubernetes client sends.
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        raise HTTPProblem(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPProblem(400, _TOO_DEEP) from None


def _text(body: bytes) -> str:
    if not body.strip():
        raise HTTPProblem(400, "empty body: send one or more YAML documents (a kind: List works too)")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPProblem(400, f"body is not UTF-8 text: {exc}") from None


def predict_out(prediction: WorkloadPrediction) -> dict[str, Any]:
    request, pod = prediction.request, prediction.pod
    return PredictOut(
        pred_energy_step_j=prediction.pod_energy_step_joules,
        workload_kind=request.workload_kind,
        workload_name=request.workload_name,
        namespace=request.namespace,
        spec_hash=prediction.spec_hash,
        pod_power_watts=pod.power_watts,
        pod_power_watts_p10=pod.power_watts_p10,
        pod_power_watts_p90=pod.power_watts_p90,
        workload_pods=prediction.pods,
        workload_power_watts=prediction.workload_power_watts,
        workload_power_scope=prediction.scope,  # type: ignore[arg-type]
        energy_joules_per_hour=prediction.energy_joules_per_hour,
        model=pod.model_id,
        basis=pod.basis,
        fallback_reason=pod.fallback_reason,
    ).model_dump(mode="json")


def create_app(
    service: PredictionService, settings: AppSettings | None = None, budgets: Budgets | None = None
) -> Starlette:
    settings = settings or AppSettings()
    budgets = budgets or Budgets(policy=PolicyStore(None), inventory=None)
    # As many objects remembered as predictions: --cache-entries 0 turns both off.
    reader = ObjectReader(service.cache.max_entries)
    metrics = WebhookMetrics(service, reader)
    state = {"tls_ready": False}

    def endpoint(name: str, handler: Callable[[Request], Awaitable[tuple[Response, str]]]):
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response, result = await handler(request)
            except HTTPProblem as problem:
                response, result = problem.response(), f"http_{problem.status}"
            except Exception:
                log.exception("unhandled error on %s", name)
                response, result = JSONResponse({"error": "internal error"}, status_code=500), "error"
            metrics.observe(name, result, time.perf_counter() - started)
            return response

        return run

    async def review_request(request: Request) -> Mapping[str, Any]:
        body = parse_json(await _read_body(request, settings.max_body_bytes))
        try:
            return parse_review(body)
        except NotAnAdmissionReview as exc:
            raise HTTPProblem(400, f"not an AdmissionReview: {exc}") from None

    limiter = anyio.CapacityLimiter(settings.max_concurrent_reviews)

    async def answer(plan: Plan, review: Mapping[str, Any], what: str) -> AdmissionResult:
        if isinstance(plan, AdmissionResult):
            return plan
        try:
            cached = service.cached(plan.request, plan.spec_hash)
        except Exception as exc:
            return plan.fail(exc)
        if cached is not None:
            return plan.complete(cached)
        # Running the model is the one step whose cost is not bounded by the body: it goes to a
        # worker thread, and the apiserver gets a fail-open answer if it takes too long.
        with anyio.move_on_after(settings.review_timeout_seconds):
            return await anyio.to_thread.run_sync(
                plan.predict_and_complete, service, limiter=limiter, abandon_on_cancel=True
            )
        warning = f"energetiscope: {what}: no answer within {settings.review_timeout_seconds:g} s"
        log.warning("%s for request %s", warning, review.get("uid"))
        return AdmissionResult(review_response(review["uid"], warnings=[warning]), "timed_out", [warning])

    async def admit(request: Request) -> tuple[Response, str]:
        review = await review_request(request)
        result = await answer(plan_mutation(review, settings.mutation, reader), review, "not annotated")
        if result.basis is not None:
            metrics.predictions.labels(result.basis).inc()
        return ReviewResponse(result.review), result.outcome

    async def check_budget(request: Request) -> tuple[Response, str]:
        review = await review_request(request)
        result = await answer(plan_validation(review, budgets, reader), review, "budget not checked")
        return ReviewResponse(result.review), result.outcome

    async def predict(request: Request) -> tuple[Response, str]:
        body = parse_json(await _read_body(request, settings.max_body_bytes))
        try:
            inference_request = InferenceRequest.model_validate(body)
        except ValidationError as exc:
            problems = [
                {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]} for e in exc.errors()
            ]
            raise HTTPProblem(422, "invalid InferenceRequest", problems=problems) from None
        # In a worker thread like the reviews' model runs, so debugging never stalls admission.
        prediction = await anyio.to_thread.run_sync(service.predict, inference_request, limiter=limiter)
        metrics.predictions.labels(prediction.pod.basis).inc()
        return JSONResponse(predict_out(prediction)), "ok"

    def _manifests(text: str):  # type: ignore[no-untyped-def]
        try:
            report = read_manifests(text)
        except ManifestError as exc:
            raise HTTPProblem(400, str(exc)) from None
        if report.errors:
            raise HTTPProblem(
                422, "some workload documents cannot be read", errors=report.errors, skipped=report.skipped
            )
        return report

    async def infer_from_yaml(request: Request) -> tuple[Response, str]:
        report = _manifests(_text(await _read_body(request, settings.max_body_bytes)))
        requests = [{**where.as_dict(), "request": r.model_dump(mode="json")} for where, r in report.requests]
        return JSONResponse({"requests": requests, "skipped": report.skipped}), "ok"

    async def predict_from_yaml(request: Request) -> tuple[Response, str]:
        report = _manifests(_text(await _read_body(request, settings.max_body_bytes)))
        predictions = []
        for where, inference_request in report.requests:
            prediction = await anyio.to_thread.run_sync(service.predict, inference_request, limiter=limiter)
            metrics.predictions.labels(prediction.pod.basis).inc()
            predictions.append({**where.as_dict(), **predict_out(prediction)})
        return JSONResponse({"predictions": predictions, "skipped": report.skipped}), "ok"

    async def healthz(request: Request) -> tuple[Response, str]:
        return JSONResponse({"status": "ok"}), "ok"

    async def readyz(request: Request) -> tuple[Response, str]:
        status = service.status()
        ready = state["tls_ready"] and service.loaded
        metrics.ready.set(1 if ready else 0)
        inventory = budgets.inventory
        body = {
            "ready": ready,
            "budgets": {
                "policy_path": str(budgets.policy.path) if budgets.policy.path else None,
                "policy_error": budgets.policy.error,
                "inventory": "off" if inventory is None else ("synced" if inventory.synced else "syncing"),
            },
            "tls": state["tls_ready"],
            "model": {
                "loaded": service.loaded,
                "id": status.model_id,
                "basis": status.basis,
                "path": status.path,
                "sha256": status.sha256,
                "error": status.error,
            },
        }
        return JSONResponse(body, status_code=200 if ready else 503), "ok" if ready else "not_ready"

    openapi = openapi_document(settings.debug_endpoints)

    async def openapi_endpoint(request: Request) -> tuple[Response, str]:
        return JSONResponse(openapi), "ok"

    async def metrics_endpoint(request: Request) -> tuple[Response, str]:
        return Response(metrics.render(), media_type=CONTENT_TYPE), "ok"

    routes = [
        Route("/mutate", endpoint("mutate", admit), methods=["POST"]),
        Route("/validate", endpoint("validate", check_budget), methods=["POST"]),
    ]
    if settings.debug_endpoints:
        routes += [
            Route("/predict", endpoint("predict", predict), methods=["POST"]),
            Route("/infer/from-yaml", endpoint("infer_from_yaml", infer_from_yaml), methods=["POST"]),
            Route("/predict/from-yaml", endpoint("predict_from_yaml", predict_from_yaml), methods=["POST"]),
        ]
    routes += [
        Route("/healthz", endpoint("healthz", healthz), methods=["GET"]),
        Route("/readyz", endpoint("readyz", readyz), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics_endpoint), methods=["GET"]),
        Route("/openapi.json", endpoint("openapi", openapi_endpoint), methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.service = service
    app.state.metrics = metrics
    app.state.readiness = state
    app.state.budgets = budgets
    return app

