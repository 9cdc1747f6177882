"""Prometheus metrics of one webhook instance, in a registry of its own (no process globals).

Besides the request counters, what an operator graphs and alerts on (deploy/helm's rules and
dashboard use these names): the predicted power of every namespace from the budget inventory,
its quota and budget mode, budget decisions by namespace, mode and result, when the serving
certificate expires, when the served model was trained, and, behind
``--workload-metrics-max-series``, the predicted power of the largest workloads. Values that
change outside a request (inventory, certificate, model) are read at scrape time, so they are
never stale. Names follow Prometheus' conventions: base units in the name (``_watts``,
``_seconds``), ``_total`` on counters, timestamps as ``_timestamp_seconds``.
"""

from __future__ import annotations

import heapq
import math
from datetime import datetime
from typing import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from webhook.admission.inventory import Contribution, WorkloadKey
from webhook.admission.pipeline import MODEL_RUN_PLACES
from webhook.admission.policy import MODES, namespace_budget
from webhook.admission.reading import ObjectReader
from webhook.admission.validate import Budgets
from webhook.model.artifact import TrainedModel
from webhook.model.service import PredictionService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Admission calls are sub-millisecond to a few ms; the apiserver gives up after timeoutSeconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The budget webhook's outcomes that are a decision on a budget (the rest skip or fail open).
BUDGET_RESULTS = ("allowed", "warned", "audited", "denied")


def model_created_timestamp_seconds(service: PredictionService) -> float | None:
    """When the served model was trained (its card's ``created_at``), Unix seconds; None for
    the prior or a model whose card does not say."""
    predictor = service.predictor
    if not isinstance(predictor, TrainedModel):
        return None
    created = predictor.metadata.get("created_at")
    if not isinstance(created, str):
        return None
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class _ModelCollector:
    """Reads the service at scrape time, so the numbers are never stale after a reload."""

    def __init__(self, service: PredictionService, reader: ObjectReader | None,
                 model_runs: Mapping[str, int] | None = None) -> None:
        self.service = service
        self.reader = reader
        self.model_runs = model_runs

    def collect(self) -> Iterator[Metric]:
        status = self.service.status()
        info = GaugeMetricFamily(
            "energetiscope_model_info",
            "The predictor serving now (value 1); error is why a configured model is not serving.",
            labels=["model", "basis", "sha256", "error"],
        )
        info.add_metric([status.model_id, status.basis, status.sha256 or "", status.error or ""], 1.0)
        yield info
        cache = self.service.cache
        entries = GaugeMetricFamily("energetiscope_prediction_cache_entries", "Pod predictions cached.")
        entries.add_metric([], float(len(cache)))
        yield entries
        lookups = GaugeMetricFamily(
            "energetiscope_prediction_cache_lookups", "Cache lookups since start, by result.", labels=["result"]
        )
        lookups.add_metric(["hit"], float(cache.hits))
        lookups.add_metric(["miss"], float(cache.misses))
        yield lookups
        if self.model_runs is not None:
            runs = CounterMetricFamily(
                "energetiscope_model_runs",
                "Cache misses sent to the model, by where: its prediction process or a worker thread "
                "(one the process could not answer in time is sent to a thread too, and counts in both).",
                labels=["where"],
            )
            for where in MODEL_RUN_PLACES:
                runs.add_metric([where], float(self.model_runs.get(where, 0)))
            yield runs
        if self.reader is not None:
            memo = self.reader.memo
            reads = GaugeMetricFamily(
                "energetiscope_object_read_memo_lookups",
                "Workload objects looked up among those already read, since start, by result.",
                labels=["result"],
            )
            reads.add_metric(["hit"], float(memo.hits))
            reads.add_metric(["miss"], float(memo.misses))
            yield reads
        created_seconds = model_created_timestamp_seconds(self.service)
        if created_seconds is not None:
            created = GaugeMetricFamily(
                "energetiscope_model_created_timestamp_seconds",
                "When the served model was trained (its model card's created_at), Unix time; absent for the prior.",
            )
            created.add_metric([], created_seconds)
            yield created


class _CertificateCollector:
    """When the serving certificate in use expires, read at scrape time (it is renewed in place)."""

    def __init__(self, expiry_timestamp_seconds: Callable[[], float]) -> None:
        self.expiry_timestamp_seconds = expiry_timestamp_seconds

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "energetiscope_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, Unix time.",
        )
        expiry.add_metric([], self.expiry_timestamp_seconds())
        yield expiry


