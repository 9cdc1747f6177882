"""Serving a review: the one place that owns the model's worker slots, the time budget,
cache-first answers and failing open.

Everything about a review but running the model is cheap and bounded by the body (which the
event loop has already parsed), so the handler runs on the loop; a prediction the cache holds
completes it there too. Only running the model goes to a worker thread, at most
``max_concurrent`` at once (the debugging endpoints' model runs share the slots) and within
``timeout_seconds``, so a slow or stuck model never delays reviews whose prediction is cached.
Whatever raises, and whatever takes too long, is answered "allowed" with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from webhook.admission.review import (
    AdmissionRequest,
    AdmissionResponse,
    Answer,
    Handler,
    PendingReview,
    failed_open,
)
from webhook.model.schema import InferenceRequest
from webhook.model.service import PredictionService, WorkloadPrediction

log = logging.getLogger(__name__)


def _failed(handler: Handler, request: AdmissionRequest, step: str, error: Exception) -> AdmissionResponse:
    log.error("%s failed for %s %s/%s (request %s)", step, request.kind, request.namespace, request.name,
              request.uid, exc_info=error)
    return failed_open(request.uid, handler.failure(request, step, error))


def plan(handler: Handler, request: AdmissionRequest) -> Answer:
    """The handler's answer, or its fail-open answer when it raised."""
    try:
        return handler.handle(request)
    except Exception as exc:  # the cluster must not stop deploying because our code broke
        return _failed(handler, request, "review", exc)


def _complete(handler: Handler, request: AdmissionRequest, pending: PendingReview,
              prediction: WorkloadPrediction) -> AdmissionResponse:
    try:
        return pending.complete(prediction)
    except Exception as exc:
        return _failed(handler, request, "review", exc)


def predict_and_complete(handler: Handler, request: AdmissionRequest, pending: PendingReview,
                         service: PredictionService) -> AdmissionResponse:
    """Run the model (or read the cache) in the calling thread, then complete the review."""
    try:
        prediction = service.predict(pending.request, pending.spec_hash)
    except Exception as exc:
        return _failed(handler, request, "prediction", exc)
    return _complete(handler, request, pending, prediction)


def review_now(handler: Handler, request: AdmissionRequest, service: PredictionService) -> AdmissionResponse:
    """A review answered in the calling thread, running the model if it must, with no time
    budget: for tests, benchmarks and callers that are not an event loop."""
    answer = plan(handler, request)
    if isinstance(answer, AdmissionResponse):
        return answer
    return predict_and_complete(handler, request, answer, service)


@dataclass(frozen=True)
class ReviewLimits:
    # Below the webhooks' timeoutSeconds (3 s in deploy/): we answer, fail-open, before the
    # apiserver gives up on us, so the user sees why nothing was done.
    timeout_seconds: float = 2.0
    # Model runs at once; more wait their turn (and their time budget still runs).
    max_concurrent: int = 8


class ReviewPipeline:
    """Answers reviews on the event loop, sending only model runs to worker threads."""

    def __init__(self, service: PredictionService, limits: ReviewLimits | None = None) -> None:
        self.service = service
        self.limits = limits or ReviewLimits()
        self._slots = anyio.CapacityLimiter(self.limits.max_concurrent)

    async def review(self, handler: Handler, request: AdmissionRequest) -> AdmissionResponse:
        answer = plan(handler, request)
        if isinstance(answer, AdmissionResponse):
            return answer
        try:
            cached = self.service.cached(answer.request, answer.spec_hash)
        except Exception as exc:
            return _failed(handler, request, "prediction", exc)
        if cached is not None:
            return _complete(handler, request, answer, cached)
        # Running the model is the one step whose cost is not bounded by the body: it goes to a
        # worker thread, and the apiserver gets a fail-open answer if it takes too long.
        timeout = self.limits.timeout_seconds
        with anyio.move_on_after(timeout):
            return await anyio.to_thread.run_sync(
                predict_and_complete, handler, request, answer, self.service,
                limiter=self._slots, abandon_on_cancel=True,
            )
        warning = f"energetiscope: {handler.not_done}: no answer within {timeout:g} s"
        log.warning("%s for request %s", warning, request.uid)
        return failed_open(request.uid, warning, outcome="timed_out")

    async def predict(self, request: InferenceRequest) -> WorkloadPrediction:
        """A prediction made in the reviews' worker slots (no time budget), so that debugging
        endpoints never stall admission."""
        return await anyio.to_thread.run_sync(self.service.predict, request, limiter=self._slots)
