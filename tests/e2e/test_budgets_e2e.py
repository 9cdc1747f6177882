"""Energy budgets through a real kube-apiserver: denials, warnings, quotas and scaling as users see them.

The validating webhook reads namespace budgets and the namespace's spend from its
inventory (a list+watch of the apiserver, inside the webhook process), which lags the API
by a watch event. Where an outcome depends on the inventory having seen a change, the
test first repeats a dry-run of the same request until that outcome appears, then makes
the real request; the dry-run's outcome is chosen so that a stale inventory could not
produce it (see each step).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube_rest import KubeRest, Reply
from tests.e2e.webhook_fixtures import BUDGET_WEBHOOK, WiredWebhook, create_namespace, eventually
from tests.e2e.workloads import WORKLOADS, energetiscope_annotations, workload
from webhook.admission.validate import AUDIT_KEY

pytestmark = pytest.mark.e2e

MODE = "energetiscope.io/budget-mode"
MAX_WORKLOAD = "energetiscope.io/max-workload-watts"
QUOTA = "energetiscope.io/quota-watts"
DEPLOYMENTS = WORKLOADS["Deployment"]
# One pod: 2 CPU and 128Mi, so 2.085 W by the embedded prior (0.74 + 0.1 x 2.76 W per vCPU,
# 0.392 W per GB). The budgets below are set in these units.
POD_CPU, POD_MEMORY = "2", "128Mi"
POD_WATTS = 2 * (0.74 + 0.1 * (3.5 - 0.74)) + 128 * 2**20 / 1e9 * 0.392
# What the apiserver puts before a validating webhook's denial message (kubectl prints it).
DENIAL_PREFIX = f'admission webhook "{BUDGET_WEBHOOK}" denied the request: '


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return workload("Deployment", name, replicas=replicas, cpu=POD_CPU, memory=POD_MEMORY)


def create(kube: KubeRest, namespace: str, manifest: dict[str, Any], dry_run: bool = False) -> Reply:
    return kube.create(DEPLOYMENTS.collection(namespace), manifest, dry_run=dry_run)


def denied_by_budget(reply: Reply) -> bool:
    return reply.status == 403 and reply.message.startswith(DENIAL_PREFIX)


def until(check: Callable[[], Reply], condition: Callable[[Reply], bool], what: str) -> Reply:
    """Repeat a dry-run ``check`` until ``condition`` holds: the inventory has caught up."""
    return eventually(lambda: (reply if condition(reply := check()) else None), what)


def test_enforce_denies_a_workload_over_max_workload_watts(wired_webhook: WiredWebhook) -> None:
    kube = wired_webhook.kube
    namespace = create_namespace(kube, "e2e-enforce", annotations={MODE: "enforce", MAX_WORKLOAD: "5"})
    too_big = deployment("too-big", replicas=3)  # 6.3 W
    # Denial needs the namespace's annotations in the inventory: nothing else denies.
    until(lambda: create(kube, namespace, too_big, dry_run=True), denied_by_budget,
          "the inventory seeing the namespace's budget")

    denial = create(kube, namespace, too_big)
    assert denial.status == 403
    assert denial.body["reason"] == "Forbidden"
    assert denial.message.startswith(
        f"{DENIAL_PREFIX}energetiscope: Deployment {namespace}/too-big is predicted at "
        f"{3 * POD_WATTS:.1f} W (3 pods x {POD_WATTS:.2f} W, pod p10-p90 "
    ), denial.message
    assert f"above max-workload-watts 5 W set by namespace {namespace}" in denial.message
    assert f"To change it: kubectl annotate ns {namespace} {MAX_WORKLOAD}=<W> --overwrite" in denial.message
    assert kube.get(DEPLOYMENTS.item(namespace, "too-big")).status == 404

    fits = create(kube, namespace, deployment("fits", replicas=2))  # 4.2 W
    assert fits.ok and fits.warnings == []


def test_warn_admits_with_the_webhooks_warnings_in_the_response_headers(wired_webhook: WiredWebhook) -> None:
    kube = wired_webhook.kube
    namespace = create_namespace(kube, "e2e-warn", annotations={MODE: "warn", MAX_WORKLOAD: "5"})
    over = deployment("over", replicas=3)
    until(lambda: create(kube, namespace, over, dry_run=True), lambda reply: bool(reply.warnings),
          "the inventory seeing the namespace's budget")

    admitted = create(kube, namespace, over)
    assert admitted.status == 201
    # Each `Warning: 299 - "..."` header carries one of the webhook's warnings, in order:
    # what kubectl prints as "Warning: ...".
    assert admitted.warnings == [
        f"energetiscope: Deployment {namespace}/over {3 * POD_WATTS:.1f} W > max-workload-watts 5 W "
        f"(namespace {namespace})",
        f"energetiscope: to change it: kubectl annotate ns {namespace} {MAX_WORKLOAD}=<W> --overwrite",
    ]
    assert all(len(text) <= 120 for text in admitted.warnings)
    stored = kube.get(DEPLOYMENTS.item(namespace, "over")).expect_ok()
    assert stored["metadata"]["annotations"]["energetiscope.io/workload-power-watts"] == f"{3 * POD_WATTS:.3f}"


def _audit_events(control_plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """The apiserver's audit events of creates of Deployment ``namespace/name``, in order."""
    events = []
    for line in control_plane.audit_log_path.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (event.get("verb") == "create" and event.get("stage") == "ResponseComplete"
                and ref.get("resource") == "deployments" and ref.get("namespace") == namespace
                and ref.get("name") == name):
            events.append(event)
    return events


