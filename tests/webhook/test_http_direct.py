"""How the webhook writes answers and reaches its review endpoints: the same answers, less work.

``WebhookApp`` hands ``POST /mutate`` and ``POST /validate`` straight to their endpoints; every
answer must be what Starlette's routing gives. ``ReviewHttpProtocol`` writes an answer's head
and body as one write, so over TLS one answer is one record; nothing it holds may be reordered
or lost.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from harness.webhook_process import WebhookProcess, create_certs
from webhook.http.app import WebhookApp, create_app
from webhook.http.protocol import HeadHoldingTransport
from webhook.http.state import AppSettings, app_state
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from .reviews import review


def _app(direct: bool) -> WebhookApp:
    service = PredictionService(PriorPredictor())
    service.load()
    app = create_app(service, AppSettings(max_body_bytes=64 * 1024))
    if not direct:
        app._direct.clear()  # every request through Starlette's middleware and router
    app_state(app).tls_ready = True
    return app


def _deployment(cpu: str = "250m") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "c", "image": "nginx", "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}]}}},
    }


def _exchanges() -> list[tuple[str, str, bytes, dict[str, str]]]:
    json_type = {"content-type": "application/json"}
    valid = json.dumps(review(_deployment())).encode()
    return [
        ("POST", "/mutate", valid, json_type),
        ("POST", "/validate", valid, json_type),
        ("POST", "/mutate", b"{not json", json_type),  # 400
        ("POST", "/mutate", b'{"kind": "Pod"}', json_type),  # 400: not an AdmissionReview
        ("POST", "/mutate", b"[" * 70_000, json_type),  # 413
        ("GET", "/mutate", b"", {}),  # 405, from Starlette's router
        ("PUT", "/validate", valid, json_type),  # 405
        ("POST", "/mutate/", valid, json_type),  # not the route: Starlette's answer
        ("POST", "/healthz", b"", {}),  # 405
    ]


def test_review_endpoints_answer_directly_exactly_as_through_starlette() -> None:
    direct, routed = _app(direct=True), _app(direct=False)
    assert set(direct._direct) == {"/mutate", "/validate"}
    with TestClient(direct, raise_server_exceptions=False) as a, TestClient(routed, raise_server_exceptions=False) as b:
        for method, path, body, headers in _exchanges():
            one = a.request(method, path, content=body, headers=headers, follow_redirects=False)
            other = b.request(method, path, content=body, headers=headers, follow_redirects=False)
            assert one.status_code == other.status_code, (method, path)
            assert one.headers == other.headers, (method, path)
            first, second = one.content, other.content
            if one.status_code == 200 and path != "/mutate/":
                # The review's patch and uid are the request's: the same bytes both ways.
                assert json.loads(first)["response"]["uid"] == json.loads(body)["request"]["uid"]
            assert first == second, (method, path)
    # Both count and time the reviews they answer.
    for app in (direct, routed):
        text = app_state(app).metrics.render().decode()
        assert 'energetiscope_requests_total{endpoint="mutate",result="patched"} 1.0' in text
        assert 'energetiscope_requests_total{endpoint="mutate",result="http_413"} 1.0' in text


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_a_response_head_goes_out_with_its_body_in_one_write() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        inner = _Transport()
        transport = HeadHoldingTransport(inner, loop)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert inner.writes == [] and transport.get_write_buffer_size() > 0
        transport.write(b"{}")
        after_body = list(inner.writes)
        # A head whose body does not follow at once (a stream, 100 Continue) goes out at the next turn.
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        after_turn = list(inner.writes)
        # Other bytes are never held; held bytes go out before a close.
        transport.write(b"chunk")
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        transport.close()
        return after_body, after_turn, inner.writes

    after_body, after_turn, final = asyncio.run(scenario())
    assert after_body == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert after_turn == after_body + [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert final == after_turn + [b"chunk", b"HTTP/1.1 400 Bad Request\r\n\r\n"]


def _records(raw: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each complete TLS record in raw bytes from the server."""
    records, offset = [], 0
    while offset + 5 <= len(raw):
        kind, length = raw[offset], int.from_bytes(raw[offset + 3:offset + 5], "big")
        if offset + 5 + length > len(raw):
            break
        records.append((kind, length))
        offset += 5 + length
    return records


def test_over_tls_one_answer_is_one_record(tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log", "--kube-access", "off") as server:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            def pump_out() -> None:
                data = outgoing.read()
                if data:
                    sock.sendall(data)

            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pump_out()
                    incoming.write(sock.recv(65536))
            pump_out()

            def exchange(body: bytes) -> tuple[bytes, list[tuple[int, int]]]:
                request = (b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n" % len(body)) + body
                tls.write(request)
                pump_out()
                raw, answer = b"", b""
                while b"\r\n\r\n" not in answer or len(answer) < _answer_length(answer):
                    chunk = sock.recv(65536)
                    assert chunk, "connection closed"
                    raw += chunk
                    incoming.write(chunk)
                    try:
                        while True:
                            answer += tls.read(65536)
                    except ssl.SSLWantReadError:
                        pass
                return answer, _records(raw)

            # The first exchange may carry TLS 1.3 session tickets; the second is the answer alone.
            exchange(json.dumps(review(_deployment("100m"))).encode())
            answer, records = exchange(json.dumps(review(_deployment("300m"))).encode())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"allowed":true' in answer
    assert records == [(23, records[0][1])], records  # one application-data record: head and body


def _answer_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4
