"""The eight workload kinds the webhook annotates: where they live in the API, and test manifests.

Manifests are plain dicts (what ``kubectl apply`` sends), built from one pod template
with known CPU and memory requests, so a test can say how many pods each one runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

ANNOTATION_PREFIX = "energetiscope.io/"
SKIP_LABEL = ANNOTATION_PREFIX + "skip"


@dataclass(frozen=True)
class Resource:
    """Where a namespaced kind is served: ``/api/v1`` or ``/apis/<group>/<version>``, and its plural."""

    kind: str
    api_version: str
    plural: str

    @property
    def _prefix(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def collection(self, namespace: str) -> str:
        return f"{self._prefix}/namespaces/{namespace}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


WORKLOADS: dict[str, Resource] = {
    resource.kind: resource
    for resource in (
        Resource("Pod", "v1", "pods"),
        Resource("ReplicationController", "v1", "replicationcontrollers"),
        Resource("Deployment", "apps/v1", "deployments"),
        Resource("StatefulSet", "apps/v1", "statefulsets"),
        Resource("DaemonSet", "apps/v1", "daemonsets"),
        Resource("ReplicaSet", "apps/v1", "replicasets"),
        Resource("Job", "batch/v1", "jobs"),
        Resource("CronJob", "batch/v1", "cronjobs"),
    )
}


def pod_spec(cpu: str = "500m", memory: str = "256Mi", restart_policy: str | None = None,
             containers: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": f"app-{index}",
                "image": "registry.example/app:1.0",
                "resources": {"requests": {"cpu": cpu, "memory": memory}},
            }
            for index in range(containers)
        ]
    }
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    return spec


def workload(kind: str, name: str, *, replicas: int | None = None, cpu: str = "500m", memory: str = "256Mi",
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A minimal valid ``kind`` named ``name`` whose pods request ``cpu`` and ``memory``.

    ``replicas`` is the pod count where the kind has one (replicas, or a Job's parallelism).
    """
    resource = WORKLOADS[kind]
    selector_labels = {"app": name}
    metadata: dict[str, Any] = {"name": name, "labels": {**selector_labels, **(labels or {})}}
    manifest: dict[str, Any] = {"apiVersion": resource.api_version, "kind": kind, "metadata": metadata}
    batch = kind in ("Job", "CronJob")
    template = {
        "metadata": {"labels": dict(selector_labels)},
        "spec": pod_spec(cpu, memory, restart_policy="Never" if batch else None),
    }
    if kind == "Pod":
        manifest["spec"] = pod_spec(cpu, memory)
    elif kind == "Job":
        manifest["spec"] = {"parallelism": replicas or 1, "template": template}
    elif kind == "CronJob":
        manifest["spec"] = {
            "schedule": "*/30 * * * *",
            "jobTemplate": {"spec": {"parallelism": replicas or 1, "template": template}},
        }
    elif kind == "ReplicationController":
        manifest["spec"] = {"replicas": replicas or 1, "selector": dict(selector_labels), "template": template}
    else:
        spec: dict[str, Any] = {"selector": {"matchLabels": dict(selector_labels)}, "template": template}
        if kind != "DaemonSet":
            spec["replicas"] = replicas or 1
        if kind == "StatefulSet":
            spec["serviceName"] = name
        manifest["spec"] = spec
    return manifest


def pod_template_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside any of the eight kinds (the object's own spec for a Pod)."""
    kind = manifest["kind"]
    if kind == "Pod":
        return manifest["spec"]
    if kind == "CronJob":
        return manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return manifest["spec"]["template"]["spec"]


def with_cpu(manifest: dict[str, Any], cpu: str) -> dict[str, Any]:
    changed = copy.deepcopy(manifest)
    for container in pod_template_spec(changed)["containers"]:
        container["resources"]["requests"]["cpu"] = cpu
    return changed


def energetiscope_annotations(obj: dict[str, Any]) -> dict[str, str]:
    notes = obj.get("metadata", {}).get("annotations") or {}
    return {key: value for key, value in notes.items() if key.startswith(ANNOTATION_PREFIX)}
