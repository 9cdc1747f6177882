"""The PromQL built for each Kepler line, the refusal of overlapping energy domains, and which line a
range holds when Prometheus' index names both."""

from __future__ import annotations

import pytest

from trainer.kepler import (
    CONTAINER_TOTAL_METRIC,
    POD_CPU_METRIC,
    AmbiguousKeplerLineError,
    ContainerEnergySelection,
    KeplerLine,
    PodEnergySelection,
    build_energy_query,
    detect_kepler_line,
)
from trainer.prometheus import InstantSample, PrometheusClient


def test_kepler_07_default_sums_every_mode_of_the_total_counter_per_pod() -> None:
    query = build_energy_query(KeplerLine.CONTAINER_COUNTERS, 60)
    assert query.promql == (
        'sum by (container_namespace, pod_name) (increase({__name__=~"kepler_container_joules_total"}[60s]))'
    )
    assert (query.namespace_label, query.pod_label) == ("container_namespace", "pod_name")


def test_kepler_07_split_components_and_one_mode() -> None:
    query = build_energy_query(
        KeplerLine.CONTAINER_COUNTERS, 300, ContainerEnergySelection(components=("package", "dram"), modes=("idle",))
    )
    assert query.promql == (
        "sum by (container_namespace, pod_name) (increase({"
        '__name__=~"kepler_container_package_joules_total|kepler_container_dram_joules_total", mode=~"idle"'
        "}[300s]))"
    )


def test_kepler_010_default_reads_package_and_dram_of_running_pods() -> None:
    query = build_energy_query(KeplerLine.POD_COUNTERS, 60)
    assert query.promql == (
        "sum by (pod_namespace, pod_name) (increase({"
        '__name__="kepler_pod_cpu_joules_total", zone=~"package|dram", state=~"running"'
        "}[60s]))"
    )


def test_kepler_010_every_state() -> None:
    query = build_energy_query(KeplerLine.POD_COUNTERS, 60, pod_selection=PodEnergySelection(zones=("core",), states=None))
    assert "state" not in query.promql and 'zone=~"core"' in query.promql


def test_the_exporter_target_labels_are_not_grouped_on() -> None:
    for line in KeplerLine:
        promql = build_energy_query(line, 60).promql
        assert "by (namespace" not in promql and ", pod)" not in promql


@pytest.mark.parametrize(
    "selection",
    [
        lambda: ContainerEnergySelection(components=("total", "dram")),
        lambda: ContainerEnergySelection(components=("package", "core")),
        lambda: ContainerEnergySelection(components=("cpu",)),
        lambda: ContainerEnergySelection(modes=("busy",)),
        lambda: ContainerEnergySelection(modes=()),
        lambda: ContainerEnergySelection(modes="dynamic"),  # type: ignore[arg-type]
        lambda: PodEnergySelection(zones=("package", "uncore")),
        lambda: PodEnergySelection(zones=("psys", "dram")),
        lambda: PodEnergySelection(zones=("package", "package")),
        lambda: PodEnergySelection(zones=('package"}) or vector(1',)),
        lambda: PodEnergySelection(states=("running|.*",)),
    ],
)
def test_overlapping_unknown_or_unsafe_choices_are_refused(selection: object) -> None:
    with pytest.raises(ValueError):
        selection()  # type: ignore[operator]


def test_kepler_line_values_name_the_line() -> None:
    assert KeplerLine("kepler-0.7") is KeplerLine.CONTAINER_COUNTERS
    assert KeplerLine("kepler-0.10") is KeplerLine.POD_COUNTERS


class _CompactedIndex(PrometheusClient):
    """A Prometheus whose index lookup names both lines (their blocks were compacted into one
    that overlaps the range) while only `with_samples` has samples in the range."""

    def __init__(self, with_samples: set[str]) -> None:
        super().__init__("http://prometheus.invalid:9090")
        self.with_samples = with_samples
        self.sample_reads: list[str] = []

    def label_values(self, label: str, matchers: object, start_seconds: float, end_seconds: float) -> list[str]:
        return [CONTAINER_TOTAL_METRIC, POD_CPU_METRIC]

    def instant_query(self, promql: str, at_seconds: float | None = None) -> list[InstantSample]:
        self.sample_reads.append(promql)
        metric = next(m for m in (CONTAINER_TOTAL_METRIC, POD_CPU_METRIC) if f'"{m}"' in promql)
        return [InstantSample({}, at_seconds or 0.0, 12.0)] if metric in self.with_samples else []


def test_a_line_named_by_a_compacted_block_but_without_samples_in_the_range_is_not_taken() -> None:
    client = _CompactedIndex({POD_CPU_METRIC})
    assert detect_kepler_line(client, 1_000.0, 8_200.0) is KeplerLine.POD_COUNTERS
    assert client.sample_reads == [
        f'count(present_over_time({{__name__="{metric}"}}[7200s]))' for metric in (CONTAINER_TOTAL_METRIC, POD_CPU_METRIC)]
    with pytest.raises(AmbiguousKeplerLineError, match="choose one Kepler line"):
        detect_kepler_line(_CompactedIndex({CONTAINER_TOTAL_METRIC, POD_CPU_METRIC}), 1_000.0, 8_200.0)
