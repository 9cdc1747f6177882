"""What Kepler exports, which line of Kepler a Prometheus holds, and the PromQL that reads
per-pod energy per window from it.

Two lines of Kepler exist and their metrics do not overlap:

* Kepler up to 0.9 (`KeplerLine.CONTAINER_COUNTERS`, "kepler-0.7"): per-container counters
  `kepler_container_joules_total` (package + uncore + DRAM + GPU + other host components) and the
  split counters `kepler_container_{package,core,uncore,dram,other,gpu}_joules_total`, labelled
  `container_namespace`, `pod_name`, `container_name`, `container_id` and `mode`. `mode` is
  `dynamic` (energy attributed from the workload's activity) or `idle` (its share of the node's
  idle energy). By default both modes are summed: the energy a pod is charged for.
* Kepler 0.10 and later (`KeplerLine.POD_COUNTERS`, "kepler-0.10"): the per-pod counter
  `kepler_pod_cpu_joules_total`, labelled `pod_namespace`, `pod_name`, `pod_id`, `zone` (RAPL
  zone: package, core, uncore, dram, psys...) and `state` (running, terminated). Zones overlap
  (package contains core and uncore; psys contains package and dram), so by default the package
  and dram zones are summed (dram adds nothing where the hardware has no dram zone), and only
  `state="running"` series are read: a terminated pod's series holds its final value, whose
  increase is zero, and would only add zero-energy windows after the pod is gone.

The Prometheus target labels `namespace` and `pod` on these series name the Kepler exporter pod,
not the workload: the queries group by Kepler's own labels only.

Energy per window is `increase(counter[W])` evaluated at the window's end, summed per pod after
the increase so a counter reset (Kepler restart) on any one series is handled where it happens.
When the counter is sampled on the evaluation grid, the range [end-W, end] holds exactly the
samples at end-W and end: Prometheus (2.x, whose range selectors include the left edge) then
has nothing to extrapolate and the increase is the exact difference of the two samples, or the
later sample alone across a reset. Off the grid, increase() extrapolates to the window edges: the
usual estimate. Prometheus 3 made range selectors left-open, so there a window W needs at least
two scrapes inside (end-W, end]: pick W >= 2 scrape intervals.

Kepler's GPU series, read when the labels step takes GPU energy from Kepler (`trainer.dcgm`):
`kepler_container_gpu_joules_total` (Kepler <= 0.9, same labels and modes as the container
counters) and `kepler_pod_gpu_joules_total` (Kepler 0.11.4 and later, labels `pod_id`,
`pod_name`, `pod_namespace`, `state`; no zone). Kepler <= 0.9 already counts the GPU inside
`kepler_container_joules_total`: `selection_counts_gpu` says when the CPU-side query includes it,
so the labels step can take it out before adding the GPU energy of the chosen source once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from trainer.prometheus import PrometheusClient, format_duration


class KeplerLine(str, Enum):
    """Which family of Kepler metrics a Prometheus holds. The values go into the labels table."""

    CONTAINER_COUNTERS = "kepler-0.7"  # Kepler <= 0.9: kepler_container_*joules_total, mode label
    POD_COUNTERS = "kepler-0.10"  # Kepler >= 0.10: kepler_pod_cpu_joules_total, zone/state labels


CONTAINER_TOTAL_METRIC = "kepler_container_joules_total"
POD_CPU_METRIC = "kepler_pod_cpu_joules_total"
CONTAINER_GPU_METRIC = "kepler_container_gpu_joules_total"
POD_GPU_METRIC = "kepler_pod_gpu_joules_total"
# Each line's per-pod GPU energy counter (joules).
GPU_METRIC: dict[KeplerLine, str] = {
    KeplerLine.CONTAINER_COUNTERS: CONTAINER_GPU_METRIC,
    KeplerLine.POD_COUNTERS: POD_GPU_METRIC,
}
# The metric whose presence marks each line.
MARKER_METRIC: dict[KeplerLine, str] = {
    KeplerLine.CONTAINER_COUNTERS: CONTAINER_TOTAL_METRIC,
    KeplerLine.POD_COUNTERS: POD_CPU_METRIC,
}

CONTAINER_MODES = ("dynamic", "idle")
# "total" is kepler_container_joules_total; the others are kepler_container_<name>_joules_total.
CONTAINER_COMPONENTS = ("total", "package", "core", "uncore", "dram", "other", "gpu")

# Energy domains that contain other ones: selecting a container and one of its parts counts the
# part twice.
_CONTAINED_IN: dict[str, frozenset[str]] = {
    "total": frozenset({"package", "core", "uncore", "dram", "other", "gpu"}),
    "package": frozenset({"core", "uncore"}),
    "psys": frozenset({"package", "core", "uncore", "dram"}),
}
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_-]+$")


class KeplerMetricsNotFoundError(LookupError):
    """Neither Kepler line has series in the requested time range."""


class AmbiguousKeplerLineError(LookupError):
    """Both Kepler lines have series in the requested time range: the caller must choose."""


@dataclass(frozen=True)
class ContainerEnergySelection:
    """What to read from Kepler <= 0.9 container counters.

    components: "total" (kepler_container_joules_total, the default) or split counters such as
        ("package", "dram"); overlapping choices ("total" with a split, "package" with "core") are
        refused because they would count the same joules twice.
    modes: "dynamic", "idle" or both (default: both, the energy charged to the pod).
    """

    components: tuple[str, ...] = ("total",)
    modes: tuple[str, ...] = CONTAINER_MODES

    def __post_init__(self) -> None:
        _check_choice("component", self.components, allowed=CONTAINER_COMPONENTS)
        _check_choice("mode", self.modes, allowed=CONTAINER_MODES)
        _check_no_overlap("component", self.components)


@dataclass(frozen=True)
class PodEnergySelection:
    """What to read from Kepler >= 0.10 `kepler_pod_cpu_joules_total`.

    zones: RAPL zones to sum (default package + dram); overlapping zones are refused.
    states: pod states to read (default running only); None reads every state.
    """

    zones: tuple[str, ...] = ("package", "dram")
    states: tuple[str, ...] | None = ("running",)

    def __post_init__(self) -> None:
        _check_choice("zone", self.zones, allowed=None)
        _check_no_overlap("zone", self.zones)
        if self.states is not None:
            _check_choice("state", self.states, allowed=None)


@dataclass(frozen=True)
class EnergyQuery:
    """A PromQL expression giving, per pod, the energy in joules over the window ending at the
    evaluation time, and the labels of its result that name the workload pod."""

    line: KeplerLine
    promql: str
    window_seconds: float
    namespace_label: str
    pod_label: str
    matchers: tuple[str, ...] = ()  # the counters' selector, e.g. for raw samples (`trainer.runs`)


def detect_kepler_line(client: PrometheusClient, start_seconds: float, end_seconds: float) -> KeplerLine:
    """Which Kepler line has series between start and end.

    First an index lookup (no sample read). Prometheus answers it per TSDB block, so once it has
    compacted blocks into larger ones (6 h, 18 h, ... after a while) the lookup also names metrics
    whose samples lie outside the range but inside a block that overlaps it. When it names both
    lines, each is confirmed by reading its samples in the range (`_has_samples_in`); only a
    range that truly holds both is ambiguous."""
    names = "|".join(MARKER_METRIC.values())
    present = set(client.label_values("__name__", [f'{{__name__=~"{names}"}}'], start_seconds, end_seconds))
    lines = [line for line, metric in MARKER_METRIC.items() if metric in present]
    if len(lines) > 1:
        lines = [line for line in lines if _has_samples_in(client, MARKER_METRIC[line], start_seconds, end_seconds)] or lines
    if not lines:
        raise KeplerMetricsNotFoundError(
            f"no Kepler energy metrics ({' or '.join(MARKER_METRIC.values())}) in Prometheus at "
            f"{client.base_url} between {start_seconds:.0f} and {end_seconds:.0f} (Unix seconds)"
        )
    if len(lines) > 1:
        raise AmbiguousKeplerLineError(
            f"Prometheus at {client.base_url} holds both {CONTAINER_TOTAL_METRIC} (Kepler <= 0.9) "
            f"and {POD_CPU_METRIC} (Kepler >= 0.10) between {start_seconds:.0f} and "
            f"{end_seconds:.0f}: choose one Kepler line explicitly, or split the time range at the upgrade"
        )
    return lines[0]


def _has_samples_in(client: PrometheusClient, metric: str, start_seconds: float, end_seconds: float) -> bool:
    """Whether any series of `metric` has a sample in [start, end]: a sample read over the range,
    so only for the rare case the index lookup cannot settle."""
    span = format_duration(max(end_seconds - start_seconds, 0.001))
    return bool(client.instant_query(f'count(present_over_time({{__name__="{metric}"}}[{span}]))', end_seconds))


def build_energy_query(
    line: KeplerLine,
    window_seconds: float,
    container_selection: ContainerEnergySelection | None = None,
    pod_selection: PodEnergySelection | None = None,
) -> EnergyQuery:
    """The per-pod energy-per-window query for one Kepler line (see the module docstring)."""
    if line is KeplerLine.CONTAINER_COUNTERS:
        selection = container_selection or ContainerEnergySelection()
        metric_names = [
            CONTAINER_TOTAL_METRIC if c == "total" else f"kepler_container_{c}_joules_total"
            for c in selection.components
        ]
        return _pod_energy_query(line, window_seconds, [f'__name__=~"{"|".join(metric_names)}"'], selection, None)
    if line is KeplerLine.POD_COUNTERS:
        selection_10 = pod_selection or PodEnergySelection()
        matchers = [f'__name__="{POD_CPU_METRIC}"', f'zone=~"{"|".join(selection_10.zones)}"']
        return _pod_energy_query(line, window_seconds, matchers, None, selection_10)
    raise ValueError(f"unknown Kepler line {line!r}")  # pragma: no cover - exhaustive over the enum


def build_gpu_energy_query(
    line: KeplerLine,
    window_seconds: float,
    container_selection: ContainerEnergySelection | None = None,
    pod_selection: PodEnergySelection | None = None,
) -> EnergyQuery:
    """Per-pod GPU energy per window from Kepler's own GPU counter of that line, with the same
    modes (<= 0.9) or states (>= 0.10) as the CPU-side selection."""
    matchers = [f'__name__="{GPU_METRIC[line]}"']
    if line is KeplerLine.CONTAINER_COUNTERS:
        return _pod_energy_query(line, window_seconds, matchers, container_selection or ContainerEnergySelection(), None)
    return _pod_energy_query(line, window_seconds, matchers, None, pod_selection or PodEnergySelection())


def selection_counts_gpu(line: KeplerLine, container_selection: ContainerEnergySelection | None) -> bool:
    """Whether the CPU-side query of `build_energy_query` already holds Kepler's GPU energy:
    Kepler <= 0.9 with the `total` (package + dram + other + GPU) or `gpu` component."""
    if line is not KeplerLine.CONTAINER_COUNTERS:
        return False
    components = (container_selection or ContainerEnergySelection()).components
    return "total" in components or "gpu" in components


def _pod_energy_query(
    line: KeplerLine,
    window_seconds: float,
    matchers: list[str],
    container_selection: ContainerEnergySelection | None,
    pod_selection: PodEnergySelection | None,
) -> EnergyQuery:
    """`sum by (namespace, pod) (increase({matchers}[W]))` with the mode or state filter of the
    line's selection added to the matchers."""
    if line is KeplerLine.CONTAINER_COUNTERS:
        assert container_selection is not None
        if set(container_selection.modes) != set(CONTAINER_MODES):
            matchers = [*matchers, f'mode=~"{"|".join(container_selection.modes)}"']
        namespace_label, pod_label = "container_namespace", "pod_name"
    else:
        assert pod_selection is not None
        if pod_selection.states is not None:
            matchers = [*matchers, f'state=~"{"|".join(pod_selection.states)}"']
        namespace_label, pod_label = "pod_namespace", "pod_name"
    # Sum after increase(): each series' resets are corrected before series are added up.
    promql = (
        f"sum by ({namespace_label}, {pod_label}) "
        f"(increase({{{', '.join(matchers)}}}[{format_duration(window_seconds)}]))"
    )
    return EnergyQuery(
        line=line,
        promql=promql,
        window_seconds=window_seconds,
        namespace_label=namespace_label,
        pod_label=pod_label,
        matchers=tuple(matchers),
    )


def _check_choice(what: str, values: Sequence[str], allowed: Sequence[str] | None) -> None:
    if isinstance(values, str) or not values:
        raise ValueError(f"{what}s must be a non-empty tuple of names, got {values!r}")
    for value in values:
        # Plain names only: they are pasted into a PromQL regex matcher.
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"invalid Kepler {what} {value!r}: letters, digits, '_' and '-' only")
        if allowed is not None and value not in allowed:
            raise ValueError(f"unknown Kepler {what} {value!r}: choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate Kepler {what}s in {values!r}")


def _check_no_overlap(what: str, values: Sequence[str]) -> None:
    chosen = set(values)
    for outer, parts in _CONTAINED_IN.items():
        overlap = chosen & parts
        if outer in chosen and overlap:
            raise ValueError(
                f"Kepler {what}s overlap: {outer!r} already contains {', '.join(sorted(overlap))}; "
                "summing them would count the same energy twice"
            )
