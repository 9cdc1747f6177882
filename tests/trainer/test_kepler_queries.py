"""The PromQL built for each Kepler line, and the refusal of overlapping energy domains."""

from __future__ import annotations

import pytest

from trainer.kepler import ContainerEnergySelection, KeplerLine, PodEnergySelection, build_energy_query


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
