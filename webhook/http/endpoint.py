"""Endpoints as the webhook writes them, adapted to Starlette's: typed state in, and every
request timed and counted by endpoint and result.

An endpoint is ``async (request, state) -> (response, result)``; the result labels
``energetiscope_requests_total`` (``patched``, ``denied``, ``ok``...). Errors propagate as
:class:`HTTPProblem` to Starlette's exception handler; anything else is logged and becomes a
500 problem, so nothing reaches the client as a traceback.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from webhook.http.problems import HTTPProblem
from webhook.http.state import AppState, app_state

log = logging.getLogger(__name__)

Endpoint = Callable[[Request, AppState], Awaitable[tuple[Response, str]]]


def observed(name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint that runs ``endpoint`` and records its time and result as ``name``."""

    async def run(request: Request) -> Response:
        state = app_state(request.app)
        started = time.perf_counter()
        try:
            response, result = await endpoint(request, state)
        except HTTPProblem as problem:
            state.metrics.observe(name, f"http_{problem.status}", time.perf_counter() - started)
            raise
        except Exception:
            log.exception("unhandled error on %s", name)
            state.metrics.observe(name, "error", time.perf_counter() - started)
            raise HTTPProblem(500, "internal error") from None
        state.metrics.observe(name, result, time.perf_counter() - started)
        return response

    return run
