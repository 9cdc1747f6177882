"""Reading workload objects from the Kubernetes API, as the plain camelCase dicts the API serves.

The trainer asks the `kubernetes` client for raw JSON (`_preload_content=False`) rather than its
typed models: an object then reaches `webhook.model.extract.to_inference_request` exactly as an
AdmissionReview brings it to the webhook, including fields this client version does not model
(a typed round trip through `sanitize_for_serialization` would drop them, and one object the
typed model rejects would fail the whole list). Typed objects are still accepted where a caller
has them (`as_manifest`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from webhook import kube

# One table of where the API serves each workload kind, shared with the webhook's inventory.
from webhook.kube import COLLECTED_KINDS, ENDPOINTS_BY_KIND, WORKLOAD_ENDPOINTS, WorkloadEndpoint  # noqa: F401

DEFAULT_PAGE_SIZE = 500
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60.0




@dataclass(frozen=True)
class KubeSettings:
    """How to reach the API: a kubeconfig (default: $KUBECONFIG or ~/.kube/config), or the
    pod's service account when `in_cluster` (or when no kubeconfig can be loaded)."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS


def api_client(settings: KubeSettings) -> client.ApiClient:
    """The client for these settings, from the one factory (``webhook.kube.api_client``)."""
    return kube.api_client(
        settings.kubeconfig, context=settings.context, in_cluster=settings.in_cluster, in_cluster_fallback=True
    )


def as_manifest(obj: Any, kind: str | None = None, api_version: str | None = None) -> dict[str, Any]:
    """A camelCase dict of an API object (typed client model or dict), with kind and apiVersion
    set, since list items arrive without them."""
    if isinstance(obj, Mapping):
        manifest = dict(obj)
    else:
        manifest = client.ApiClient().sanitize_for_serialization(obj)
    if kind is not None:
        manifest.setdefault("kind", kind)
    if api_version is not None:
        manifest.setdefault("apiVersion", api_version)
    return manifest


def _raw_json(response: Any) -> dict[str, Any]:
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


@dataclass(frozen=True)
class ListedKind:
    """Every object of one kind, and the resourceVersion to watch from."""

    items: list[dict[str, Any]]
    resource_version: str


class WorkloadReader:
    """Lists, watches and reads workload objects as dicts."""

    def __init__(self, api: client.ApiClient, request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS) -> None:
        self.api = api
        self.request_timeout_seconds = request_timeout_seconds

    def _method(self, endpoint: WorkloadEndpoint, name: str) -> Any:
        return getattr(endpoint.api_class(self.api), name)

    def list_kind(self, kind: str, namespace: str | None = None, page_size: int = DEFAULT_PAGE_SIZE) -> ListedKind:
        """All objects of `kind` (in `namespace`, or everywhere), page by page."""
        endpoint = ENDPOINTS_BY_KIND[kind]
        if namespace is None:
            method, args = self._method(endpoint, endpoint.list_all), ()
        else:
            method, args = self._method(endpoint, endpoint.list_namespaced), (namespace,)
        items: list[dict[str, Any]] = []
        token: str | None = None
        resource_version = ""
        while True:
            extra = {"_continue": token} if token else {}
            page = _raw_json(
                method(*args, limit=page_size, _preload_content=False,
                       _request_timeout=self.request_timeout_seconds, **extra)
            )
            metadata = page.get("metadata") or {}
            resource_version = str(metadata.get("resourceVersion") or resource_version)
            items.extend(as_manifest(item, endpoint.kind, endpoint.api_version) for item in page.get("items") or [])
            token = metadata.get("continue") or None
            if not token:
                return ListedKind(items=items, resource_version=resource_version)

    def watch_kind(
        self, kind: str, resource_version: str, duration_seconds: float, namespace: str | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for changes after `resource_version`, for about `duration_seconds`
        (the server closes the watch then). One request, no silent resume: an ERROR event (such
        as 410 Gone for a too old resourceVersion) raises."""
        from kubernetes.watch.watch import iter_resp_lines

        endpoint = ENDPOINTS_BY_KIND[kind]
        name = endpoint.list_all if namespace is None else endpoint.list_namespaced
        args = () if namespace is None else (namespace,)
        response = self._method(endpoint, name)(
            *args,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=max(1, int(round(duration_seconds))),
            _preload_content=False,
            # The client-side read timeout backs up the server-side one by a margin.
            _request_timeout=duration_seconds + self.request_timeout_seconds,
        )
        try:
            for line in iter_resp_lines(response):
                if not line.strip():
                    continue
                event = json.loads(line)
                event_type, obj = event.get("type"), event.get("object")
                if event_type == "ERROR":
                    status = obj if isinstance(obj, Mapping) else {}
                    raise RuntimeError(
                        f"watch of {kind} failed: {status.get('code')} {status.get('reason')}: {status.get('message')}"
                    )
                if isinstance(obj, Mapping) and event_type in ("ADDED", "MODIFIED", "DELETED"):
                    yield str(event_type), as_manifest(obj, endpoint.kind, endpoint.api_version)
        finally:
            response.close()
            response.release_conn()

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when the API says it does not exist (404)."""
        endpoint = ENDPOINTS_BY_KIND[kind]
        method = self._method(endpoint, endpoint.read_namespaced)
        try:
            response = method(name, namespace, _preload_content=False, _request_timeout=self.request_timeout_seconds)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return as_manifest(_raw_json(response), endpoint.kind, endpoint.api_version)
