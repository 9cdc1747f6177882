"""`energetiscope train collect` against the real apiserver: the InferenceRequests of what is there.

Objects are created through the apiserver with the webhook wired in, so each carries the
spec-hash the webhook computed at admission. The collected request of each must hash to
the same value: the trainer and the webhook read a spec the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.webhook_fixtures import WiredWebhook, create_namespace, run_cli
from tests.e2e.workloads import WORKLOADS, workload
from trainer.collect import CONTROLLER_ANNOTATION, read_requests
from webhook.model.extract import to_inference_request
from webhook.model.schema import spec_hash

pytestmark = pytest.mark.e2e

SPEC_HASH = "energetiscope.io/spec-hash"
# A distinct CPU request per kind, so a request cannot be matched to the wrong object.
CPU_MILLICORES: dict[str, int] = {
    "Pod": 100, "ReplicationController": 200, "Deployment": 300, "StatefulSet": 400,
    "DaemonSet": 500, "ReplicaSet": 600, "Job": 700, "CronJob": 800,
}
MEMORY_MIB = 192
OWNED_POD = "owned-pod"


def owned_pod() -> dict[str, Any]:
    """A Pod as a ReplicaSet would make it: the webhook leaves it alone, collect marks its owner."""
    pod = workload("Pod", OWNED_POD, cpu="50m", memory=f"{MEMORY_MIB}Mi")
    pod["metadata"]["ownerReferences"] = [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "its-owner",
        "uid": "00000000-0000-0000-0000-000000000001", "controller": True,
    }]
    return pod


@pytest.fixture(scope="module")
def populated_namespace(wired_webhook: WiredWebhook) -> tuple[str, dict[tuple[str, str], dict[str, Any]]]:
    """A namespace with one object of each kind and an owned Pod; (name, stored objects by (kind, name))."""
    kube = wired_webhook.kube
    namespace = create_namespace(kube, "e2e-collect")
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    manifests = [workload(kind, f"{kind.lower()}-collected", replicas=2, cpu=f"{millicores}m", memory=f"{MEMORY_MIB}Mi")
                 for kind, millicores in CPU_MILLICORES.items()]
    for manifest in [*manifests, owned_pod()]:
        resource = WORKLOADS[manifest["kind"]]
        created = kube.create(resource.collection(namespace), manifest).expect_ok()
        stored[(manifest["kind"], manifest["metadata"]["name"])] = created
    return namespace, stored


def test_collect_writes_the_requests_the_webhook_predicted_from(
    wired_webhook: WiredWebhook, populated_namespace: tuple[str, dict[tuple[str, str], dict[str, Any]]],
    tmp_path: Path,
) -> None:
    namespace, stored = populated_namespace
    out = tmp_path / "requests.ndjson"
    result = run_cli("train", "collect", "--kubeconfig", str(wired_webhook.kubeconfig_path), "--out", str(out),
                     "--namespace", namespace, "--no-progress")
    assert "0 objects not readable" in result.stdout, result.stdout

    requests = {(r.workload_kind, r.workload_name): r for r in read_requests(out)}
    assert set(requests) == set(stored)
    for (kind, name), request in requests.items():
        obj = stored[(kind, name)]
        assert request.namespace == namespace
        (container,) = request.containers
        assert container.req_mem_mib == MEMORY_MIB
        if name == OWNED_POD:
            assert container.req_cpu_mcpu == 50
            assert request.annotations[CONTROLLER_ANNOTATION] == "ReplicaSet/its-owner"
            assert SPEC_HASH not in (obj["metadata"].get("annotations") or {})  # the webhook skipped it
            continue
        assert container.req_cpu_mcpu == CPU_MILLICORES[kind]
        assert CONTROLLER_ANNOTATION not in request.annotations
        # The webhook's extraction, run at admission on the same object, hashed the same spec.
        assert spec_hash(request) == obj["metadata"]["annotations"][SPEC_HASH], kind
        assert request == to_inference_request({"apiVersion": WORKLOADS[kind].api_version, "kind": kind, **obj})
        if kind in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"):
            assert request.replicas == 2
        if kind in ("Job", "CronJob"):
            assert request.parallelism == 2
