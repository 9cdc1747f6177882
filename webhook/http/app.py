"""The webhook's ASGI application: routes, error handling, shared state and lifespan, assembled.

A review's path through the code, in module order: ``http/routes_admission`` (body, envelope) ->
``admission/review`` (the decoded request, the response constructors) -> ``admission/pipeline``
(cache-first, worker slots, time budget, fail-open) -> ``admission/mutate`` or
``admission/validate`` (the handlers) -> ``admission/reading`` and ``model/extract`` (object ->
InferenceRequest) -> ``model/service`` (prediction) -> ``admission/annotations`` and
``admission/patch`` (the JSON patch).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from webhook.admission.policy import PolicyStore
from webhook.admission.validate import Budgets
from webhook.http import routes_admission, routes_debug, routes_docs, routes_health
from webhook.http.problems import HTTPProblem, problem_response
from webhook.http.state import AppSettings, AppState
from webhook.model.service import PredictionService

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


class WebhookApp(Starlette):
    """Starlette, with ``POST /mutate`` and ``POST /validate`` handed straight to their endpoints.

    Every review passed through Starlette's error middleware, exception middleware, router and
    request wrapper: ~15 us of a cache hit's ~135 us in process (bench/README.md). Those layers
    add nothing to these two routes: their endpoints (``endpoint.observed``) turn every error
    into an :class:`HTTPProblem`, answered here by the same handler Starlette would call. Any
    other method or path (``GET /mutate``: 405, ``/mutate/``) goes through Starlette as before.
    """

    def __init__(self, *args: Any, routes: Sequence[BaseRoute], direct: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, routes=routes, **kwargs)
        self._direct: dict[str, Callable[[Request], Awaitable[Response]]] = {
            route.path: route.endpoint for route in routes
            if isinstance(route, Route) and route.path in direct and route.methods == {"POST"}
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self._direct.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                request = Request(scope, receive, send)
                try:
                    response = await endpoint(request)
                except HTTPProblem as problem:
                    response = await problem_response(request, problem)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


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
    app = WebhookApp(
        routes=routes,
        direct=("/mutate", "/validate"),
        exception_handlers={HTTPProblem: problem_response},
        lifespan=lifespan,
    )
    app.state.webhook = AppState.build(service, settings, budgets)
    return app
