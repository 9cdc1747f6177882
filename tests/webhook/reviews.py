"""Build and read AdmissionReview documents for tests."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import jsonpatch

_GROUPS = {"Deployment": "apps", "StatefulSet": "apps", "DaemonSet": "apps", "ReplicaSet": "apps",
           "Job": "batch", "CronJob": "batch"}


def review(obj: dict[str, Any] | None, operation: str = "CREATE", old: dict[str, Any] | None = None,
           kind: str | None = None, **request: Any) -> dict[str, Any]:
    kind = kind or (obj or old or {}).get("kind", "Pod")
    api_version = (obj or old or {}).get("apiVersion", "v1")
    metadata = (obj or old or {}).get("metadata")
    namespace = metadata.get("namespace", "default") if isinstance(metadata, dict) else "default"
    group, _, version = api_version.rpartition("/")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": kind.lower() + "s"},
            "operation": operation,
            "namespace": namespace,
            "userInfo": {"username": "tester"},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
            **request,
        },
    }


def wrap_request(request: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]] | None:
    response = answer["response"]
    if "patch" not in response:
        return None
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def apply(obj: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    patch = patch_of(answer)
    return jsonpatch.apply_patch(copy.deepcopy(obj), patch) if patch else obj
