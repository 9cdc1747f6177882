"""The interactive API page: Swagger UI at ``/docs``, over the service's own ``/openapi.json``.

Everything the page loads comes from this server: Swagger UI's script and stylesheet are the
files the ``swagger-ui-py`` package ships (Swagger UI 5, which reads OpenAPI 3.1), read once and
held in memory, and the page's own start-up script is a file here too, so the page works in an
air-gapped cluster and its Content-Security-Policy can allow nothing but this origin (no inline
script or style, no CDN, no validator badge). Each asset has its own fixed route: no route takes
a file name. The examples a user needs (an InferenceRequest, a multi-document YAML) are in the
OpenAPI document itself (``webhook.http.openapi``), so "Try it out" starts from them.

It is a debugging endpoint: off with ``--no-debug-endpoints``, like ``/predict``.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook.http.endpoint import Endpoint, observed
from webhook.http.problems import HTTPProblem
from webhook.http.state import AppState

SWAGGER_UI_PACKAGE = "swagger_ui"  # the import name of PyPI's swagger-ui-py
ASSET_PREFIX = "/docs/assets"

# Swagger UI's own stylesheet draws its icons as data: URIs; nothing else is allowed from anywhere but here.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>EnergetiScope API</title>
<link rel="icon" type="image/png" href="{ASSET_PREFIX}/favicon-32x32.png">
<link rel="stylesheet" href="{ASSET_PREFIX}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSET_PREFIX}/swagger-ui-bundle.js"></script>
<script src="{ASSET_PREFIX}/docs.js"></script>
</body>
</html>
"""

# The page's start-up, a file rather than an inline script so that the CSP needs no 'unsafe-inline'.
START_SCRIPT = """// EnergetiScope /docs: Swagger UI over this server's /openapi.json, nothing from elsewhere.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  displayRequestDuration: true,
  defaultModelsExpandDepth: 0,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""

# Route -> (file in the package's static folder, or None for START_SCRIPT; media type).
ASSETS: dict[str, tuple[str | None, str]] = {
    "swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "favicon-32x32.png": ("favicon-32x32.png", "image/png"),
    "docs.js": (None, "text/javascript; charset=utf-8"),
}


def swagger_ui_dir() -> Path | None:
    """Swagger UI's files as ``swagger-ui-py`` installs them, found without importing the package
    (its ``__init__`` pulls in web-framework adapters this server does not use)."""
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(list(spec.submodule_search_locations)[0]) / "static"
    return static if static.is_dir() else None


@cache
def asset(name: str) -> bytes:
    """One asset's bytes, read once; a missing Swagger UI is a 503 that says what to install."""
    file_name, _ = ASSETS[name]
    if file_name is None:
        return START_SCRIPT.encode("utf-8")
    static = swagger_ui_dir()
    if static is None or not (static / file_name).is_file():
        raise FileNotFoundError(file_name)
    return (static / file_name).read_bytes()


async def docs(request: Request, state: AppState) -> tuple[Response, str]:
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS), "ok"


def _asset_endpoint(name: str) -> Endpoint:
    async def serve(request: Request, state: AppState) -> tuple[Response, str]:
        try:
            body = asset(name)
        except FileNotFoundError:
            raise HTTPProblem(503, "Swagger UI is not installed: pip install swagger-ui-py") from None
        return Response(body, media_type=ASSETS[name][1], headers=SECURITY_HEADERS), "ok"

    return serve


ROUTES = [
    Route("/docs", observed("docs", docs), methods=["GET"]),
    *(Route(f"{ASSET_PREFIX}/{name}", observed("docs_asset", _asset_endpoint(name)), methods=["GET"]) for name in ASSETS),
]
