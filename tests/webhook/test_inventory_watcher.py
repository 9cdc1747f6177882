"""The budget inventory's list+watch against a scripted apiserver: 410 Gone, failures, silence.

A small HTTP server answers the list and watch requests of every kind the watcher reads,
through the real ``kubernetes`` client, so the faults arrive the way an apiserver sends
them: a watch ERROR event with code 410, a 500 while etcd is away, a refused connection,
a watch stream that stays silent. The restarts of a real apiserver and etcd are in
tests/e2e/test_inventory_restarts_e2e.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlparse

import kubernetes.client
import pytest

from webhook.admission import annotations as keys
from webhook.admission.inventory import Backoff, InventoryWatcher, WorkloadInventory

WATCH_TIMEOUT_SECONDS = 1


def deployment(name: str, replicas: int, resource_version: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": resource_version,
                         "annotations": {keys.POD_POWER_WATTS: "2.0"}},
            "spec": {"replicas": replicas}}


class FakeApiserver:
    """Lists and watches of every kind; Deployments' answers are scripted by the test."""

    def __init__(self) -> None:
        self.deployments: list[dict[str, Any]] = []
        self.resource_version = "10"
        self.list_status = 200
        # What the next Deployment watches do, in order; then "quiet" (end at timeoutSeconds).
        self.watch_script: list[str] = []
        self.requests: list[str] = []  # "list" or "watch", Deployments only
        # A "gone" watch waits for this before its 410, so the test changes things first.
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # the test output stays readable
                pass

            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                fake.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = parse_qs(url.query)
        is_deployments = url.path == "/apis/apps/v1/deployments"
        watching = query.get("watch", ["false"])[0] in ("true", "1", "True")
        if is_deployments:
            with self._lock:
                self.requests.append("watch" if watching else "list")
        if not watching:
            if is_deployments and self.list_status != 200:
                self._send(handler, self.list_status, {"kind": "Status", "code": self.list_status,
                                                       "message": "etcdserver: request timed out"})
                return
            items = self.deployments if is_deployments else []
            self._send(handler, 200, {"items": items, "metadata": {"resourceVersion": self.resource_version}})
            return
        step = "quiet"
        if is_deployments and self.watch_script:
            step = self.watch_script.pop(0)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.end_headers()
        if step == "gone":
            self.release.wait(5.0)
            event = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                 "message": "too old resource version"}}
            handler.wfile.write(json.dumps(event).encode() + b"\n")
        elif step == "silent":  # the connection stays open and nothing comes, past timeoutSeconds
            time.sleep(30)
        else:
            time.sleep(float(query.get("timeoutSeconds", ["1"])[0]))
        handler.wfile.flush()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> FakeApiserver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    fake = FakeApiserver().start()
    yield fake
    fake.stop()


def start_watcher(url: str, **options: Any) -> tuple[WorkloadInventory, InventoryWatcher]:
    configuration = kubernetes.client.Configuration(host=url)
    inventory = WorkloadInventory()
    watcher = InventoryWatcher(inventory, kubernetes.client.ApiClient(configuration),
                               watch_timeout_seconds=WATCH_TIMEOUT_SECONDS, list_timeout_seconds=2.0,
                               backoff_initial_seconds=0.05, backoff_max_seconds=0.2, **options)
    watcher.start()
    return inventory, watcher


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.02)


def test_410_gone_on_the_watch_relists_at_once_without_going_unsynced(apiserver: FakeApiserver) -> None:
    apiserver.deployments = [deployment("old", 1, "9")]
    apiserver.watch_script = ["gone"]
    inventory, watcher = start_watcher(apiserver.url)
    try:
        until(lambda: inventory.synced, "the first lists")
        # The list after the 410 sees what changed meanwhile: "old" deleted, "new" created.
        apiserver.deployments = [deployment("new", 3, "11")]
        apiserver.resource_version = "11"
        apiserver.release.set()
        until(lambda: inventory.namespace_total("shop", "point") == 6.0, "the re-list after 410 Gone")
        assert apiserver.requests[:3] == ["list", "watch", "list"]
        assert inventory.synced
    finally:
        watcher.stop()


def test_a_failing_list_marks_the_kind_unsynced_until_a_list_succeeds(apiserver: FakeApiserver) -> None:
    apiserver.deployments = [deployment("a", 1, "9")]
    apiserver.release.set()
    inventory, watcher = start_watcher(apiserver.url)
    try:
        until(lambda: inventory.synced, "the first lists")
        apiserver.list_status = 500
        apiserver.watch_script = ["gone"]  # the next watch: 410, so the watcher lists, and finds etcd away
        until(lambda: not inventory.synced, "unsynced while the list fails")
        assert inventory.unsynced_kinds == {"Deployment"}
        lists_while_failing = apiserver.requests.count("list")
        time.sleep(0.5)
        # Retried with backoff (at most 0.2 s here), not in a tight loop.
        assert 1 <= apiserver.requests.count("list") - lists_while_failing <= 6
        apiserver.deployments = [deployment("a", 1, "9"), deployment("b", 2, "12")]
        apiserver.list_status = 200
        until(lambda: inventory.synced, "synced once a list succeeds")
        assert inventory.namespace_total("shop", "point") == 6.0
    finally:
        watcher.stop()


def test_a_watch_that_goes_silent_is_dropped_and_the_kind_relisted(apiserver: FakeApiserver) -> None:
    apiserver.deployments = [deployment("a", 1, "9")]
    apiserver.watch_script = ["silent"]
    inventory, watcher = start_watcher(apiserver.url, silent_watch_margin_seconds=0.5)
    try:
        until(lambda: inventory.synced, "the first lists")
        apiserver.deployments = [deployment("a", 1, "9"), deployment("b", 1, "12")]
        # Read timeout at 1 s (timeoutSeconds) + 0.5 s of silence: then a re-list.
        until(lambda: inventory.namespace_total("shop", "point") == 4.0, "the re-list after a silent watch",
              timeout=5.0)
        assert apiserver.requests[:3] == ["list", "watch", "list"]
    finally:
        watcher.stop()


def test_an_unreachable_apiserver_leaves_the_inventory_unsynced_and_retrying() -> None:
    closed = FakeApiserver()  # bound to a free port, never served
    url = closed.url
    closed.server.server_close()  # now the port refuses connections
    inventory, watcher = start_watcher(url)
    try:
        time.sleep(0.5)
        assert not inventory.synced and inventory.unsynced_kinds == inventory.expected_kinds
    finally:
        watcher.stop()


def test_a_relist_replaces_a_kind_in_one_step() -> None:
    inventory = WorkloadInventory()
    inventory.replace("Deployment", [deployment("a", 2, "1"), deployment("b", 1, "1")])
    inventory.replace("StatefulSet", [])
    inventory.replace("Deployment", [deployment("b", 3, "2")])
    assert inventory.namespace_total("shop", "point") == 6.0


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(initial_seconds=1.0, max_seconds=4.0)
    delays = [backoff.next_delay() for _ in range(5)]
    for delay, step in zip(delays, (1.0, 2.0, 4.0, 4.0, 4.0)):
        assert step / 2 <= delay <= step
    backoff.reset()
    assert backoff.next_delay() <= 1.0
