"""Energy budgets: each mode, per-workload and quota limits, UPDATE, scale, exemptions, sync."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from webhook.admission import annotations as keys
from webhook.admission.mutate import MutationSettings, mutate
from webhook.admission.review import parse_review
from webhook.admission.inventory import WorkloadInventory
from webhook.admission.policy import BudgetPolicy, PolicyError, PolicyStore, parse_policy
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService
from webhook.admission.validate import Budgets, validate

from harness.webhook_process import WebhookProcess, create_certs
from .reviews import apply, review


@pytest.fixture
def service() -> PredictionService:
    service = PredictionService(PriorPredictor())
    service.load()
    return service


def _deployment(name: str = "web", replicas: int = 4, cpu: str = "1", namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "c", "image": "app", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}},
        },
    }


def _annotated(service: PredictionService, obj: dict[str, Any]) -> dict[str, Any]:
    return apply(obj, mutate(parse_review(review(obj)), service, MutationSettings()).review)


def _pod_watts(service: PredictionService, obj: dict[str, Any]) -> float:
    return float(_annotated(service, obj)["metadata"]["annotations"][keys.POD_POWER_WATTS])


def _budgets(policy_yaml: str, namespace_annotations: dict[str, str] | None = None,
             workloads: list[dict[str, Any]] = (), synced: bool = True) -> Budgets:  # type: ignore[assignment]
    store = PolicyStore(None)
    store.policy = parse_policy(policy_yaml, "test policy")
    inventory = WorkloadInventory()
    inventory.expected_kinds = frozenset({"Namespace", "Deployment"})
    inventory.apply("Namespace", "ADDED", {"metadata": {"name": "shop", "annotations": namespace_annotations or {}}})
    for obj in workloads:
        inventory.apply("Deployment", "ADDED", obj)
    if synced:
        inventory.mark_synced("Namespace")
        inventory.mark_synced("Deployment")
    return Budgets(store, inventory)


def _check(service: PredictionService, budgets: Budgets, body: dict[str, Any]) -> dict[str, Any]:
    result = validate(parse_review(body), service, budgets)
    assert result.review["response"]["uid"] == body["request"]["uid"]
    return result.review["response"]


def test_per_workload_limit_in_each_mode(service: PredictionService) -> None:
    pod = _pod_watts(service, _deployment())
    workload = 4 * pod
    limit = round(workload - 1, 1)
    for mode in ("enforce", "warn", "audit"):
        budgets = _budgets("defaultMode: warn", {"energetiscope.io/max-workload-watts": str(limit), "energetiscope.io/budget-mode": mode})
        response = _check(service, budgets, review(_deployment()))
        if mode == "enforce":
            assert response["allowed"] is False
            message = response["status"]["message"]
            assert response["status"]["code"] == 403
            assert f"Deployment shop/web is predicted at {workload:.1f} W (4 pods x {pod:.2f} W" in message
            assert f"above max-workload-watts {limit:g} W set by namespace shop" in message
            assert "kubectl annotate ns shop energetiscope.io/max-workload-watts=<W> --overwrite" in message
        elif mode == "warn":
            assert response["allowed"] is True
            assert any(f"{workload:.1f} W > max-workload-watts {limit:g} W (namespace shop)" in w for w in response["warnings"])
            assert all(len(w) < 120 for w in response["warnings"])
        else:
            assert response["allowed"] is True and "warnings" not in response
            assert "max-workload-watts" in response["auditAnnotations"]["budget-exceeded"]
    under = _budgets("defaultMode: enforce", {"energetiscope.io/max-workload-watts": str(workload + 1)})
    assert _check(service, under, review(_deployment()))["allowed"] is True


def test_p90_can_be_the_checked_value(service: PredictionService) -> None:
    annotated = _annotated(service, _deployment())["metadata"]["annotations"]
    point, p90 = 4 * float(annotated[keys.POD_POWER_WATTS]), 4 * float(annotated[keys.POD_POWER_WATTS_P90])
    limit = (point + p90) / 2
    policy = f"defaultMode: enforce\ndefaults: {{maxWorkloadWatts: {limit}}}\n"
    assert _check(service, _budgets(policy), review(_deployment()))["allowed"] is True
    denied = _check(service, _budgets(policy + "checkedValue: p90\n"), review(_deployment()))
    assert denied["allowed"] is False and "p90 at" in denied["status"]["message"]
    assert "set by policy file" in denied["status"]["message"]


def test_quota_counts_the_namespace_and_update_replaces_the_old_contribution(service: PredictionService) -> None:
    other = _annotated(service, _deployment("other", replicas=2))
    web = _annotated(service, _deployment("web", replicas=4))
    pod = _pod_watts(service, _deployment())
    quota = 8 * pod + 0.5  # room for other (2 pods) and web at up to 6 pods
    budgets = _budgets("defaultMode: enforce", {"energetiscope.io/quota-watts": str(quota)}, [other, web])
    # UPDATE of web from 4 to 6 replicas: 2 + 6 = 8 pods fit; were the old 4 added, 12 would not.
    bigger = copy.deepcopy(web)
    bigger["spec"]["replicas"] = 6
    assert _check(service, budgets, review(bigger, operation="UPDATE", old=web))["allowed"] is True
    bigger["spec"]["replicas"] = 7
    denied = _check(service, budgets, review(bigger, operation="UPDATE", old=web))
    assert denied["allowed"] is False
    assert f"the namespace total with it would be {9 * pod:.1f} W, above quota-watts" in denied["status"]["message"]
    # A new workload adds to what is there.
    newcomer = _deployment("newcomer", replicas=3)
    assert _check(service, budgets, review(newcomer))["allowed"] is False


def test_scale_subresource_is_held_to_the_budget(service: PredictionService) -> None:
    web = _annotated(service, _deployment("web", replicas=4))
    pod = _pod_watts(service, _deployment())
    budgets = _budgets("defaultMode: enforce", {"energetiscope.io/max-workload-watts": str(5 * pod + 0.5)}, [web])

    def scale(replicas: int) -> dict[str, Any]:
        body = review({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"replicas": replicas}}, operation="UPDATE", subResource="scale", name="web")
        body["request"]["resource"] = {"group": "apps", "version": "v1", "resource": "deployments"}
        body["request"]["kind"] = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
        return body

    assert _check(service, budgets, scale(5))["allowed"] is True
    denied = _check(service, budgets, scale(6))
    assert denied["allowed"] is False and "Deployment shop/web" in denied["status"]["message"]


def test_exempt_namespaces_and_self_exemption(service: PredictionService) -> None:
    budgets = _budgets("defaultMode: enforce\ndefaults: {maxWorkloadWatts: 0.001}\nexemptNamespaces: [tools]")
    assert _check(service, budgets, review(_deployment(namespace="tools")))["allowed"] is True
    sneaky = _deployment()
    sneaky["metadata"]["labels"] = {"energetiscope.io/skip": "true"}
    sneaky["metadata"]["annotations"] = {keys.POD_POWER_WATTS: "0.000", keys.WORKLOAD_POWER_WATTS: "0.000",
                                         "energetiscope.io/budget-mode": "audit"}
    assert _check(service, budgets, review(sneaky))["allowed"] is False


@pytest.mark.parametrize(("rule", "allowed", "warned"), [("allow", True, False), ("allow-with-warning", True, True), ("deny", False, False)])
def test_unsynced_inventory_follows_the_policy(service: PredictionService, rule: str, allowed: bool, warned: bool) -> None:
    budgets = _budgets(f"defaultMode: enforce\ndefaults: {{quotaWatts: 100000}}\nwhenInventoryNotSynced: {rule}", synced=False)
    response = _check(service, budgets, review(_deployment()))
    assert response["allowed"] is allowed
    assert ("not synced" in " ".join(response.get("warnings", []))) is warned


def test_bad_namespace_annotations_are_reported_not_fatal(service: PredictionService) -> None:
    budgets = _budgets("defaultMode: warn", {"energetiscope.io/max-workload-watts": "lots", "energetiscope.io/budget-mode": "strict"})
    response = _check(service, budgets, review(_deployment()))
    assert response["allowed"] is True
    assert any("max-workload-watts='lots' is not a number" in w for w in response["warnings"])
    assert any("budget-mode='strict' is not enforce, warn or audit" in w for w in response["warnings"])


def test_delete_and_owned_objects_are_not_checked(service: PredictionService) -> None:
    budgets = _budgets("defaultMode: enforce\ndefaults: {maxWorkloadWatts: 0.001}")
    assert _check(service, budgets, review(None, operation="DELETE", old=_deployment(), kind="Deployment"))["allowed"] is True
    owned = _deployment()
    owned["kind"] = "ReplicaSet"
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": True}]
    assert _check(service, budgets, review(owned))["allowed"] is True


@pytest.mark.parametrize(("text", "message"), [
    ("defaultMode: strict", "policy.yaml: defaultMode: Input should be"),
    ("defaults: {maxWorkloadWatts: -3}", "defaults.maxWorkloadWatts"),
    ("colour: blue", "colour"),
    ("a: [", "invalid YAML"),
])
def test_policy_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, "policy.yaml")


def test_policy_defaults() -> None:
    policy = BudgetPolicy()
    assert policy.default_mode == "warn" and policy.checked_value == "point"
    assert policy.exempt_namespaces == {"kube-system", "energetiscope"}
    assert policy.when_inventory_not_synced == "allow-with-warning"


@pytest.fixture
def policy_server(tmp_path: Path) -> Iterator[tuple[WebhookProcess, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaultMode: enforce\ndefaults: {maxWorkloadWatts: 100000}\n")
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log", "--policy-file", str(policy), "--watch-interval", "0.2",
                        "--kube-access", "off") as server:
        yield server, policy


def test_policy_file_reload_over_tls(policy_server: tuple[WebhookProcess, Path]) -> None:
    server, policy = policy_server
    with server.client() as client:
        def allowed() -> bool:
            answer = client.post("/validate", json=review(_deployment())).json()
            return answer["response"]["allowed"]

        assert allowed() is True
        policy.write_text("defaultMode: enforce\ndefaults: {maxWorkloadWatts: 0.5}\n")
        deadline = time.monotonic() + 15
        while allowed() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert allowed() is False
        policy.write_text("defaultMode: [broken")
        deadline = time.monotonic() + 15
        while client.get("/readyz").json()["budgets"]["policy_error"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        readyz = client.get("/readyz").json()["budgets"]
        assert "invalid YAML" in readyz["policy_error"] and readyz["inventory"] == "off"
        assert allowed() is False  # the last good policy stays in force
        metrics = client.get("/metrics").text
        assert 'energetiscope_reloads_total{result="ok",what="policy"}' in metrics
        assert 'energetiscope_reloads_total{result="failed",what="policy"}' in metrics
        assert 'energetiscope_requests_total{endpoint="validate",result="denied"}' in metrics


@pytest.mark.parametrize(("policy", "namespace", "expect"), [
    ("defaultMode: enforce\ndefaults: {maxWorkloadWatts: 0.5}", "shop", "denied"),
    ("defaultMode: warn\ndefaults: {maxWorkloadWatts: 0.5}", "shop", "warned"),
    ("defaultMode: audit\ndefaults: {maxWorkloadWatts: 0.5}", "shop", "audited"),
    ("defaultMode: enforce\ndefaults: {maxWorkloadWatts: 0.5}\nexemptNamespaces: [shop]", "shop", "allowed"),
    ("defaultMode: enforce\ndefaults: {quotaWatts: 100000}\nwhenInventoryNotSynced: deny", "shop", "denied"),
    ("defaultMode: enforce\ndefaults: {quotaWatts: 100000}", "shop", "unsynced-warning"),
])
def test_modes_over_tls(tmp_path: Path, policy: str, namespace: str, expect: str) -> None:
    """The same decisions through the real server and TLS (no cluster: the inventory is off)."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy)
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log", "--policy-file", str(policy_file), "--kube-access", "off") as server:
        with server.client() as client:
            body = review(_deployment(namespace=namespace))
            response = client.post("/validate", json=body).json()["response"]
    assert response["uid"] == body["request"]["uid"]
    if expect == "denied":
        assert response["allowed"] is False and response["status"]["code"] == 403
    elif expect == "warned":
        assert response["allowed"] is True and any("max-workload-watts 0.5 W" in w for w in response["warnings"])
    elif expect == "audited":
        assert response["allowed"] is True and "max-workload-watts" in response["auditAnnotations"]["budget-exceeded"]
    elif expect == "unsynced-warning":
        assert response["allowed"] is True and any("not synced" in w for w in response["warnings"])
    else:
        assert response == {"uid": body["request"]["uid"], "allowed": True}
