"""The load test's reference: a bare Starlette endpoint that answers an AdmissionReview with its uid.

    python -m bench.echo_server --cert-dir DIR --port 8444

Same stack as `energetiscope serve` (Starlette on one uvicorn worker, `POST /mutate` handed straight to
its endpoint as the webhook's `WebhookApp` does), same TLS context
(`webhook.http.tls.ServingCertificates`, so the same TLS floor and cipher suites), the same
certificate files and the same uvicorn settings (`webhook.http.server.tls_server_config`). It parses the JSON
body (with the webhook's parser), because no webhook can answer without reading the uid, and does nothing else: the
webhook's throughput as a share of this one's is the cost of predicting and patching.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webhook.http.app import WebhookApp
from webhook.http.body import parse_json
from webhook.http.problems import HTTPProblem, problem_response
from webhook.http.server import tls_server_config
from webhook.http.tls import ServingCertificates


def create_echo_app() -> Starlette:
    async def mutate(request: Request) -> JSONResponse:
        review = parse_json(await request.body())
        uid = review["request"]["uid"]
        return JSONResponse({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                             "response": {"uid": uid, "allowed": True}})

    async def readyz(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return WebhookApp(routes=[Route("/mutate", mutate, methods=["POST"]), Route("/readyz", readyz, methods=["GET"])],
                      direct=("/mutate",), exception_handlers={HTTPProblem: problem_response})


def serve(cert_dir: Path, host: str, port: int) -> None:
    certificates = ServingCertificates(cert_dir / "tls.crt", cert_dir / "tls.key")
    # The webhook's own listening config: same TLS context, HTTP and event-loop implementation.
    uvicorn.Server(tls_server_config(create_echo_app(), certificates, host=host, port=port, max_connections=1000)).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8444)
    args = parser.parse_args()
    serve(args.cert_dir, args.host, args.port)


if __name__ == "__main__":
    main()
