"""The webhook under real controllers: Deployments, rollouts, CronJobs and scaling as a cluster runs them.

A control plane of its own with kube-controller-manager, kube-scheduler and kwok (fake Nodes
whose Pods go Running and, for a Job's, Succeeded; see tests/e2e/controlplane.py), and
``energetiscope serve`` wired into it as in the other end-to-end tests. What the controllers
create (ReplicaSets, Pods, Jobs) goes through the webhooks like anything a user creates, so
these tests see what a cluster sees:

- a Deployment is annotated and held against the budget; the ReplicaSets its controller
  creates are annotated with their own prediction (their replicas, the same pod power) but
  kept out of the namespace total, and their Pods are not annotated (README, the annotation
  contract: a controller's Pods are stood for by their owner);
- a CronJob's controller creates a Job each minute, which kwok completes;
- scaling through the scale subresource, as an autoscaler does, is held against an enforce
  budget;
- ``train collect`` marks each collected object with its controller, so the labels' Pods lead
  to their Deployment.

Where an outcome depends on the webhook's inventory having seen a change, the test first waits
for a sign that it has (a dry run's outcome, or the namespace total in /metrics including a
later object of the same kind: each kind's watch delivers events in order).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import kubernetes.client
import pytest

from tests.e2e.conftest import LOG_DIR_VARIABLE
from tests.e2e.controlplane import Binaries, ControllerBinaries, ControlPlane
from tests.e2e.kube_rest import KubeRest, Reply
from tests.e2e.test_budgets_e2e import DENIAL_PREFIX, POD_CPU, POD_MEMORY, POD_WATTS, denied_by_budget, until
from tests.e2e.test_inventory_restarts_e2e import namespace_watts
from tests.e2e.webhook_fixtures import (
    WiredWebhook, create_namespace, eventually, run_cli, start_wired_webhook, teardown_wired_webhook,
)
from tests.e2e.workloads import WORKLOADS, energetiscope_annotations, workload
from trainer.api_owners import KubernetesOwnerFallback
from trainer.collect import CONTROLLER_ANNOTATION, read_requests
from trainer.dataset import SpecIndex, resolve
from trainer.kube import WorkloadReader
from trainer.owners import WorkloadRef
from webhook.model.schema import spec_hash

pytestmark = pytest.mark.e2e

P = "energetiscope.io/"
MODE = P + "budget-mode"
QUOTA = P + "quota-watts"
QUOTA_PER_DAY = P + "quota-joules-per-day"
DEPLOYMENTS, REPLICA_SETS, PODS = WORKLOADS["Deployment"], WORKLOADS["ReplicaSet"], WORKLOADS["Pod"]
JOBS, CRON_JOBS = WORKLOADS["Job"], WORKLOADS["CronJob"]
# A rollout or a scale: the controllers and kwok take a second or two here; a loaded CI
# machine gets ample room.
CONTROLLERS_SETTLE_SECONDS = 60.0
# The CronJob controller starts a "* * * * *" Job at the next minute boundary.
CRON_JOB_SECONDS = 90.0
# The small objects that mark how far the inventory's watch of a kind has got: 100m, 128Mi.
MARKER_CPU = "100m"
MARKER_WATTS = 0.1 * (0.74 + 0.1 * (3.5 - 0.74)) + 128 * 2**20 / 1e9 * 0.392


@dataclass
class Cluster:
    plane: ControlPlane
    webhook: WiredWebhook
    kube: KubeRest


@pytest.fixture(scope="module")
def cluster(control_plane_binaries: Binaries, controller_binaries: ControllerBinaries,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane with controllers (not the session's: they would reconcile every other
    test's objects) and the webhook wired into it."""
    log_dir = os.environ.get(LOG_DIR_VARIABLE)
    with ControlPlane(binaries=control_plane_binaries, controllers=controller_binaries,
                      keep_logs_in=Path(log_dir) if log_dir else None) as plane, plane.api_client() as api:
        webhook = start_wired_webhook(plane, api, tmp_path_factory.mktemp("controllers-webhook"))
        try:
            yield Cluster(plane, webhook, webhook.kube)
        finally:
            teardown_wired_webhook(webhook)


# -- reading what the controllers made ------------------------------------------------------


