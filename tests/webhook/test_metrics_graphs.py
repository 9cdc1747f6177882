"""/metrics says what an operator graphs: namespace power, quotas, modes, budget decisions,
bounded per-workload power, certificate expiry and model age.

The application is the real one (``create_app``) with a budget inventory fed the way its
watch feeds it; reviews go through ``POST /validate`` and the numbers are read back by
scraping ``GET /metrics`` and parsing it with Prometheus' own text parser.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from webhook.admission import annotations as keys
from webhook.admission.inventory import WorkloadInventory
from webhook.admission.policy import PolicyStore, parse_policy
from webhook.admission.validate import Budgets
from webhook.http.app import create_app
from webhook.http.metrics import model_created_timestamp_seconds
from webhook.http.state import AppSettings, app_state
from webhook.model.artifact import TrainedModel
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from .reviews import review

POLICY = """\
apiVersion: energetiscope.io/v1
kind: BudgetPolicy
defaultMode: warn
defaults: {quotaWatts: 1000}
exemptNamespaces: [kube-system]
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _deployment(namespace: str, name: str, replicas: int, pod_watts: float, cpu: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {keys.POD_POWER_WATTS: f"{pod_watts:.3f}",
                                     keys.POD_POWER_WATTS_P90: f"{pod_watts * 2:.3f}"}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "c", "image": "app", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}}},
    }


def _namespace(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations}}


def _scrape(client: TestClient) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (metric, labels), value in samples.items() if metric == name}


@pytest.fixture
def inventory() -> WorkloadInventory:
    inventory = WorkloadInventory()
    inventory.expected_kinds = frozenset({"Namespace", "Deployment"})
    inventory.apply("Namespace", "ADDED", _namespace("shop", {
        "energetiscope.io/budget-mode": "enforce", "energetiscope.io/quota-watts": "100",
        "energetiscope.io/max-workload-watts": "60"}))
    inventory.apply("Namespace", "ADDED", _namespace("lab", {"energetiscope.io/budget-mode": "audit"}))
    inventory.apply("Namespace", "ADDED", _namespace("kube-system", {}))
    inventory.apply("Deployment", "ADDED", _deployment("shop", "web", 4, 10.0))
    inventory.apply("Deployment", "ADDED", _deployment("shop", "db", 1, 25.5))
    inventory.apply("Deployment", "ADDED", _deployment("lab", "gpu", 2, 300.0))
    inventory.apply("Deployment", "ADDED", _deployment("lab", "idle", 1, 1.0))
    inventory.mark_synced("Namespace")
    inventory.mark_synced("Deployment")
    return inventory


def _client(inventory: WorkloadInventory, max_series: int) -> TestClient:
    service = PredictionService(PriorPredictor())
    service.load()
    store = PolicyStore(None)
    store.policy = parse_policy(POLICY, "test policy")
    app = create_app(service, AppSettings(workload_metrics_max_series=max_series), Budgets(store, inventory))
    return TestClient(app)


def test_namespace_power_quota_and_mode_follow_the_inventory(inventory: WorkloadInventory) -> None:
    with _client(inventory, 0) as client:
        samples = _scrape(client)
        assert _value(samples, "energetiscope_namespace_predicted_watts", namespace="shop") == pytest.approx(65.5)
        assert _value(samples, "energetiscope_namespace_predicted_p90_watts", namespace="shop") == pytest.approx(131.0)
        assert _value(samples, "energetiscope_namespace_predicted_watts", namespace="lab") == pytest.approx(601.0)
        # The annotation's quota, and the policy's default where there is none.
        assert _value(samples, "energetiscope_namespace_quota_watts", namespace="shop") == 100.0
        assert _value(samples, "energetiscope_namespace_quota_watts", namespace="lab") == 1000.0
        assert _value(samples, "energetiscope_namespace_max_workload_watts", namespace="shop") == 60.0
        assert _value(samples, "energetiscope_namespace_max_workload_watts", namespace="lab") is None
        modes = {dict(labels)["mode"]: value for labels, value in _series(samples, "energetiscope_namespace_budget_mode").items()
                 if dict(labels)["namespace"] == "shop"}
        assert modes == {"enforce": 1.0, "warn": 0.0, "audit": 0.0}
        assert _value(samples, "energetiscope_namespace_budget_mode", namespace="lab", mode="audit") == 1.0
        # Exempt namespaces have no budget to show.
        assert not [labels for labels in _series(samples, "energetiscope_namespace_budget_mode")
                    if dict(labels)["namespace"] == "kube-system"]
        assert _value(samples, "energetiscope_inventory_synced") == 1.0
        # Off by default: no per-workload series.
        assert _series(samples, "energetiscope_workload_predicted_watts") == {}

        # A workload scaled down and one deleted: the next scrape follows.
        inventory.apply("Deployment", "MODIFIED", _deployment("shop", "web", 1, 10.0))
        inventory.apply("Deployment", "DELETED", _deployment("shop", "db", 1, 25.5))
        assert _value(_scrape(client), "energetiscope_namespace_predicted_watts", namespace="shop") == pytest.approx(10.0)


def test_per_workload_power_is_bounded_to_the_largest(inventory: WorkloadInventory) -> None:
    with _client(inventory, 2) as client:
        samples = _scrape(client)
    series = {(dict(labels)["namespace"], dict(labels)["kind"], dict(labels)["workload"]): value
              for labels, value in _series(samples, "energetiscope_workload_predicted_watts").items()}
    assert series == {("lab", "Deployment", "gpu"): pytest.approx(600.0), ("shop", "Deployment", "web"): pytest.approx(40.0)}
    assert _value(samples, "energetiscope_workload_series_dropped") == 2.0


def test_budget_decisions_are_counted_by_namespace_mode_and_result(inventory: WorkloadInventory) -> None:
    with _client(inventory, 0) as client:
        big = _deployment("shop", "big", 10, 0.0, cpu="8")
        big["metadata"].pop("annotations")
        denied = client.post("/validate", json=review(big)).json()
        assert denied["response"]["allowed"] is False
        small = _deployment("lab", "tiny", 1, 0.0, cpu="100m")
        small["metadata"].pop("annotations")
        assert client.post("/validate", json=review(small)).json()["response"]["allowed"] is True
        samples = _scrape(client)
    assert _value(samples, "energetiscope_budget_decisions_total", namespace="shop", mode="enforce", result="denied") == 1.0
    assert _value(samples, "energetiscope_budget_decisions_total", namespace="lab", mode="audit", result="allowed") == 1.0
    assert sum(_series(samples, "energetiscope_budget_decisions_total").values()) == 2.0


def test_certificate_expiry_and_model_age(inventory: WorkloadInventory) -> None:
    with _client(inventory, 0) as client:
        app_state(client.app).metrics.watch_certificate(lambda: 1_900_000_000.0)  # type: ignore[arg-type]
        samples = _scrape(client)
    assert _value(samples, "energetiscope_certificate_expiry_timestamp_seconds") == 1_900_000_000.0
    # The prior has no training time, so no age to alert on.
    assert _value(samples, "energetiscope_model_created_timestamp_seconds") is None


def test_a_trained_models_card_time_is_its_creation_time() -> None:
    service = PredictionService(PriorPredictor())
    created = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    service._predictor = TrainedModel(pipeline=None, model_id="m", metadata={"created_at": created.isoformat()})  # type: ignore[arg-type]
    assert model_created_timestamp_seconds(service) == created.timestamp()
    service._predictor = TrainedModel(pipeline=None, model_id="m", metadata={"created_at": "yesterday"})  # type: ignore[arg-type]
    assert model_created_timestamp_seconds(service) is None
