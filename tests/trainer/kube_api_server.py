"""A tiny HTTP server on 127.0.0.1 that answers the Kubernetes API's read paths from recorded
list responses, so the `kubernetes` client can be tested without a cluster.

It serves, for every recorded collection (`/api/v1/pods`, `/apis/apps/v1/deployments`, ...):
the all-namespaces list, the per-namespace list, one object by name (404 Status otherwise),
pages (`limit` / `continue`), and `watch=true`, which streams the recorded events for that
collection and closes (a real apiserver would hold the connection until `timeoutSeconds`).
Every request path is kept in `requests` so tests can see what the client asked.

A real kube-apiserver version of these tests comes with the e2e harness (tests/e2e).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

RECORDED_DIR = Path(__file__).resolve().parent / "fixtures" / "kube_api"
_PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)


def collection_path(api_version: str, plural: str) -> str:
    return f"/api/{api_version}/{plural}" if "/" not in api_version else f"/apis/{api_version}/{plural}"


def load_recorded(directory: Path = RECORDED_DIR) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Recorded list responses keyed by collection path, and watch events keyed the same way."""
    lists: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name == "watch_events.json":
            continue
        document = json.loads(path.read_text(encoding="utf-8"))
        lists[collection_path(document["apiVersion"], path.stem)] = document
    events_file = directory / "watch_events.json"
    raw_events = json.loads(events_file.read_text(encoding="utf-8")) if events_file.is_file() else {}
    events: dict[str, list[dict[str, Any]]] = {}
    for plural, plural_events in raw_events.items():
        api_version = next(doc["apiVersion"] for p, doc in lists.items() if p.endswith(f"/{plural}"))
        events[collection_path(api_version, plural)] = plural_events
    return lists, events


def list_response(api_version: str, list_kind: str, items: Sequence[Mapping[str, Any]], resource_version: str = "1") -> dict[str, Any]:
    """A list response as the API serves it: items without kind and apiVersion."""
    stripped = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
    return {"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": resource_version},
            "items": stripped}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class RecordedKubeApi:
    """`with RecordedKubeApi(lists, events) as api:` ... `api.url` ... `api.requests`."""

    def __init__(self, lists: Mapping[str, dict[str, Any]], watch_events: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        self.lists = dict(lists)
        self.watch_events = dict(watch_events or {})
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- answers -----------------------------------------------------------------------------

    def answer(self, raw_path: str) -> tuple[int, Any]:
        """(status, body) for a GET; a list body for watches means "stream these events"."""
        self.requests.append(raw_path)
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        match = _PATH.match(parts.path)
        if not match:
            return 404, _status(404, "NotFound", f"no route for {parts.path}")
        collection = f"{match['prefix']}/{match['plural']}"
        recorded = self.lists.get(collection)
        if recorded is None:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({collection})")
        namespace, name = match["namespace"], match["name"]
        items = [i for i in recorded["items"] if namespace is None or i["metadata"].get("namespace") == namespace]
        if name is not None:
            found = [i for i in items if i["metadata"]["name"] == name]
            if not found:
                return 404, _status(404, "NotFound", f'{match["plural"]} "{name}" not found')
            obj = copy.deepcopy(found[0])
            obj["kind"] = recorded["kind"].removesuffix("List")
            obj["apiVersion"] = recorded["apiVersion"]
            return 200, obj
        if query.get("watch") in ("true", "1"):
            return 200, [e for e in self.watch_events.get(collection, [])
                         if namespace is None or e["object"]["metadata"].get("namespace") == namespace]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = copy.deepcopy(recorded)
        page["items"] = copy.deepcopy(items[start : start + limit])
        page["metadata"] = dict(page.get("metadata") or {})
        if start + limit < len(items):
            page["metadata"]["continue"] = str(start + limit)
        return 200, page

    # -- server ------------------------------------------------------------------------------

    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                status, body = api.answer(self.path)
                if isinstance(body, list):  # a watch: newline-delimited events, then close
                    payload = b"".join(json.dumps(e).encode() + b"\n" for e in body)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    self.close_connection = True
                    return
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="recorded-kube-api", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context points at this server."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "recorded", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "recorded-api-token"}}],
                    "contexts": [{"name": "recorded", "context": {"cluster": "recorded", "user": "tester"}}],
                    "current-context": "recorded",
                }
            ),
            encoding="utf-8",
        )
        return path

    def __enter__(self) -> RecordedKubeApi:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