def items(kube: KubeRest, collection: str) -> list[dict[str, Any]]:
    return list(kube.get(collection).expect_ok()["items"])


def controller_ref(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((ref for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("controller")), None)


def owned_by(objects: list[dict[str, Any]], owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects whose controller is ``owner`` (by uid)."""
    uid = owner["metadata"]["uid"]
    return [obj for obj in objects if (controller_ref(obj) or {}).get("uid") == uid]


def running_pods(kube: KubeRest, namespace: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The owner's Pods that are Running and not being deleted."""
    return [pod for pod in owned_by(items(kube, PODS.collection(namespace)), owner)
            if pod["status"].get("phase") == "Running" and "deletionTimestamp" not in pod["metadata"]]


def settle(attempt: Callable[[], Any], what: str, timeout: float = CONTROLLERS_SETTLE_SECONDS) -> Any:
    return eventually(attempt, what, timeout=timeout, interval=0.25)


def rolled_out(kube: KubeRest, namespace: str, name: str, image: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Wait until Deployment ``name`` runs all its replicas of ``image`` and nothing else;
    returns (the Deployment, its current ReplicaSet, that ReplicaSet's running Pods)."""
    def done() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]] | None:
        deployment = kube.get(DEPLOYMENTS.item(namespace, name)).expect_ok()
        replicas, status = deployment["spec"]["replicas"], deployment.get("status") or {}
        if (status.get("observedGeneration") != deployment["metadata"]["generation"]
                or status.get("updatedReplicas") != replicas or status.get("readyReplicas") != replicas
                or status.get("replicas") != replicas):
            return None
        current = [rs for rs in owned_by(items(kube, REPLICA_SETS.collection(namespace)), deployment)
                   if rs["spec"]["replicas"] > 0]
        if len(current) != 1 or current[0]["spec"]["template"]["spec"]["containers"][0]["image"] != image:
            return None
        all_pods = [pod for pod in items(kube, PODS.collection(namespace))
                    if pod["metadata"]["labels"].get("app") == name]
        pods = running_pods(kube, namespace, current[0])
        # The old ReplicaSet's Pods are gone (kwok removes a Pod marked for deletion).
        return (deployment, current[0], pods) if len(pods) == replicas == len(all_pods) else None

    return settle(done, f"Deployment {namespace}/{name} rolled out with {image}")


def with_image(manifest: dict[str, Any], image: str) -> dict[str, Any]:
    for container in manifest["spec"]["template"]["spec"]["containers"]:
        container["image"] = image
    return manifest


def pod_watts(obj: dict[str, Any]) -> float:
    return float(obj["metadata"]["annotations"][P + "pod-power-watts"])


def total_counts(webhook: WiredWebhook, namespace: str, expected: float) -> float:
    """Wait until the namespace total in /metrics reaches ``expected`` (the markers just
    created are counted, so every earlier event of their kinds is too), and return it."""
    return float(settle(lambda: (watts if (watts := namespace_watts(webhook, namespace)) is not None
                                 and watts >= expected - 0.002 else None),
                        f"the inventory counting namespace {namespace} up to {expected:.3f} W"))


def add_markers(kube: KubeRest, namespace: str, suffix: str) -> float:
    """A bare ReplicaSet and a bare Pod of one small pod each; returns the W they add."""
    rs = kube.create(REPLICA_SETS.collection(namespace),
                     workload("ReplicaSet", f"marker-rs-{suffix}", replicas=1, cpu=MARKER_CPU, memory=POD_MEMORY))
    pod = kube.create(PODS.collection(namespace), workload("Pod", f"marker-pod-{suffix}", cpu=MARKER_CPU,
                                                           memory=POD_MEMORY))
    return pod_watts(rs.expect_ok()) + pod_watts(pod.expect_ok())


# -- (a) a Deployment, its ReplicaSets and Pods, and a rollout --------------------------------


def test_a_deployments_replicasets_and_pods_through_a_rollout(cluster: Cluster) -> None:
    kube, webhook = cluster.kube, cluster.webhook
    # Enforced, and room for the Deployment once, not twice: were a ReplicaSet held against
    # the quota beside its Deployment (6.3 + 6.3 W), the controller could not create it.
    namespace = create_namespace(kube, "e2e-rollout", annotations={MODE: "enforce", QUOTA: "10"})
    created = kube.create(DEPLOYMENTS.collection(namespace),
                          workload("Deployment", "web", replicas=3, cpu=POD_CPU, memory=POD_MEMORY)).expect_ok()
    notes = energetiscope_annotations(created)
    assert notes[P + "workload-power-watts"] == f"{3 * POD_WATTS:.3f}"
    assert notes[P + "pod-power-watts"] == f"{POD_WATTS:.3f}"

    deployment, first_rs, pods = rolled_out(kube, namespace, "web", "registry.example/app:1.0")
    assert energetiscope_annotations(deployment) == notes  # the controller's status updates keep them
    _assert_owned_chain(cluster, deployment, first_rs, pods)

    # Out of the quota: with the Deployment and the markers alone, not the ReplicaSet (nor its Pods).
    markers = add_markers(kube, namespace, "1")
    expected = 3 * pod_watts(deployment) + markers
    assert total_counts(webhook, namespace, expected) == pytest.approx(expected, abs=0.002)

    # A rollout: a new template, a new ReplicaSet, the old one scaled to 0 and its Pods removed.
    changed = with_image(kube.get(DEPLOYMENTS.item(namespace, "web")).expect_ok(), "registry.example/app:2.0")
    updated = kube.replace(DEPLOYMENTS.item(namespace, "web"), changed)
    assert updated.ok and updated.warnings == [], updated.message
    deployment, second_rs, pods = rolled_out(kube, namespace, "web", "registry.example/app:2.0")
    assert second_rs["metadata"]["uid"] != first_rs["metadata"]["uid"]
    _assert_owned_chain(cluster, deployment, second_rs, pods)
    old = kube.get(REPLICA_SETS.item(namespace, first_rs["metadata"]["name"])).expect_ok()
    assert old["spec"]["replicas"] == 0
    # The controller's UPDATEs of the old ReplicaSet were predicted again: it runs nothing now.
    assert energetiscope_annotations(old)[P + "workload-power-watts"] == "0.000"

    markers += add_markers(kube, namespace, "2")
    expected = 3 * pod_watts(deployment) + markers
    assert total_counts(webhook, namespace, expected) == pytest.approx(expected, abs=0.002)


def _assert_owned_chain(cluster: Cluster, deployment: dict[str, Any], rs: dict[str, Any],
                        pods: list[dict[str, Any]]) -> None:
    ref = controller_ref(rs)
    assert ref is not None and (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The ReplicaSet is predicted on its own (its replicas, the Deployment's pod power)...
    rs_notes = energetiscope_annotations(rs)
    assert rs_notes[P + "pod-power-watts"] == energetiscope_annotations(deployment)[P + "pod-power-watts"]
    assert rs_notes[P + "workload-power-watts"] == f"{rs['spec']['replicas'] * POD_WATTS:.3f}"
    # ...its Pods are not annotated at all, and run on the fake nodes.
    assert len(pods) == deployment["spec"]["replicas"]
    for pod in pods:
        assert energetiscope_annotations(pod) == {}, pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] in cluster.plane.fake_node_names
        assert pod["spec"]["containers"][0]["image"] == rs["spec"]["template"]["spec"]["containers"][0]["image"]


# -- (b) a CronJob whose controller creates Jobs that kwok completes ---------------------------


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_cronjobs_job_is_created_kept_out_of_the_day_quota_and_completed(cluster: Cluster) -> None:
    kube, webhook = cluster.kube, cluster.webhook
    namespace = create_namespace(kube, "e2e-cron")
    cronjob = workload("CronJob", "minutely", cpu=POD_CPU, memory=POD_MEMORY)
    cronjob["spec"]["schedule"] = "* * * * *"
    cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] = 60
    notes = energetiscope_annotations(kube.create(CRON_JOBS.collection(namespace), cronjob).expect_ok())
    assert notes[P + "runs-per-day"] == "1440.000"
    per_run, per_day = float(notes[P + "energy-joules-per-run"]), float(notes[P + "energy-joules-per-day"])
    assert per_day == pytest.approx(1440 * per_run, abs=1)

    # A day quota with room for the CronJob and half a run more: were the Job it creates held
    # against it beside the CronJob, the controller's create would be denied.
    quota = per_day + per_run / 2
    kube.merge_patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"annotations": {
        MODE: "enforce", QUOTA_PER_DAY: f"{quota:.0f}"}}}).expect_ok()
    bare = workload("Job", "bare-run", cpu=POD_CPU, memory=POD_MEMORY)
    bare["spec"]["activeDeadlineSeconds"] = 60
    until(lambda: kube.create(JOBS.collection(namespace), bare, dry_run=True), denied_by_budget,
          "the inventory counting the CronJob against the namespace's quota-joules-per-day")
    enforced_since = time.time()

    def completed_job() -> dict[str, Any] | None:
        cron = kube.get(CRON_JOBS.item(namespace, "minutely")).expect_ok()
        for job in owned_by(items(kube, JOBS.collection(namespace)), cron):
            conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions") or []}
            # Created once the quota was enforced (timestamps are whole seconds).
            if (_timestamp(job["metadata"]["creationTimestamp"]) >= int(enforced_since) + 1
                    and job.get("status", {}).get("succeeded") == 1 and conditions.get("Complete") == "True"):
                return job
        return None

    job = settle(completed_job, "a Job of the CronJob created and completed", timeout=CRON_JOB_SECONDS)
    assert energetiscope_annotations(job)[P + "pod-power-watts"] == notes[P + "pod-power-watts"]
    (pod,) = owned_by(items(kube, PODS.collection(namespace)), job)
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert energetiscope_annotations(pod) == {}
    # The CronJob controller saw it succeed.
    settle(lambda: kube.get(CRON_JOBS.item(namespace, "minutely")).expect_ok()["status"].get("lastSuccessfulTime"),
           "the CronJob's lastSuccessfulTime")
    # No more runs once the test is done.
    kube.delete(CRON_JOBS.item(namespace, "minutely")).expect_ok()


