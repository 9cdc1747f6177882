"""Liveness, readiness, Prometheus metrics and the OpenAPI document.

``/readyz`` is ready once the lifespan has loaded certificates, model and policy; it reports
the model serving (id, basis, path, sha256, why a configured one is not serving) and the
budgets' policy and inventory state.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhook.http.endpoint import observed
from webhook.http.metrics import CONTENT_TYPE
from webhook.http.state import AppState


async def healthz(request: Request, state: AppState) -> tuple[Response, str]:
    return JSONResponse({"status": "ok"}), "ok"


async def readyz(request: Request, state: AppState) -> tuple[Response, str]:
    service, budgets = state.service, state.budgets
    status = service.status()
    ready = state.ready
    state.metrics.ready.set(1 if ready else 0)
    inventory = budgets.inventory
    body = {
        "ready": ready,
        "budgets": {
            "policy_path": str(budgets.policy.path) if budgets.policy.path else None,
            "policy_error": budgets.policy.error,
            "inventory": "off" if inventory is None else ("synced" if inventory.synced else "syncing"),
        },
        "tls": state.tls_ready,
        "model": {
            "loaded": service.loaded,
            "id": status.model_id,
            "basis": status.basis,
            "path": status.path,
            "sha256": status.sha256,
            "error": status.error,
        },
        # Where a trained model's cache misses run (webhook.model.process); "none" for the prior.
        "prediction_process": state.pipeline.prediction_process_status(),
    }
    return JSONResponse(body, status_code=200 if ready else 503), "ok" if ready else "not_ready"


async def metrics(request: Request, state: AppState) -> tuple[Response, str]:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE), "ok"


async def openapi(request: Request, state: AppState) -> tuple[Response, str]:
    return JSONResponse(state.openapi), "ok"


ROUTES = [
    Route("/healthz", observed("healthz", healthz), methods=["GET"]),
    Route("/readyz", observed("readyz", readyz), methods=["GET"]),
    Route("/metrics", observed("metrics", metrics), methods=["GET"]),
    Route("/openapi.json", observed("openapi", openapi), methods=["GET"]),
]
