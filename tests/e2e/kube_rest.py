"""Plain REST calls to the apiserver, for tests that need what the typed client hides.

The typed ``kubernetes`` client turns every answer into a model and drops most of the
response: the ``Warning`` headers that admission webhooks send (what kubectl prints as
"Warning: ..."), and the raw JSON of kinds the tests treat generically. These helpers
speak JSON over the same authenticated ``ApiClient`` and return status, body and
warnings as they came.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import kubernetes.client

# RFC 7234 warn-code 299, warn-agent "-", then the quoted text: what the apiserver sends
# for every admission warning (k8s.io/apiserver/pkg/warning).
_WARNING_HEADER = re.compile(r'^\s*299\s+-\s+"(?P<text>(?:[^"\\]|\\.)*)"')

JSON_MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Reply:
    """One apiserver answer: HTTP status, decoded JSON body, admission warnings in order."""

    status: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The message of a Status answer (a denial, a conflict), '' otherwise."""
        return str(self.body.get("message", "")) if self.body.get("kind") == "Status" else ""

    def expect_ok(self) -> dict[str, Any]:
        assert self.ok, f"HTTP {self.status}: {self.message or self.body}"
        return self.body


def warning_texts(header_values: list[str]) -> list[str]:
    """The texts of ``Warning: 299 - "..."`` header values (escapes undone)."""
    texts = []
    for value in header_values:
        match = _WARNING_HEADER.match(value)
        if match is not None:
            texts.append(re.sub(r"\\(.)", r"\1", match.group("text")))
    return texts


class KubeRest:
    """JSON requests over an authenticated ApiClient, never raising on an HTTP error status."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Reply:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.api_client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            # A dict: the REST layer serialises it for every JSON content type (merge patch
            # included); this module never sends a JSON patch, which it would rewrite.
            body=dict(body) if body is not None else None,
        )
        response = self.api_client.call_api(*serialized, _request_timeout=60)
        raw = response.read()
        decoded = json.loads(raw) if raw else {}
        return Reply(
            status=response.status,
            body=decoded if isinstance(decoded, dict) else {"items": decoded},
            warnings=warning_texts(response.headers.getlist("Warning")),
        )

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def create(self, collection_path: str, body: Mapping[str, Any], dry_run: bool = False) -> Reply:
        return self.request("POST", collection_path, body, {"dryRun": "All"} if dry_run else None)

    def replace(self, object_path: str, body: Mapping[str, Any]) -> Reply:
        return self.request("PUT", object_path, body)

    def merge_patch(self, object_path: str, patch: Mapping[str, Any]) -> Reply:
        return self.request("PATCH", object_path, patch, content_type=JSON_MERGE_PATCH)

    def delete(self, object_path: str) -> Reply:
        return self.request("DELETE", object_path)


@dataclass(frozen=True)
class ServedResource:
    """A kind the apiserver serves: its REST path prefix, plural and scope."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def collection(self, namespace: str | None) -> str:
        prefix = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"


def served_resources(kube: KubeRest) -> dict[tuple[str, str], ServedResource]:
    """Discovery: every (apiVersion, kind) the apiserver serves, subresources left out."""
    group_versions = ["v1"]
    for group in kube.get("/apis").expect_ok()["groups"]:
        group_versions += [version["groupVersion"] for version in group["versions"]]
    served: dict[tuple[str, str], ServedResource] = {}
    for group_version in group_versions:
        path = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        for resource in kube.get(path).expect_ok()["resources"]:
            if "/" in resource["name"]:
                continue
            served[(group_version, resource["kind"])] = ServedResource(
                group_version, resource["kind"], resource["name"], resource["namespaced"]
            )
    return served