# -- (c) scaling through the scale subresource, as an autoscaler does -------------------------


def scale_to(kube: KubeRest, namespace: str, name: str, replicas: int, dry_run: bool = False) -> Reply:
    """What the HorizontalPodAutoscaler does: read the Scale, set its replicas, PUT it back."""
    path = DEPLOYMENTS.item(namespace, name) + "/scale"
    scale = kube.get(path).expect_ok()
    scale["spec"]["replicas"] = replicas
    return kube.request("PUT", path, scale, {"dryRun": "All"} if dry_run else None)


def test_scaling_through_the_scale_subresource_is_held_against_an_enforce_quota(cluster: Cluster) -> None:
    kube = cluster.kube
    namespace = create_namespace(kube, "e2e-scale", annotations={MODE: "enforce", QUOTA: "10"})
    kube.create(DEPLOYMENTS.collection(namespace),
                workload("Deployment", "scaled", replicas=2, cpu=POD_CPU, memory=POD_MEMORY)).expect_ok()
    rolled_out(kube, namespace, "scaled", "registry.example/app:1.0")
    # 5 pods (10.4 W) can only be denied once the inventory holds the Deployment's pod power.
    until(lambda: scale_to(kube, namespace, "scaled", 5, dry_run=True), denied_by_budget,
          "the inventory holding the Deployment")

    # Within the budget: 4 pods, 8.3 W. The controllers then run 4 Pods.
    grown = scale_to(kube, namespace, "scaled", 4)
    assert grown.status == 200 and grown.warnings == [], grown.message
    deployment, rs, pods = rolled_out(kube, namespace, "scaled", "registry.example/app:1.0")
    assert deployment["spec"]["replicas"] == rs["spec"]["replicas"] == len(pods) == 4

    # Over it: 5 pods, 10.4 W, against quota-watts 10 W.
    denial = scale_to(kube, namespace, "scaled", 5)
    assert denial.status == 403 and denial.body["reason"] == "Forbidden"
    assert denial.message.startswith(
        f"{DENIAL_PREFIX}energetiscope: Deployment {namespace}/scaled is predicted at {5 * POD_WATTS:.1f} W "
        f"(5 pods x {POD_WATTS:.2f} W"), denial.message
    assert (f"the namespace total with it would be {5 * POD_WATTS:.1f} W, above quota-watts 10 W set by "
            f"namespace {namespace}") in denial.message
    # Nothing was scaled: the Deployment and its ReplicaSet still ask for 4.
    deployment = kube.get(DEPLOYMENTS.item(namespace, "scaled")).expect_ok()
    assert deployment["spec"]["replicas"] == 4
    assert kube.get(REPLICA_SETS.item(namespace, rs["metadata"]["name"])).expect_ok()["spec"]["replicas"] == 4

    # Scaling down is always admitted, and the controllers remove the Pods.
    shrunk = scale_to(kube, namespace, "scaled", 1)
    assert shrunk.status == 200, shrunk.message
    _, _, pods = rolled_out(kube, namespace, "scaled", "registry.example/app:1.0")
    assert len(pods) == 1


