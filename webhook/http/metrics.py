"""Prometheus metrics of one webhook instance, in a registry of its own (no process globals)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from webhook.admission.reading import ObjectReader
from webhook.model.service import PredictionService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Admission calls are sub-millisecond to a few ms; the apiserver gives up after timeoutSeconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _ModelCollector:
    """Reads the service at scrape time, so the numbers are never stale after a reload."""

    def __init__(self, service: PredictionService, reader: ObjectReader | None) -> None:
        self.service = service
        self.reader = reader

    def collect(self):  # type: ignore[no-untyped-def]
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


class WebhookMetrics:
    def __init__(self, service: PredictionService, reader: ObjectReader | None = None) -> None:
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
        self.registry.register(_ModelCollector(service, reader))
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
