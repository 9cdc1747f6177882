"""HTTP errors as JSON: the exception endpoints raise, and the Starlette handler that answers it.

An endpoint raises :class:`HTTPProblem` (413 for a body over the limit, 400 for one that cannot be
read, 422 for one that can be read but not used) and Starlette's exception middleware turns it
into ``{"error": ..., **detail}``; no endpoint catches errors by hand.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class HTTPProblem(Exception):
    def __init__(self, status: int, error: str, **detail: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, **self.detail}, status_code=self.status)


async def problem_response(request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for :class:`HTTPProblem`."""
    assert isinstance(exc, HTTPProblem)
    return exc.response()
