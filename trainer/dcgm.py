"""GPU energy per pod per window for the labels step: from NVIDIA dcgm-exporter, or from Kepler's
own GPU series, one source only so no GPU joule is counted twice.

What dcgm-exporter exposes (etc/default-counters.csv, internal/pkg/rendermetrics of
github.com/NVIDIA/dcgm-exporter):

* `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, a counter of millijoules since the driver loaded (an
  integer; it restarts from zero when the driver reloads, which `increase()` handles);
* `DCGM_FI_DEV_POWER_USAGE`, a gauge of the board's power draw in watts.

Each series is labelled `gpu`, `UUID` (`uuid` with `--use-old-namespace`), `pci_bus_id`,
`device`, `modelName`, `Hostname` (`hostname` after release 4.5.3-4.8.2), `GPU_I_PROFILE` /
`GPU_I_ID` for MIG instances, label fields such as `DCGM_FI_DRIVER_VERSION`, and, in Kubernetes
mode, the `pod`, `namespace` and `container` the kubelet assigned the device to. Prometheus
then adds the exporter's target labels. The chart's ServiceMonitor scrapes with
`honorLabels: false`, so the workload's labels become `exported_pod` / `exported_namespace` and
`pod` / `namespace` name the exporter pod. A GPU that no pod holds has no pod labels of its own
and is attributed to no pod: with the renamed labels it lacks `exported_pod` (and its job
renames, so its `pod` is the exporter's); with `honorLabels: true` its `pod` is the exporter's
own, recognised from the `up` series of the same scrape job.

Energy per window W ending at t, per device series: the counter's `increase(...[W])` / 1000 (mJ
-> J). A device without the counter in the whole range (GPUs before Volta do not report it) falls
back to the gauge: `avg_over_time(...[W])` x W seconds, in windows holding two samples or more,
as for the counter. The fallback is per device, so one old GPU does not move a cluster to the
gauge, and a device with the counter never mixes in gauge estimates.

Sharing: a window's device energy goes to the pods its series label in that window. When
dcgm-exporter shares a GPU (time-slicing with virtual GPUs), every pod on it gets a copy of the
device's series; the window's device energy is then split evenly between those pods rather than
given whole to each. One pod after another on a GPU are different series, each counted in the
windows where it has samples; a window in which the labels change hands (no series with two
samples inside it) has no GPU row, as a pod's first partial window has none for the CPU.

Which source: `auto` takes dcgm-exporter when its series are in the range, else Kepler's GPU
counter of the line being read (`trainer.kepler.GPU_METRIC`). dcgm-exporter is preferred because
it reads the board's own energy counter and knows the device-to-pod assignment from the kubelet;
Kepler estimates a pod's GPU share from its processes. Whichever is chosen, the GPU energy that
Kepler <= 0.9 already counts inside `kepler_container_joules_total` is taken out of the CPU side
first (`trainer.kepler.selection_counts_gpu`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd

from trainer.kepler import GPU_METRIC, KeplerLine
from trainer.prometheus import EvaluationChunk, PrometheusClient, format_duration

ENERGY_METRIC = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, millijoules
POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"  # gauge, watts
MILLIJOULES_PER_JOULE = 1000.0

# Labels that name a device (the first present wins) and the series' pod.
_UUID_LABELS = ("UUID", "uuid")
_HOST_LABELS = ("Hostname", "hostname", "instance")
_GROUPING_LABELS = (
    *_UUID_LABELS,
    *_HOST_LABELS,
    "gpu",
    "job",
    "namespace",
    "pod",
    "exported_namespace",
    "exported_pod",
)


class GpuChoice(str, Enum):
    """The `--gpu` option: which GPU series the labels step adds to the CPU energy."""

    AUTO = "auto"
    DCGM = "dcgm"
    KEPLER = "kepler"
    OFF = "off"


class GpuSource(str, Enum):
    """The GPU source a labels run used; the value goes into its summary."""

    DCGM = "dcgm-exporter"
    KEPLER = "kepler"


@dataclass(frozen=True)
class GpuEnergy:
    """GPU energy rows: one per (window end, namespace, pod), joules."""

    window_end_seconds: np.ndarray
    namespaces: list[str]
    pods: list[str]
    energy_joules: np.ndarray
    power_gauge_joules: float  # the part integrated from the power gauge (dcgm-exporter only)

    @classmethod
    def empty(cls) -> GpuEnergy:
        return cls(np.zeros(0), [], [], np.zeros(0), 0.0)


def choose_gpu_source(
    client: PrometheusClient,
    choice: GpuChoice | str,
    line: KeplerLine,
    start_seconds: float,
    end_seconds: float,
) -> GpuSource | None:
    """The source to read (None: GPU reading off, or no GPU series in the range). An explicit
    choice whose series are absent is an error, not a silent zero."""
    wanted = GpuChoice(choice)
    if wanted is GpuChoice.OFF:
        return None
    kepler_metric = GPU_METRIC[line]
    names = "|".join((ENERGY_METRIC, POWER_METRIC, kepler_metric))
    present = set(client.label_values("__name__", [f'{{__name__=~"{names}"}}'], start_seconds, end_seconds))
    has_dcgm = bool(present & {ENERGY_METRIC, POWER_METRIC})
    has_kepler = kepler_metric in present
    if wanted is GpuChoice.DCGM and not has_dcgm:
        raise ValueError(
            f"--gpu dcgm: no {ENERGY_METRIC} or {POWER_METRIC} series in Prometheus at {client.base_url} "
            f"between {start_seconds:.0f} and {end_seconds:.0f}"
        )
    if wanted is GpuChoice.KEPLER and not has_kepler:
        raise ValueError(
            f"--gpu kepler: no {kepler_metric} series in Prometheus at {client.base_url} "
            f"between {start_seconds:.0f} and {end_seconds:.0f}"
        )
    if wanted is GpuChoice.KEPLER or (wanted is GpuChoice.AUTO and has_kepler and not has_dcgm):
        return GpuSource.KEPLER
    return GpuSource.DCGM if has_dcgm else None


def read_dcgm_energy(
    client: PrometheusClient,
    chunks: Sequence[EvaluationChunk],
    window_seconds: int,
) -> GpuEnergy:
    """Per-pod GPU energy per window from dcgm-exporter (see the module docstring), evaluated at
    the window ends of `chunks`."""
    window = format_duration(window_seconds)
    grouping = ", ".join(_GROUPING_LABELS)
    # max, not sum: a pod with two containers on one shared device has two copies of its series.
    counter_promql = f"max by ({grouping}) (increase({ENERGY_METRIC}[{window}])) / {MILLIJOULES_PER_JOULE:g}"
    gauge_promql = (
        f"max by ({grouping}) (avg_over_time({POWER_METRIC}[{window}])) * {window_seconds} "
        f"and max by ({grouping}) (count_over_time({POWER_METRIC}[{window}])) > 1"
    )
    counter = _device_pod_rows(client, counter_promql, chunks, window_seconds)
    gauge = _device_pod_rows(client, gauge_promql, chunks, window_seconds)
    if counter.empty and gauge.empty:
        return GpuEnergy.empty()
    gauge = gauge[~gauge["device"].isin(set(counter["device"]))]
    rows = pd.concat([counter.assign(from_gauge=False), gauge.assign(from_gauge=True)], ignore_index=True)

    exporter_pods = _exporter_pods(client, rows, chunks, window_seconds)
    renaming_jobs = set(rows.loc[rows["exported_pod"] != "", "job"])
    owner = [
        _workload_pod(row_labels, renaming_jobs, exporter_pods)
        for row_labels in rows[["job", "namespace", "pod", "exported_namespace", "exported_pod"]].itertuples(index=False)
    ]
    rows["owner_namespace"] = [o[0] if o else "" for o in owner]
    rows["owner_pod"] = [o[1] if o else "" for o in owner]
    rows = rows[rows["owner_pod"] != ""]
    if rows.empty:
        return GpuEnergy.empty()

    # One value per (window, device, pod), then the device's energy split among its pods.
    per_pod = rows.groupby(["window_end_seconds", "device", "owner_namespace", "owner_pod"], sort=False).agg(
        joules=("joules", "mean"), from_gauge=("from_gauge", "max")
    ).reset_index()
    per_device = per_pod.groupby(["window_end_seconds", "device"], sort=False)
    per_pod["joules"] = per_device["joules"].transform("mean") / per_device["joules"].transform("size")
    power_gauge_joules = float(per_pod.loc[per_pod["from_gauge"], "joules"].sum())
    totals = per_pod.groupby(["window_end_seconds", "owner_namespace", "owner_pod"], sort=False)["joules"].sum()
    return GpuEnergy(
        window_end_seconds=totals.index.get_level_values(0).to_numpy(dtype=np.float64),
        namespaces=totals.index.get_level_values(1).tolist(),
        pods=totals.index.get_level_values(2).tolist(),
        energy_joules=totals.to_numpy(dtype=np.float64),
        power_gauge_joules=power_gauge_joules,
    )


def _device_pod_rows(
    client: PrometheusClient, promql: str, chunks: Sequence[EvaluationChunk], window_seconds: int
) -> pd.DataFrame:
    """One row per finite point of the query: window end, device key, the pod labels, joules."""
    records: list[tuple[float, str, str, str, str, str, str, float]] = []
    for chunk in chunks:
        for series in client.range_query(promql, chunk.start_seconds, chunk.end_seconds, window_seconds):
            labels = series.labels
            device = _device_key(labels)
            pod_labels = (
                labels.get("job", ""),
                labels.get("namespace", ""),
                labels.get("pod", ""),
                labels.get("exported_namespace", ""),
                labels.get("exported_pod", ""),
            )
            records.extend((t, device, *pod_labels, v) for t, v in series.points if np.isfinite(v))
    return pd.DataFrame.from_records(
        records,
        columns=[
            "window_end_seconds", "device", "job", "namespace", "pod",
            "exported_namespace", "exported_pod", "joules",
        ],
    )


def _device_key(labels: Mapping[str, str]) -> str:
    """The GPU's UUID, or host and index when the UUID label was dropped. MIG instances of one
    GPU share its UUID: the board's energy is split between their pods."""
    for name in _UUID_LABELS:
        if labels.get(name):
            return labels[name]
    host = next((labels[name] for name in _HOST_LABELS if labels.get(name)), "")
    return f"{host}/gpu{labels.get('gpu', '')}"