class _BudgetCollector:
    """Each namespace's predicted power, quota and budget mode, from the budget inventory.

    ``workload_series_limit`` > 0 adds the predicted power of that many of the largest
    workloads (one series each, labelled namespace, kind, workload) and how many were left out:
    a cluster's workloads are too many to export them all by default.
    """

    def __init__(self, budgets: Budgets, workload_series_limit: int) -> None:
        self.budgets = budgets
        self.workload_series_limit = workload_series_limit

    def collect(self) -> Iterator[Metric]:
        inventory = self.budgets.inventory
        if inventory is None:  # no API access: no inventory, nothing to say per namespace
            return
        synced = GaugeMetricFamily("energetiscope_inventory_synced",
                                   "1 when the budget inventory has listed every kind it watches.")
        synced.add_metric([], 1.0 if inventory.synced else 0.0)
        yield synced
        policy = self.budgets.policy.policy
        namespaces, workloads = inventory.snapshot()
        point_watts: dict[str, float] = {}
        p90_watts: dict[str, float] = {}
        for (namespace, _kind, _name), contribution in workloads.items():
            point_watts[namespace] = point_watts.get(namespace, 0.0) + contribution.watts("point")
            p90_watts[namespace] = p90_watts.get(namespace, 0.0) + contribution.watts("p90")
        predicted = GaugeMetricFamily(
            "energetiscope_namespace_predicted_watts",
            "Predicted power of the namespace's annotated workloads (point values), W.", labels=["namespace"])
        predicted_p90 = GaugeMetricFamily(
            "energetiscope_namespace_predicted_p90_watts",
            "Predicted power of the namespace's annotated workloads (p90 values), W.", labels=["namespace"])
        quota = GaugeMetricFamily(
            "energetiscope_namespace_quota_watts",
            "The namespace's power quota (annotation or policy default), W; absent where there is none.",
            labels=["namespace"])
        max_workload = GaugeMetricFamily(
            "energetiscope_namespace_max_workload_watts",
            "The most one workload of the namespace may draw, W; absent where there is no such limit.",
            labels=["namespace"])
        mode = GaugeMetricFamily(
            "energetiscope_namespace_budget_mode",
            "1 for the namespace's budget mode (enforce, warn or audit), 0 for the others; exempt namespaces are left out.",
            labels=["namespace", "mode"])
        for namespace in sorted(set(namespaces) | set(point_watts)):
            predicted.add_metric([namespace], point_watts.get(namespace, 0.0))
            predicted_p90.add_metric([namespace], p90_watts.get(namespace, 0.0))
            if namespace in policy.exempt_namespaces:
                continue
            budget = namespace_budget(policy, namespace, namespaces.get(namespace, {}))
            if budget.quota is not None:
                quota.add_metric([namespace], budget.quota.amount)
            if budget.max_workload is not None:
                max_workload.add_metric([namespace], budget.max_workload.amount)
            for name in MODES:
                mode.add_metric([namespace, name], 1.0 if budget.mode == name else 0.0)
        yield from (predicted, predicted_p90, quota, max_workload, mode)
        if self.workload_series_limit > 0:
            yield from self._workloads(workloads)

    def _workloads(self, workloads: dict[WorkloadKey, Contribution]) -> Iterator[Metric]:
        largest = heapq.nlargest(self.workload_series_limit, workloads.items(),
                                 key=lambda item: (item[1].watts("point"), item[0]))
        power = GaugeMetricFamily(
            "energetiscope_workload_predicted_watts",
            "Predicted power of one workload (pods x point value per pod), W; only the largest "
            "--workload-metrics-max-series workloads.",
            labels=["namespace", "kind", "workload"])
        for (namespace, kind, name), contribution in largest:
            watts = contribution.watts("point")
            if math.isfinite(watts):
                power.add_metric([namespace, kind, name], watts)
        yield power
        dropped = GaugeMetricFamily(
            "energetiscope_workload_series_dropped",
            "Workloads whose energetiscope_workload_predicted_watts series was left out by the series bound.")
        dropped.add_metric([], float(len(workloads) - len(largest)))
        yield dropped


class WebhookMetrics:
    def __init__(self, service: PredictionService, reader: ObjectReader | None = None,
                 budgets: Budgets | None = None, workload_series_limit: int = 0,
                 model_runs: Mapping[str, int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "energetiscope_requests",
            "HTTP requests handled, by endpoint and result.",
            ["endpoint", "result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "energetiscope_request_duration_seconds",
            "Time to answer a request, by endpoint and result.",
            ["endpoint", "result"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "energetiscope_predictions", "Workload predictions made, by basis.", ["basis"], registry=self.registry
        )
        self.reloads = Counter(
            "energetiscope_reloads",
            "Reloads of the model artifact or budget policy file, by what and result.",
            ["what", "result"],
            registry=self.registry,
        )
        self.ready = Gauge("energetiscope_ready", "1 when certificates and model are loaded.", registry=self.registry)
        self.budget_decisions = Counter(
            "energetiscope_budget_decisions",
            "Budget webhook decisions, by namespace, the namespace's budget mode and result "
            "(allowed, warned, audited, denied).",
            ["namespace", "mode", "result"],
            registry=self.registry,
        )
        self.registry.register(_ModelCollector(service, reader, model_runs))
        if budgets is not None:
            self.registry.register(_BudgetCollector(budgets, workload_series_limit))
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        # Garbage-collector pauses and the process's CPU and memory: what explains a latency tail.
        GCCollector(registry=self.registry)
        ProcessCollector(registry=self.registry)

    def observe(self, endpoint: str, result: str, seconds: float) -> None:
        # labels() takes a lock and builds its key on every call; there are a few dozen
        # (endpoint, result) pairs, so their children are looked up once.
        children = self._children.get((endpoint, result))
        if children is None:
            children = self._children[(endpoint, result)] = (
                self.requests.labels(endpoint, result), self.latency.labels(endpoint, result)
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch_certificate(self, expiry_timestamp_seconds: Callable[[], float]) -> None:
        """Export the serving certificate's expiry, read from ``expiry_timestamp_seconds`` at each scrape."""
        self.registry.register(_CertificateCollector(expiry_timestamp_seconds))

    def record_budget_decision(self, namespace: str, mode: str, result: str) -> None:
        if result in BUDGET_RESULTS:
            self.budget_decisions.labels(namespace, mode, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