# -- (d) train collect against the controllers' owner chains ----------------------------------


def test_collect_follows_the_controllers_owner_chains(cluster: Cluster, tmp_path: Path) -> None:
    kube, plane = cluster.kube, cluster.plane
    namespace = create_namespace(kube, "e2e-collect-owners")
    kube.create(DEPLOYMENTS.collection(namespace),
                workload("Deployment", "api", replicas=2, cpu="300m", memory="192Mi")).expect_ok()
    deployment, rs, pods = rolled_out(kube, namespace, "api", "registry.example/app:1.0")
    job = kube.create(JOBS.collection(namespace), workload("Job", "batch", cpu="700m", memory="192Mi")).expect_ok()
    (job_pod,) = settle(lambda: [pod for pod in owned_by(items(kube, PODS.collection(namespace)), job)
                                 if pod["status"].get("phase") == "Succeeded"] or None,
                        "the Job's Pod succeeded")

    out = tmp_path / "requests.ndjson"
    result = run_cli("train", "collect", "--kubeconfig", str(plane.kubeconfig_path), "--out", str(out),
                     "--namespace", namespace, "--no-progress")
    assert "0 objects not readable" in result.stdout, result.stdout
    requests = {(r.workload_kind, r.workload_name): r for r in read_requests(out)}
    rs_name, job_pod_name = rs["metadata"]["name"], job_pod["metadata"]["name"]
    pod_names = [pod["metadata"]["name"] for pod in pods]
    assert set(requests) == {("Deployment", "api"), ("ReplicaSet", rs_name), ("Job", "batch"),
                             ("Pod", job_pod_name), *(("Pod", name) for name in pod_names)}

    # Each object is marked with its controller, as the apiserver holds it.
    assert CONTROLLER_ANNOTATION not in requests[("Deployment", "api")].annotations
    assert CONTROLLER_ANNOTATION not in requests[("Job", "batch")].annotations
    assert requests[("ReplicaSet", rs_name)].annotations[CONTROLLER_ANNOTATION] == "Deployment/api"
    for name in pod_names:
        assert requests[("Pod", name)].annotations[CONTROLLER_ANNOTATION] == f"ReplicaSet/{rs_name}"
    assert requests[("Pod", job_pod_name)].annotations[CONTROLLER_ANNOTATION] == "Job/batch"
    # The webhook hashed the same specs at admission (the controller's ReplicaSet included).
    for kind, obj in (("Deployment", deployment), ("ReplicaSet", rs), ("Job", job)):
        assert spec_hash(requests[(kind, obj["metadata"]["name"])]) == obj["metadata"]["annotations"][P + "spec-hash"]

    # The dataset step joins a Pod's measurements through ReplicaSet to the Deployment's spec.
    index = SpecIndex(requests.values())
    for name in pod_names:
        joined = resolve(index, (namespace, "Pod", name), name, None, pod_spec_fallback=False)
        assert (joined.workload, joined.rule) == ((namespace, "Deployment", "api"), "controller")
        assert joined.spec_hash == deployment["metadata"]["annotations"][P + "spec-hash"]
    joined = resolve(index, (namespace, "Pod", job_pod_name), job_pod_name, None, pod_spec_fallback=False)
    assert (joined.workload, joined.rule) == ((namespace, "Job", "batch"), "controller")

    # And the labels step's API fallback walks the same chains from a Pod's name.
    with plane.api_client() as api:
        owners = KubernetesOwnerFallback(WorkloadReader(api))
        for name in pod_names:
            assert owners(namespace, name) == WorkloadRef(kind="Deployment", name="api")
        assert owners(namespace, job_pod_name) == WorkloadRef(kind="Job", name="batch")
