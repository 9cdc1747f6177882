"""AdmissionReview bodies for the load test: realistic Deployment reviews of several KB.

The envelope is `examples/admission-review-deployment.json`'s (userInfo, options, kinds). The
object is a Deployment drawn from `bench.workloads`, dressed the way objects arrive from a Helm
release applied with kubectl: chart and team labels, the last-applied-configuration annotation,
managedFields, environment variables, probes, volume mounts and security contexts. None of that
changes the prediction; all of it is parsed, and it is what makes a real review 5-10 KB.

Each variant has a different spec (so a different spec hash); the uid is a placeholder that the
load generators replace with a fresh one per request.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.workloads import WorkloadDraw, draw_workload

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_REVIEW = REPO_ROOT / "examples" / "admission-review-deployment.json"
UID_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
VARIANT_SEED = 20251103


def _env(service: str, team: str) -> list[dict[str, Any]]:
    plain = {
        "LOG_LEVEL": "info", "LOG_FORMAT": "json", "PORT": "8080", "METRICS_PORT": "9090",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability.svc:4317",
        "OTEL_SERVICE_NAME": service, "OTEL_RESOURCE_ATTRIBUTES": f"team={team},service.namespace={team}",
        "FEATURE_FLAGS_URL": "http://flags.platform.svc:8080", "HTTP_TIMEOUT_SECONDS": "15",
        "DB_POOL_SIZE": "20", "CACHE_TTL_SECONDS": "300", "REGION": "eu-west-1",
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    env.append({"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": f"{service}-credentials", "key": "password"}}})
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}})
    env.append({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}})
    return env


def _probe(path: str, initial_delay_seconds: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": 8080, "scheme": "HTTP"}, "initialDelaySeconds": initial_delay_seconds,
            "periodSeconds": 10, "timeoutSeconds": 2, "successThreshold": 1, "failureThreshold": 3}


def _managed_fields(container_names: list[str]) -> list[dict[str, Any]]:
    containers = {f'k:{{"name":"{name}"}}': {".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {},
                                              "f:livenessProbe": {}, "f:name": {}, "f:ports": {}, "f:readinessProbe": {},
                                              "f:resources": {"f:limits": {}, "f:requests": {}}, "f:securityContext": {},
                                              "f:volumeMounts": {}} for name in container_names}
    fields = {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {},
                                               "f:meta.helm.sh/release-name": {}, "f:meta.helm.sh/release-namespace": {}},
                             "f:labels": {".": {}, "f:app.kubernetes.io/component": {}, "f:app.kubernetes.io/instance": {},
                                          "f:app.kubernetes.io/managed-by": {}, "f:app.kubernetes.io/name": {},
                                          "f:app.kubernetes.io/version": {}, "f:helm.sh/chart": {}, "f:team": {}}},
              "f:spec": {"f:replicas": {}, "f:revisionHistoryLimit": {}, "f:selector": {}, "f:strategy": {},
                         "f:template": {"f:metadata": {"f:annotations": {}, "f:labels": {}},
                                        "f:spec": {"f:containers": containers, "f:securityContext": {},
                                                   "f:serviceAccountName": {}, "f:volumes": {}}}}}
    return [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "apps/v1",
             "time": "2025-11-01T09:30:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}]


def dress(manifest: dict[str, Any]) -> dict[str, Any]:
    """The Deployment as it reaches the webhook from a Helm chart applied with kubectl."""
    obj = copy.deepcopy(manifest)
    metadata = obj["metadata"]
    service, team = metadata["labels"]["app.kubernetes.io/name"], metadata["labels"]["team"]
    extra_labels = {"app.kubernetes.io/instance": f"{service}-prod", "app.kubernetes.io/version": "2.4.1",
                    "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": f"{service}-2.4.1"}
    metadata["labels"].update(extra_labels)
    template = obj["spec"]["template"]
    template["metadata"]["labels"].update(extra_labels)
    template["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                                           "checksum/config": "5f1c2e9a7d3b4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"}
    pod = template["spec"]
    pod.update(serviceAccountName=service, terminationGracePeriodSeconds=30, dnsPolicy="ClusterFirst",
               securityContext={"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
               tolerations=[{"key": "dedicated", "operator": "Equal", "value": team, "effect": "NoSchedule"}],
               affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                   {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": service}}}}]}})
    mounts = [{"name": v["name"], "mountPath": f"/etc/{v['name']}", "readOnly": True} for v in pod.get("volumes", [])]
    for container in pod["containers"]:
        container.update(imagePullPolicy="IfNotPresent", env=_env(service, team),
                         ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                         livenessProbe=_probe("/healthz", 10), readinessProbe=_probe("/readyz", 5),
                         securityContext={"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                          "capabilities": {"drop": ["ALL"]}},
                         volumeMounts=mounts)
    obj["spec"].update(revisionHistoryLimit=10,
                       strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}})
    applied = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    metadata["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": applied + "\n",
                               "meta.helm.sh/release-name": f"{service}-prod", "meta.helm.sh/release-namespace": team}
    metadata.update(generation=1, creationTimestamp=None,
                    managedFields=_managed_fields([c["name"] for c in pod["containers"]]))
    return obj


def review(obj: dict[str, Any], uid: str = UID_PLACEHOLDER) -> dict[str, Any]:
    """The example's envelope around `obj`."""
    envelope = json.loads(EXAMPLE_REVIEW.read_text())
    request = envelope["request"]
    request.update(uid=uid, name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"], object=obj)
    return envelope


def deployment_variants(count: int, seed: int = VARIANT_SEED) -> list[WorkloadDraw]:
    """`count` Deployments with different specs, from the same catalogue as the training set."""
    rng = np.random.default_rng(seed)
    draws: list[WorkloadDraw] = []
    index = 0
    while len(draws) < count:
        draw = draw_workload(rng, 900_000 + index)
        index += 1
        if draw.request.workload_kind == "Deployment":
            draws.append(draw)
    return draws


def review_bodies(count: int, seed: int = VARIANT_SEED) -> list[bytes]:
    """Compact JSON bodies, one per variant, each holding UID_PLACEHOLDER once."""
    bodies = []
    for draw in deployment_variants(count, seed):
        body = json.dumps(review(dress(draw.manifest)), separators=(",", ":")).encode()
        assert body.count(UID_PLACEHOLDER.encode()) == 1
        bodies.append(body)
    return bodies