def test_audit_admits_silently_and_records_the_excess_in_the_audit_log(
    wired_webhook: WiredWebhook, control_plane: ControlPlane
) -> None:
    kube = wired_webhook.kube
    namespace = create_namespace(kube, "e2e-audit", annotations={MODE: "audit", MAX_WORKLOAD: "5"})
    over = deployment("over", replicas=3)  # 6.3 W
    audit_key = f"{BUDGET_WEBHOOK}/{AUDIT_KEY}"

    def audited_dry_run() -> Reply | None:
        # Audit mode answers nothing the client sees: the audit log says when the inventory
        # has the namespace's budget.
        reply = create(kube, namespace, over, dry_run=True)
        events = _audit_events(control_plane, namespace, "over")
        return reply if events and audit_key in (events[-1].get("annotations") or {}) else None

    eventually(audited_dry_run, "the inventory seeing the namespace's budget (audit event of a dry run)")

    admitted = create(kube, namespace, over)
    assert admitted.status == 201 and admitted.warnings == []
    real = [e for e in _audit_events(control_plane, namespace, "over") if "dryRun" not in e["requestURI"]]
    assert len(real) == 1 and real[0]["responseStatus"]["code"] == 201
    record = real[0]["annotations"][audit_key]
    assert record.startswith(f"energetiscope: Deployment {namespace}/over is predicted at {3 * POD_WATTS:.1f} W"), record
    assert f"above max-workload-watts 5 W set by namespace {namespace}" in record
    # Within the budget: no audit annotation.
    assert create(kube, namespace, deployment("fits", replicas=2)).status == 201
    fits = eventually(lambda: _audit_events(control_plane, namespace, "fits") or None, "the audit event of 'fits'")
    assert audit_key not in (fits[-1].get("annotations") or {})


def _scale(apps: kubernetes.client.AppsV1Api, namespace: str, name: str, replicas: int,
           dry_run: bool = False) -> Reply:
    """``kubectl scale``: a patch of the Deployment's scale subresource, as a Reply."""
    try:
        apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}},
                                               dry_run="All" if dry_run else None)
    except ApiException as error:
        return Reply(error.status, json.loads(error.body or "{}"))
    return Reply(200, {})


def test_quota_counts_existing_workloads_scaling_and_replaces_on_update(
    wired_webhook: WiredWebhook, kube_api: kubernetes.client.ApiClient
) -> None:
    kube = wired_webhook.kube
    apps = kubernetes.client.AppsV1Api(kube_api)
    namespace = create_namespace(kube, "e2e-quota", annotations={MODE: "enforce", QUOTA: "10"})
    replicas_of = lambda name: kube.get(DEPLOYMENTS.item(namespace, name)).expect_ok()["spec"]["replicas"]  # noqa: E731

    # A, 2 pods (4.2 W), is admitted and annotated; the inventory learns of it from its watch.
    first = create(kube, namespace, deployment("first", replicas=2)).expect_ok()
    assert energetiscope_annotations(first)

    # B, 3 pods (6.3 W), fits the quota alone: only A's 4.2 W in the inventory can deny it.
    second = deployment("second", replicas=3)
    until(lambda: create(kube, namespace, second, dry_run=True), denied_by_budget,
          "the inventory counting the first Deployment")
    denial = create(kube, namespace, second)
    assert denial.status == 403
    assert (f"{DENIAL_PREFIX}energetiscope: Deployment {namespace}/second is predicted at {3 * POD_WATTS:.1f} W"
            in denial.message)
    assert (f"the namespace total with it would be {5 * POD_WATTS:.1f} W, above quota-watts 10 W set by "
            f"namespace {namespace}") in denial.message
    assert kube.get(DEPLOYMENTS.item(namespace, "second")).status == 404

    # C, 2 pods, fits beside A: 8.3 W.
    third = create(kube, namespace, deployment("third", replicas=2))
    assert third.status == 201, third.message

    # Scaling A to 3 through the scale subresource: 6.3 + 4.2 = 10.4 W. Denied only once
    # the inventory counts C (without it, 6.3 W fits).
    until(lambda: _scale(apps, namespace, "first", 3, dry_run=True), denied_by_budget,
          "the inventory counting the third Deployment")
    denial = _scale(apps, namespace, "first", 3)
    assert denial.status == 403
    assert f"{DENIAL_PREFIX}energetiscope: Deployment {namespace}/first is predicted at " in denial.message
    assert "above quota-watts 10 W" in denial.message
    assert replicas_of("first") == 2
    # ...while scaling it down is admitted.
    assert _scale(apps, namespace, "first", 1).status == 200
    assert replicas_of("first") == 1

    # UPDATE of C to 3 pods: its old 4.2 W is replaced by 6.3 W, 2.1 + 6.3 = 8.3 W fits.
    # Were the old contribution added instead, it would be 13 W whatever the inventory's
    # lag, so the dry-run can only come to be admitted if it is replaced.
    grown = kube.get(DEPLOYMENTS.item(namespace, "third")).expect_ok()
    grown["spec"]["replicas"] = 3
    path = DEPLOYMENTS.item(namespace, "third")
    until(lambda: kube.request("PUT", path, grown, {"dryRun": "All"}), lambda reply: reply.ok,
          "an UPDATE admitted with its old contribution replaced")
    updated = kube.replace(path, grown)
    assert updated.ok, updated.message
    assert updated.body["metadata"]["annotations"]["energetiscope.io/workload-power-watts"] == f"{3 * POD_WATTS:.3f}"
