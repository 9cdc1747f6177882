"""Serving a review: the one place that owns the model's worker slots, its prediction process,
the time budget, cache-first answers and failing open.

Everything about a review but running the model is cheap and bounded by the body (which the
event loop has already parsed), so the handler runs on the loop; a prediction the cache holds
completes it there too. Running a trained model goes to its prediction process
(`webhook.model.process`: the model's numpy calls then never contend with the loop for the
GIL), awaited on the loop; when that process cannot take it (starting, ended, full), and for the
prior, a run model and the debugging endpoints, to a worker thread, at most ``max_concurrent``
at once. Both within ``timeout_seconds``, so a slow or stuck model never delays reviews whose
prediction is cached. Whatever raises, and whatever takes too long, is answered "allowed" with a
warning.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

import anyio

from webhook.admission.review import (
    AdmissionRequest,
    AdmissionResponse,
    Answer,
    Handler,
    PendingReview,
    failed_open,
)
from webhook.model.prediction import PodPrediction, Predictor
from webhook.model.process import PredictionProcess, ProcessUnavailable
from webhook.model.schema import InferenceRequest
from webhook.model.service import PredictionService, WorkloadPrediction

log = logging.getLogger(__name__)

IN_PROCESS, IN_THREAD = "process", "thread"  # where a model ran (`ReviewPipeline.model_runs`)
MODEL_RUN_PLACES = (IN_PROCESS, IN_THREAD)


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
    # Model runs in worker threads at once; more wait their turn (and their time budget still runs).
    max_concurrent: int = 8
    # A trained model's cache misses go to a process of its own (`webhook.model.process`).
    prediction_process: bool = True
    # After a prediction process ended, none is started for this long (a model that cannot load
    # or keeps getting stuck is not restarted in a loop); misses go to worker threads meanwhile.
    process_restart_seconds: float = 30.0


class ReviewPipeline:
    """Answers reviews on the event loop, sending only model runs to the prediction process or to
    worker threads."""

    def __init__(self, service: PredictionService, limits: ReviewLimits | None = None) -> None:
        self.service = service
        self.limits = limits or ReviewLimits()
        self._slots = anyio.CapacityLimiter(self.limits.max_concurrent)
        self._process: PredictionProcess | None = None
        self._start_failed_at: float | None = None  # time.monotonic() of a start that raised
        # Model runs by where they ran (`MODEL_RUN_PLACES`), for /metrics.
        self.model_runs: Counter[str] = Counter()

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
        # Running the model is the one step whose cost is not bounded by the body: it goes to the
        # prediction process or a worker thread, and the apiserver gets a fail-open answer if it
        # takes too long.
        timeout = self.limits.timeout_seconds
        with anyio.move_on_after(timeout):
            predictor = self.service.predictor
            sent = self._send(answer, predictor) if self.service.pod_alone(answer.request, predictor) else None
            if sent is not None:
                try:
                    pod = await sent
                    prediction = self.service.workload(answer.request, answer.spec_hash, pod, predictor)
                except ProcessUnavailable:
                    pass  # the process ended or fell behind before it answered: a worker thread predicts it
                except Exception as exc:
                    return _failed(handler, request, "prediction", exc)
                else:
                    return _complete(handler, request, answer, prediction)
            self.model_runs[IN_THREAD] += 1
            return await anyio.to_thread.run_sync(
                predict_and_complete, handler, request, answer, self.service,
                limiter=self._slots, abandon_on_cancel=True,
            )
        warning = f"energetiscope: {handler.not_done}: no answer within {timeout:g} s"
        log.warning("%s for request %s", warning, request.uid)
        return failed_open(request.uid, warning, outcome="timed_out")

    def _send(self, answer: PendingReview, predictor: Predictor) -> Awaitable[PodPrediction] | None:
        """The miss sent to the prediction process, to await; None when it cannot take it. Its
        answer is cached when it arrives, even after the review stopped waiting for it."""
        try:
            process = self._process_for(predictor)
            if process is None:
                return None
            sent = process.submit(answer.request, partial(self.service.remember, predictor, answer.spec_hash))
        except ProcessUnavailable:
            return None
        except Exception:  # starting or talking to a process (fork limits, descriptors): threads serve
            log.exception("the prediction process could not take a cache miss; predicting in a worker thread")
            return None
        self.service.cache.record_miss()
        self.model_runs[IN_PROCESS] += 1
        return sent

    def _process_for(self, predictor: Predictor) -> PredictionProcess | None:
        """The prediction process serving `predictor`'s artifact when it is ready; starts one for a
        newly loaded artifact (None until it is ready). None for the prior, which is cheaper to
        run than to send anywhere. Never raises: without a process, misses go to worker threads."""
        sha256 = getattr(predictor, "sha256", None)
        if not self.limits.prediction_process or self.service.model_path is None or sha256 is None:
            return None
        process = self._process
        if process is not None and process.sha256 == sha256:
            if not process.ended:
                return process if process.ready and process.model_id == predictor.model_id else None
            if process.load_failed or time.monotonic() - (process.ended_at or 0.0) < self.limits.process_restart_seconds:
                return None  # kept, ended, for /readyz to say why; the same file will not load again
        if self._start_failed_at is not None and (
                time.monotonic() - self._start_failed_at < self.limits.process_restart_seconds):
            return None
        self.close()
        try:
            self._process = PredictionProcess(self.service.model_path, sha256, self.service.prior)
            self._start_failed_at = None
        except Exception:
            self._start_failed_at = time.monotonic()
            log.exception("the prediction process could not be started; cache misses are predicted in worker threads")
        return None

    def start_prediction_process(self) -> None:
        """Start the prediction process for the model now serving, if it has none (the lifespan
        calls this after each model load, so that the first misses find it ready)."""
        self._process_for(self.service.predictor)

    def prediction_process_status(self) -> dict[str, object]:
        """For /readyz: "off" when misses are predicted in worker threads only."""
        if self._process is None:
            return {"state": "off" if not self.limits.prediction_process else "none", "pid": None,
                    "model_id": None, "error": None}
        return self._process.status()

    def close(self) -> None:
        """Stop the prediction process, if there is one (the server is stopping, or the process
        is replaced)."""
        if self._process is not None:
            try:
                self._process.close()
            except Exception:
                log.exception("stopping the prediction process failed")
            self._process = None

    async def predict(self, request: InferenceRequest) -> WorkloadPrediction:
        """A prediction made in the reviews' worker slots (no time budget), so that debugging
        endpoints never stall admission."""
        return await anyio.to_thread.run_sync(self.service.predict, request, limiter=self._slots)
