"""What every endpoint of one webhook shares, typed: settings, the prediction service, budgets,
the review pipeline and its handlers, metrics, and whether the server is ready.

Built once by ``create_app`` and kept on the Starlette application; endpoints and the lifespan
reach it through :func:`app_state`, never through untyped attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette

from webhook.admission.mutate import MutatingHandler, MutationSettings
from webhook.admission.pipeline import ReviewLimits, ReviewPipeline
from webhook.admission.reading import ObjectReader
from webhook.admission.validate import Budgets, ValidatingHandler
from webhook.http.body import DEFAULT_MAX_BODY_BYTES
from webhook.http.metrics import WebhookMetrics
from webhook.http.openapi import openapi_document
from webhook.model.service import PredictionService


@dataclass(frozen=True)
class AppSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    mutation: MutationSettings = MutationSettings()
    # Below the webhooks' timeoutSeconds (3 s in deploy/): we answer, fail-open, before the
    # apiserver gives up on us, so the user sees why nothing was annotated.
    review_timeout_seconds: float = 2.0
    # Model runs at once; more wait their turn (and their time budget still runs).
    max_concurrent_reviews: int = 8
    # A trained model's cache misses go to a process of its own (webhook.model.process).
    prediction_process: bool = True
    debug_endpoints: bool = True
    # Series of energetiscope_workload_predicted_watts (the largest workloads); 0: none.
    workload_metrics_max_series: int = 0


@dataclass
class AppState:
    settings: AppSettings
    service: PredictionService
    budgets: Budgets
    reader: ObjectReader
    metrics: WebhookMetrics
    pipeline: ReviewPipeline
    mutating: MutatingHandler
    validating: ValidatingHandler
    openapi: dict[str, Any] = field(repr=False)
    # Set by the lifespan once uvicorn has loaded the certificate and the reloadables are loaded.
    tls_ready: bool = False

    @classmethod
    def build(cls, service: PredictionService, settings: AppSettings, budgets: Budgets) -> AppState:
        # As many objects remembered as predictions: --cache-entries 0 turns both off.
        reader = ObjectReader(service.cache.max_entries)
        limits = ReviewLimits(settings.review_timeout_seconds, settings.max_concurrent_reviews,
                              prediction_process=settings.prediction_process)
        pipeline = ReviewPipeline(service, limits)
        return cls(
            settings=settings,
            service=service,
            budgets=budgets,
            reader=reader,
            metrics=WebhookMetrics(service, reader, budgets, settings.workload_metrics_max_series,
                                   model_runs=pipeline.model_runs),
            pipeline=pipeline,
            mutating=MutatingHandler(settings.mutation, reader),
            validating=ValidatingHandler(budgets, reader),
            openapi=openapi_document(settings.debug_endpoints),
        )

    @property
    def ready(self) -> bool:
        return self.tls_ready and self.service.loaded


def app_state(app: Starlette) -> AppState:
    """The webhook's state of an application made by ``create_app``."""
    state = app.state.webhook
    assert isinstance(state, AppState)
    return state
