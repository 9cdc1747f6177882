"""The chart's alerts, recording rules and dashboard: valid, firing when they should, and
reading only metrics that exist.

* ``promtool check rules`` accepts deploy/helm/energetiscope/files/prometheus-rules.yaml.
* ``promtool test rules`` runs tests/monitoring/rules_test.yaml: every alert fires on series
  crafted to trip it and stays quiet on healthy ones; the recording rules give hand-worked numbers.
* Every metric an alert, a recording rule or a dashboard panel reads is exported by the webhook
  (its real /metrics, scraped with every optional series switched on), recorded by a rule, or
  one of the few outside metrics the rules are written for (Kepler, kube-state-metrics,
  the apiserver, Prometheus' ``up``).
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from harness.prometheus import PrometheusBinaries
from tests.monitoring.promql_names import metric_names
from webhook.admission import annotations as keys
from webhook.admission.inventory import WorkloadInventory
from webhook.admission.policy import PolicyStore, parse_policy
from webhook.admission.validate import Budgets
from webhook.http.app import create_app
from webhook.http.state import AppSettings, app_state
from webhook.model.artifact import TrainedModel
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_FILES = REPO_ROOT / "deploy" / "helm" / "energetiscope" / "files"
RULES_FILE = CHART_FILES / "prometheus-rules.yaml"
DASHBOARD_FILE = CHART_FILES / "energetiscope-dashboard.json"
RULES_TEST_FILE = Path(__file__).resolve().parent / "rules_test.yaml"
# Metrics other exporters provide, which the rules are written against.
OUTSIDE_METRICS = frozenset({
    "kepler_container_joules_total",  # Kepler <= 0.9
    "kepler_pod_cpu_joules_total",  # Kepler >= 0.10
    "kube_pod_owner",  # kube-state-metrics
    "apiserver_admission_webhook_fail_open_count",  # kube-apiserver
    "up",  # Prometheus, per scrape target
})


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    # Grafana's label_values(SELECTOR, LABEL) reads SELECTOR.
    queries += [(f"variable {v['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]))
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = PrometheusBinaries.locate().promtool
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_promtool_check_rules_accepts_every_rule() -> None:
    completed = _promtool("check", "rules", str(RULES_FILE))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in completed.stdout


def test_promtool_test_rules_every_alert_fires_on_crafted_series() -> None:
    completed = _promtool("test", "rules", str(RULES_TEST_FILE))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [case for test in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in _rules():
        if "alert" not in rule:
            continue
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} is never shown firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} is never shown quiet"


def _exported_metric_names() -> set[str]:
    """Every sample name of the webhook's real /metrics with every optional family present."""
    inventory = WorkloadInventory()
    inventory.expected_kinds = frozenset({"Namespace", "Deployment"})
    inventory.apply("Namespace", "ADDED", {"metadata": {"name": "shop", "annotations": {
        "energetiscope.io/quota-watts": "10", "energetiscope.io/max-workload-watts": "5"}}})
    inventory.apply("Deployment", "ADDED", {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "annotations": {keys.POD_POWER_WATTS: "2.5"}},
        "spec": {"replicas": 2}})
    store = PolicyStore(None)
    store.policy = parse_policy("apiVersion: energetiscope.io/v1\nkind: BudgetPolicy\n", "test")
    service = PredictionService(PriorPredictor())
    service.load()
    app = create_app(service, AppSettings(workload_metrics_max_series=10), Budgets(store, inventory))
    state = app_state(app)
    state.metrics.watch_certificate(lambda: 2_000_000_000.0)
    state.metrics.record_budget_decision("shop", "warn", "warned")
    state.metrics.observe("mutate", "patched", 0.001)
    state.metrics.predictions.labels("prior").inc()
    created = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat()
    with TestClient(app) as client:
        service._predictor = TrainedModel(pipeline=None, model_id="m", metadata={"created_at": created})  # type: ignore[arg-type]
        text = client.get("/metrics").text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    return _exported_metric_names() | recorded | OUTSIDE_METRICS


def test_the_webhook_exports_the_names_the_docs_promise(known_metrics: set[str]) -> None:
    for name in ("energetiscope_namespace_predicted_watts", "energetiscope_namespace_quota_watts",
                 "energetiscope_namespace_budget_mode", "energetiscope_workload_predicted_watts",
                 "energetiscope_budget_decisions_total", "energetiscope_certificate_expiry_timestamp_seconds",
                 "energetiscope_model_created_timestamp_seconds", "energetiscope_request_duration_seconds_bucket"):
        assert name in known_metrics


def test_every_rule_reads_metrics_that_exist(known_metrics: set[str]) -> None:
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - known_metrics
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {sorted(unknown)}, which nothing exports"


@pytest.mark.parametrize("title,expression", _panel_queries(), ids=[title for title, _ in _panel_queries()])
def test_every_dashboard_query_reads_metrics_that_exist(known_metrics: set[str], title: str, expression: str) -> None:
    names = metric_names(expression)
    assert names, f"{title}: no metric found in {expression!r}"
    assert not names - known_metrics, f"{title} reads {sorted(names - known_metrics)}, which nothing exports"


def test_the_name_check_would_catch_a_renamed_metric(known_metrics: set[str]) -> None:
    assert metric_names("sum(rate(energetiscope_request_total[5m]))") - known_metrics == {"energetiscope_request_total"}
