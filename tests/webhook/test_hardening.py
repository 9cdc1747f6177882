"""Faults a cluster inflicts on a webhook: rotation, slow predictions, shutdown, weak TLS."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from certs.authority import create_serving_bundle

from harness.webhook_process import WebhookProcess, create_certs
from .reviews import patch_of, review
from .slow_model import SLOW_SERVE, slow_environment, write_model

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx",
                                                                   "resources": {"requests": {"cpu": "250m"}}}]}}},
}


def _served_serial(server: WebhookProcess) -> int:
    context = server.ssl_context()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def _serial(cert_dir: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes()).serial_number


def test_certificate_rotation_under_load_drops_nothing(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log", "--watch-interval", "0.2") as server:
        stop = threading.Event()
        outcomes = {"ok": 0, "failed": 0}
        errors: list[str] = []

        def load() -> None:
            # No keep-alive: every request is a new handshake, which must always succeed.
            with server.client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
                while not stop.is_set():
                    try:
                        response = client.post("/mutate", json=review(DEPLOYMENT))
                        ok = response.status_code == 200 and patch_of(response.json())
                    except httpx.HTTPError as exc:
                        ok = False
                        errors.append(repr(exc))
                    outcomes["ok" if ok else "failed"] += 1

        workers = [threading.Thread(target=load) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            for _ in range(3):
                before = _served_serial(server)
                time.sleep(0.5)
                create_serving_bundle(certs, ["localhost"], ["127.0.0.1"])  # same CA, new key and certificate
                rotated = _serial(certs)
                assert rotated != before
                deadline = time.monotonic() + 10
                while _served_serial(server) != rotated:
                    assert time.monotonic() < deadline, "new certificate not served within 10 s"
                    time.sleep(0.1)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert outcomes["failed"] == 0, errors[:3]
    assert outcomes["ok"] > 20


def test_tls_floor_is_1_2_with_forward_secret_ciphers(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log") as server:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(certs / "ca.crt"))
        with warnings.catch_warnings():  # the deprecation is the point: the server must refuse these
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(raw, server_hostname="localhost")
        tls12 = server.ssl_context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with tls12.wrap_socket(raw, server_hostname="localhost") as tls:
                name, version, _ = tls.cipher()
                assert version == "TLSv1.2" and name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)


# Where the model runs a cache miss: its prediction process (the default), or worker threads alone.
WHERE_MODELS_RUN = ("--prediction-process", "--no-prediction-process")


def _wait_for_the_prediction_process(client: httpx.Client, where: str, timeout_seconds: float = 60.0) -> None:
    """With a prediction process, wait until it serves (misses take worker threads until then)."""
    if where == "--no-prediction-process":
        assert client.get("/readyz").json()["prediction_process"]["state"] == "off"
        return
    deadline = time.monotonic() + timeout_seconds
    while (state := client.get("/readyz").json()["prediction_process"])["state"] != "ready":
        assert state["state"] in ("none", "starting") and time.monotonic() < deadline, state
        time.sleep(0.1)


@pytest.mark.parametrize("where", WHERE_MODELS_RUN)
def test_a_stuck_prediction_fails_open_within_the_time_budget(tmp_path: Path, where: str) -> None:
    certs = create_certs(tmp_path / "certs")
    write_model(tmp_path / "slow.esmodel")
    with WebhookProcess(certs, tmp_path / "log", "--model", str(tmp_path / "slow.esmodel"), "--review-timeout", "0.5",
                        "--max-concurrent-reviews", "2", where, module=SLOW_SERVE,
                        env=slow_environment()) as server, server.client() as client:
        assert client.get("/readyz").json()["model"]["id"] == "slow-model"
        _wait_for_the_prediction_process(client, where)
        started = time.monotonic()
        answer = client.post("/mutate", json=review(DEPLOYMENT)).json()
        elapsed = time.monotonic() - started
        assert elapsed < 2.0
        assert answer["response"]["allowed"] is True and "patch" not in answer["response"]
        assert answer["response"]["warnings"] == ["energetiscope: not annotated: no answer within 0.5 s"]
        # Bounded concurrency: with both slots stuck, later reviews still answer in time.
        for _ in range(3):
            started = time.monotonic()
            assert client.post("/validate", json=review(DEPLOYMENT)).json()["response"]["allowed"] is True
            assert time.monotonic() - started < 2.0
        metrics = client.get("/metrics").text
        assert 'energetiscope_requests_total{endpoint="mutate",result="timed_out"} 1.0' in metrics
        # The first miss went where the server was told; the later ones, queued behind a stuck
        # prediction process, to worker threads.
        runs_in_process = 1.0 if where == "--prediction-process" else 0.0
        assert f'energetiscope_model_runs_total{{where="process"}} {runs_in_process}' in metrics


@pytest.mark.parametrize("where", WHERE_MODELS_RUN)
def test_cached_predictions_answer_while_every_model_slot_is_stuck(tmp_path: Path, where: str) -> None:
    """A cache hit needs no model run, so it does not queue behind stuck predictions."""
    certs = create_certs(tmp_path / "certs")
    write_model(tmp_path / "slow.esmodel")
    stuck = json.loads(json.dumps(DEPLOYMENT))
    stuck["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "777m"
    with WebhookProcess(certs, tmp_path / "log", "--model", str(tmp_path / "slow.esmodel"), "--review-timeout", "2",
                        "--max-concurrent-reviews", "2", where, module=SLOW_SERVE,
                        env=slow_environment(slow_cpu_millicores=777)) as server, server.client() as client:
        _wait_for_the_prediction_process(client, where)
        assert patch_of(client.post("/mutate", json=review(DEPLOYMENT)).json()), "the fast spec is predicted"

        def post_stuck() -> None:
            with server.client() as other:
                other.post("/mutate", json=review(stuck))

        def predict_stuck() -> None:  # the debugging endpoint runs the model too
            request = {"workload_kind": "Deployment", "containers": [{"name": "c", "image": "nginx", "req_cpu_mcpu": 777}]}
            with server.client(timeout=30.0) as other:
                assert other.post("/predict", json=request).status_code == 200

        blockers = [threading.Thread(target=post_stuck) for _ in range(2)] + [threading.Thread(target=predict_stuck)]
        for thread in blockers:
            thread.start()
        time.sleep(0.3)  # both slots are now taken by predictions sleeping in the encoder
        for endpoint in ("/mutate", "/validate", "/mutate"):
            started = time.monotonic()
            answer = client.post(endpoint, json=review(DEPLOYMENT)).json()
            # Queued behind the slots, it would answer only when they free, at the 2 s budget.
            assert time.monotonic() - started < 1.0
            assert answer["response"]["allowed"] is True and not answer["response"].get("warnings"), answer
        assert patch_of(answer)
        # An uncached slow spec still runs the model, and fails open.
        other = json.loads(json.dumps(stuck))
        other["spec"]["template"]["spec"]["containers"][0]["image"] = "httpd"
        answer = client.post("/mutate", json=review(other)).json()["response"]
        assert answer["warnings"] == ["energetiscope: not annotated: no answer within 2 s"]
        for thread in blockers:
            thread.join()


def test_sigterm_drains_reviews_in_flight(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    server = WebhookProcess(certs, tmp_path / "log").start()
    try:
        body = json.dumps(review(DEPLOYMENT)).encode()
        gate = threading.Event()
        result: dict[str, object] = {}

        def slow_body() -> Iterator[bytes]:
            yield body[:100]
            gate.wait(10)  # the server is now mid-request when SIGTERM arrives
            yield body[100:]

        def send() -> None:
            with server.client() as client:
                response = client.post("/mutate", content=slow_body(), headers={"content-type": "application/json"})
                result["status"] = response.status_code
                result["patched"] = bool(patch_of(response.json()))

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        gate.set()
        sender.join(15)
        assert result == {"status": 200, "patched": True}
        # Uvicorn re-raises the SIGTERM it caught once it has drained, so the exit reads as SIGTERM.
        assert server.process is not None and server.process.wait(15) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.log()
    finally:
        server.stop()


def test_debug_endpoints_can_be_switched_off(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log", "--no-debug-endpoints") as server, server.client() as client:
        assert client.post("/predict", json={}).status_code == 404
        assert client.post("/predict/from-yaml", content="").status_code == 404
        assert client.get("/docs").status_code == 404 and client.get("/docs/assets/docs.js").status_code == 404
        assert patch_of(client.post("/mutate", json=review(DEPLOYMENT)).json())


def test_pinned_digest_mismatch_serves_the_prior_and_says_why(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    write_model(tmp_path / "model.esmodel")
    with WebhookProcess(certs, tmp_path / "log", "--model", str(tmp_path / "model.esmodel"),
                        "--model-sha256", "ab" * 32) as server, server.client() as client:
        model = client.get("/readyz").json()["model"]
        assert model["basis"] == "prior" and "expected " + "ab" * 32 in model["error"]
        metrics = client.get("/metrics").text
        assert 'energetiscope_model_info{basis="prior",error="model artifact' in metrics
        assert "has sha256" in server.log()


def test_no_endpoint_takes_a_path_or_loads_files() -> None:
    """Artifacts load only from the configured path: no route, parameter or field names a file."""
    from webhook.http.app import create_app
    from webhook.http.openapi import openapi_document
    from webhook.model.prior import PriorPredictor
    from webhook.model.service import PredictionService

    app = create_app(PredictionService(PriorPredictor()))
    paths = {route.path for route in app.routes}
    assert paths == {"/mutate", "/validate", "/predict", "/infer/from-yaml", "/predict/from-yaml",
                     "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/assets/swagger-ui.css",
                     "/docs/assets/swagger-ui-bundle.js", "/docs/assets/favicon-32x32.png", "/docs/assets/docs.js"}
    document = json.dumps(openapi_document())
    for word in ("model_path", "artifact", "filename", '"in": "query"', '"in": "path"'):
        assert word not in document
