"""The webhook's ASGI application: routes, error handling, shared state and lifespan, assembled.

A review's path through the code, in module order: ``http/routes_admission`` (body, envelope) ->
``admission/review`` (the decoded request, the response constructors) -> ``admission/pipeline``
(cache-first, worker slots, time budget, fail-open) -> ``admission/mutate`` or
``admission/validate`` (the handlers) -> ``admission/reading`` and ``model/extract`` (object ->
InferenceRequest) -> ``model/service`` (prediction) -> ``admission/annotations`` and
``admission/patch`` (the JSON patch).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette

from webhook.admission.policy import PolicyStore
from webhook.admission.validate import Budgets
from webhook.http import routes_admission, routes_debug, routes_docs, routes_health
from webhook.http.problems import HTTPProblem, problem_response
from webhook.http.state import AppSettings, AppState
from webhook.model.service import PredictionService

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    service: PredictionService,
    settings: AppSettings | None = None,
    budgets: Budgets | None = None,
    *,
    lifespan: Lifespan | None = None,
) -> Starlette:
    """The application for ``service``; without budgets, a default policy and no inventory.

    ``lifespan`` runs around serving (loading, reloading, the inventory: ``http/lifespan.py``);
    without it nothing is loaded for the app, as in tests that load the service themselves.
    """
    settings = settings or AppSettings()
    budgets = budgets or Budgets(policy=PolicyStore(None), inventory=None)
    debugging = routes_debug.ROUTES + routes_docs.ROUTES if settings.debug_endpoints else []
    routes = routes_admission.ROUTES + debugging + routes_health.ROUTES
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPProblem: problem_response},
        lifespan=lifespan,
    )
    app.state.webhook = AppState.build(service, settings, budgets)
    return app
