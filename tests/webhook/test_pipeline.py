"""The review pipeline: cache-first on the loop, model runs in bounded worker slots, a time
budget, and fail-open whatever raises (the HTTP-level proofs are in test_hardening.py)."""

from __future__ import annotations

import threading
import time

import anyio

from webhook.admission.mutate import MutatingHandler
from webhook.admission.pipeline import ReviewLimits, ReviewPipeline, review_now
from webhook.admission.review import AdmissionRequest, parse_review
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from .reviews import review

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
}


def _service() -> PredictionService:
    service = PredictionService(PriorPredictor())
    service.load()
    return service


class _Broken(MutatingHandler):
    def handle(self, request: AdmissionRequest):  # type: ignore[no-untyped-def]
        raise KeyError("bug")


def test_a_handler_that_raises_fails_open_with_a_warning() -> None:
    answer = review_now(_Broken(), parse_review(review(DEPLOYMENT)), _service())
    assert answer.outcome == "failed_open" and answer.allowed
    assert answer.warnings == ("energetiscope: Deployment not annotated: review failed (KeyError)",)


def test_a_cached_prediction_is_answered_on_the_loop() -> None:
    service = _service()
    request = parse_review(review(DEPLOYMENT))
    assert review_now(MutatingHandler(), request, service).outcome == "patched"
    loop_thread: list[int] = []
    predict = service.predict

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        loop_thread.append(threading.get_ident())
        return predict(*args, **kwargs)

    service.predict = spy  # type: ignore[method-assign]

    async def main() -> str:
        return (await ReviewPipeline(service).review(MutatingHandler(), request)).outcome

    assert anyio.run(main) == "patched"
    assert loop_thread == []  # the model was not asked: the cache answered


def test_a_slow_model_fails_open_within_the_budget() -> None:
    service = _service()
    predict = service.predict

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(1.0)
        return predict(*args, **kwargs)

    service.predict = slow  # type: ignore[method-assign]

    async def main():  # type: ignore[no-untyped-def]
        pipeline = ReviewPipeline(service, ReviewLimits(timeout_seconds=0.1, max_concurrent=1))
        return await pipeline.review(MutatingHandler(), parse_review(review(DEPLOYMENT)))

    started = time.monotonic()
    answer = anyio.run(main)
    assert time.monotonic() - started < 0.9
    assert answer.outcome == "timed_out"
    assert answer.warnings == ("energetiscope: not annotated: no answer within 0.1 s",)