def _workload_pod(
    labels: tuple[str, str, str, str, str],
    renaming_jobs: set[str],
    exporter_pods: set[tuple[str, str]],
) -> tuple[str, str] | None:
    """The (namespace, pod) a dcgm series labels, or None for a GPU that no pod holds."""
    job, namespace, pod, exported_namespace, exported_pod = labels
    if exported_pod:
        return (exported_namespace or namespace, exported_pod)
    if job in renaming_jobs or not pod or (namespace, pod) in exporter_pods:
        return None
    return (namespace, pod)


def _exporter_pods(
    client: PrometheusClient, rows: pd.DataFrame, chunks: Sequence[EvaluationChunk], window_seconds: int
) -> set[tuple[str, str]]:
    """(namespace, pod) of the dcgm-exporter pods themselves, from the `up` series of the scrape
    jobs the dcgm series came from (target labels: under honorLabels a GPU that no pod holds
    carries these)."""
    jobs = sorted(set(rows["job"]) - {""})
    if not jobs or not chunks:
        return set()
    matchers = [f'up{{job="{_escape_label_value(job)}"}}' for job in jobs]
    found = client.series(matchers, chunks[0].start_seconds - window_seconds, chunks[-1].end_seconds)
    return {(labels["namespace"], labels["pod"]) for labels in found if labels.get("namespace") and labels.get("pod")}


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
