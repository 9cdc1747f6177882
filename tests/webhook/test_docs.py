"""`/docs` without a browser: its headers and assets, the examples it offers (they must be answered
as a user who presses Execute expects), and that it goes away with the other debugging endpoints.
The page in a real browser is tests/browser/test_pages.py."""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():  # Starlette nudges towards httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from webhook.http.app import create_app
from webhook.http.openapi import INFERENCE_REQUEST_EXAMPLE, YAML_EXAMPLE
from webhook.http.routes_docs import ASSETS, CONTENT_SECURITY_POLICY, swagger_ui_dir
from webhook.http.state import AppSettings, app_state
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService


def _client(debug_endpoints: bool = True) -> TestClient:
    service = PredictionService(PriorPredictor())
    service.load()
    app = create_app(service, AppSettings(debug_endpoints=debug_endpoints))
    app_state(app).tls_ready = True
    return TestClient(app)


def test_the_page_and_its_assets_come_from_the_server_with_a_strict_policy() -> None:
    assert swagger_ui_dir() is not None, "swagger-ui-py is a dependency: its static files must be installed"
    client = _client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "<script>" not in page.text
    for name in ASSETS:
        asset = client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 0, name
        assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "validatorUrl: null" in client.get("/docs/assets/docs.js").text  # no badge fetched from elsewhere
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
                      "frame-ancestors 'none'"):
        assert directive in page.headers["content-security-policy"]


def test_the_examples_are_in_the_openapi_document_and_are_answered() -> None:
    client = _client()
    paths = client.get("/openapi.json").json()["paths"]
    json_body = paths["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert json_body["examples"]["web"]["value"] == INFERENCE_REQUEST_EXAMPLE
    for path in ("/infer/from-yaml", "/predict/from-yaml"):
        assert paths[path]["post"]["requestBody"]["content"]["text/plain"]["examples"]["shop"]["value"] == YAML_EXAMPLE

    prediction = client.post("/predict", json=INFERENCE_REQUEST_EXAMPLE)
    assert prediction.status_code == 200 and prediction.json()["workload_pods"] == 3
    answer = client.post("/predict/from-yaml", content=YAML_EXAMPLE)
    assert answer.status_code == 200
    assert [p["workload_kind"] for p in answer.json()["predictions"]] == ["Deployment", "CronJob"]
    assert [s["kind"] for s in answer.json()["skipped"]] == ["ConfigMap"]


@pytest.mark.parametrize("path", ["/docs", *(f"/docs/assets/{name}" for name in ASSETS)])
def test_no_docs_without_debug_endpoints(path: str) -> None:
    client = _client(debug_endpoints=False)
    assert client.get(path).status_code == 404
    assert "/predict" not in client.get("/openapi.json").json()["paths"]
