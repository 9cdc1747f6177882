"""dcgm-exporter and Kepler GPU series for the labels step's real-Prometheus tests, with the
per-pod energy per window they encode.

dcgm-exporter's side is written the way it really arrives: each scrape is a /metrics body in
dcgm-exporter's exposition format (its HELP and TYPE lines, `gpu`, `UUID`, `pci_bus_id`,
`device`, `modelName`, `Hostname`, the `DCGM_FI_DRIVER_VERSION` label field, then the
Kubernetes `container`, `namespace`, `pod` attributes; power as `%f` watts, energy as `%d`
millijoules), and `scrape()` then does what Prometheus does to it: the target labels are added,
and without honor_labels the clashing `namespace`/`pod`/`container` become `exported_*`. The
result goes to promtool as OpenMetrics with the scrape timestamps.

Two datasets in disjoint time ranges:

* `dcgm_dataset`: Kepler 0.10 CPU counters, kube-state-metrics owners, and dcgm-exporter on two
  nodes. Node gpu-a (energy counter and power gauge, 30 s scrapes on the window grid, scraped
  with honorLabels false): GPU 0 runs train-a, is idle one scrape, then runs train-b (one pod
  after another); GPU 1 is time-sliced, infer-x throughout and infer-y for a third of the hour
  (both labelled at once); GPU 2 runs render-0, which has no Kepler CPU series. The driver on
  gpu-a reloads once (every energy counter restarts from zero). Node gpu-b (an older GPU with the
  power gauge only, 20 s scrapes 10 s off the grid, the `hostname` label of dcgm-exporter after 4.5.3-4.8.2,
  scraped with honorLabels true): GPU 3 runs notebook-0, GPU 4 is held by no pod. Kepler's own
  `kepler_pod_gpu_joules_total` is there too for train-a and infer-x (the both-sources case).
* `kepler_07_gpu_dataset`: Kepler 0.7 `kepler_container_joules_total` (which includes Kepler's
  GPU estimate), `kepler_container_gpu_joules_total`, and dcgm-exporter's counter for one pod.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tests.trainer.kepler_datasets import (
    KEPLER_TARGET_LABELS,
    WINDOW_SECONDS,
    OpenMetricsWriter,
    _ksm_labels,
    _owner_labels,
    counter_values,
)

DCGM_HELP = {
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", "Total energy consumption since boot (in mJ)."),
}
DRIVER_VERSION = "550.54.15"
NODE_A_TARGET = {
    "container": "nvidia-dcgm-exporter",
    "endpoint": "gpu-metrics",
    "instance": "10.0.3.11:9400",
    "job": "nvidia-dcgm-exporter",
    "namespace": "gpu-operator",
    "pod": "nvidia-dcgm-exporter-4xk2p",
    "service": "nvidia-dcgm-exporter",
}
NODE_B_TARGET = {
    "container": "dcgm-exporter",
    "endpoint": "metrics",
    "instance": "10.0.4.12:9400",
    "job": "dcgm-exporter",
    "namespace": "monitoring",
    "pod": "dcgm-exporter-9qzrt",
    "service": "dcgm-exporter",
}
_SAMPLE_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")
_LABEL_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    pci_bus_id: str
    model: str
    host: str
    host_label: str = "Hostname"  # "hostname" in dcgm-exporter after 4.5.3-4.8.2


@dataclass(frozen=True)
class PodOnGpu:
    namespace: str
    pod: str
    container: str


def dcgm_line(metric: str, gpu: Gpu, pod: PodOnGpu | None, value: str) -> str:
    """One sample line exactly as dcgm-exporter's gpuMetricsFormat template renders it."""
    labels = (
        f'gpu="{gpu.index}",UUID="{gpu.uuid}",pci_bus_id="{gpu.pci_bus_id}",device="nvidia{gpu.index}",'
        f'modelName="{gpu.model}",{gpu.host_label}="{gpu.host}",DCGM_FI_DRIVER_VERSION="{DRIVER_VERSION}"'
    )
    if pod is not None:  # Go templates range over maps in key order: container, namespace, pod
        labels += f',container="{pod.container}",namespace="{pod.namespace}",pod="{pod.pod}"'
    return f"{metric}{{{labels}}} {value}"


def dcgm_body(lines_by_metric: Mapping[str, Sequence[str]]) -> str:
    """A /metrics body: per family its HELP and TYPE lines, then its samples."""
    out: list[str] = []
    for metric, lines in lines_by_metric.items():
        kind, help_text = DCGM_HELP[metric]
        out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", *lines]
    return "\n".join(out) + "\n"


@dataclass
class ScrapedStore:
    """What Prometheus stores from scrapes: per family, series label sets with timestamped values."""

    help_lines: dict[str, tuple[str, str]] = field(default_factory=dict)
    series: dict[str, dict[tuple[tuple[str, str], ...], list[tuple[int, str]]]] = field(default_factory=dict)

    def scrape(self, body: str, timestamp: int, target: Mapping[str, str], honor_labels: bool) -> None:
        """Add one scrape of `body` at `timestamp` from a target with these labels."""
        for line in body.splitlines():
            if line.startswith("# HELP "):
                _, _, metric, help_text = line.split(" ", 3)
                self.help_lines.setdefault(metric, (DCGM_HELP[metric][0], help_text))
                continue
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE_LINE.match(line)
            assert match, line
            labels = dict(_LABEL_PAIR.findall(match["labels"]))
            for name, value in target.items():
                if name in labels and not honor_labels:
                    labels[f"exported_{name}"] = labels[name]
                    labels[name] = value
                elif name not in labels:
                    labels[name] = value
            key = tuple(sorted(labels.items()))
            self.series.setdefault(match["name"], {}).setdefault(key, []).append((timestamp, match["value"]))
        up = tuple(sorted(target.items()))
        self.series.setdefault("up", {}).setdefault(up, []).append((timestamp, "1"))

    def openmetrics(self) -> str:
        lines: list[str] = []
        for metric, series in self.series.items():
            kind, help_text = self.help_lines.get(metric, ("gauge", "1 if the target was scraped."))
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            for labels, points in series.items():
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines += [f"{metric}{{{text}}} {value} {t}" for t, value in sorted(points)]
        return "\n".join(lines) + "\n# EOF\n"


@dataclass(frozen=True)
class GpuDataset:
    name: str
    openmetrics: tuple[str, ...]  # one promtool backfill each
    start_seconds: float
    end_seconds: float
    cpu: pd.DataFrame  # window_start_seconds, namespace, pod, joules (the Kepler CPU side as selected)
    dcgm: pd.DataFrame  # window_start_seconds, namespace, pod, joules (dcgm-exporter, shared GPUs split)
    kepler_gpu: pd.DataFrame  # window_start_seconds, namespace, pod, joules (Kepler's GPU counter)
    owners: dict[str, tuple[str, str]]  # pod -> (workload kind, name)
    reset_window_start_seconds: float = math.nan


def window_energy(
    points: Sequence[tuple[int, float]], grid: np.ndarray, kind: str, millijoules: bool
) -> dict[float, float]:
    """Energy per window [g, g+W] from one series' samples, by window start: counter increases
    (a drop is a restart: the new value is the energy since) or the gauge's mean x W. Windows
    with fewer than two samples have none, as in Prometheus."""
    times = np.array([t for t, _ in points], dtype=np.float64)
    values = np.array([v for _, v in points], dtype=np.float64)
    out: dict[float, float] = {}
    for start in grid[:-1]:
        inside = (times >= start) & (times <= start + WINDOW_SECONDS)
        if inside.sum() < 2:
            continue
        v = values[inside]
        if kind == "counter":
            steps = np.diff(v)
            energy = float(np.where(steps >= 0, steps, v[1:]).sum())
            out[float(start)] = energy / 1000.0 if millijoules else energy
        else:
            out[float(start)] = float(v.mean()) * WINDOW_SECONDS
    return out


def split_shared(per_series: Iterable[tuple[str, str, str, dict[float, float]]]) -> pd.DataFrame:
    """(device, namespace, pod, energy by window) -> per (window, pod) energy, each window's
    device energy split evenly among the pods labelled on it."""
    rows = [
        (start, device, namespace, pod, joules)
        for device, namespace, pod, energy in per_series
        for start, joules in energy.items()
    ]
    frame = pd.DataFrame(rows, columns=["window_start_seconds", "device", "namespace", "pod", "joules"])
    per_device = frame.groupby(["window_start_seconds", "device"])["joules"]
    frame["joules"] = per_device.transform("mean") / per_device.transform("size")
    return frame.groupby(["window_start_seconds", "namespace", "pod"], as_index=False)["joules"].sum()


def _grid(last_sample_before_seconds: float, windows: int) -> np.ndarray:
    last = math.floor(last_sample_before_seconds / WINDOW_SECONDS) * WINDOW_SECONDS
    return last - WINDOW_SECONDS * np.arange(windows, -1, -1, dtype="int64")


# -- dcgm-exporter with Kepler 0.10 --------------------------------------------------------------

DCGM_WINDOWS = 60
GPU_A0 = Gpu(0, "GPU-5fd4c0b2-0e1f-4a3c-9b7d-1c2e3f4a5b60", "00000000:17:00.0", "NVIDIA A100-SXM4-80GB", "gpu-a")
GPU_A1 = Gpu(1, "GPU-5fd4c0b2-0e1f-4a3c-9b7d-1c2e3f4a5b61", "00000000:31:00.0", "NVIDIA A100-SXM4-80GB", "gpu-a")
GPU_A2 = Gpu(2, "GPU-5fd4c0b2-0e1f-4a3c-9b7d-1c2e3f4a5b62", "00000000:B1:00.0", "NVIDIA A100-SXM4-80GB", "gpu-a")
GPU_B3 = Gpu(0, "GPU-8a7b6c5d-4e3f-4a1b-8c9d-0e1f2a3b4c53", "00000000:3B:00.0", "Tesla P100-PCIE-16GB", "gpu-b", "hostname")
GPU_B4 = Gpu(1, "GPU-8a7b6c5d-4e3f-4a1b-8c9d-0e1f2a3b4c54", "00000000:86:00.0", "Tesla P100-PCIE-16GB", "gpu-b", "hostname")
TRAIN_A = PodOnGpu("ml", "train-a-7x9kq", "trainer")
TRAIN_B = PodOnGpu("ml", "train-b-2m4pw", "trainer")
INFER_X = PodOnGpu("serving", "infer-6c8d7f9b5-x4k2j", "vllm")
INFER_Y = PodOnGpu("serving", "infer-6c8d7f9b5-y7p3n", "vllm")
RENDER = PodOnGpu("batch", "render-0", "render")
NOTEBOOK = PodOnGpu("ml", "notebook-0", "jupyter")
WEB = PodOnGpu("shop", "web-5f7d8c9b6d-abcde", "web")  # CPU only
DRIVER_RELOAD_INDEX = 45  # gpu-a's driver reloads just before the scrape at grid[45]


def _on_gpu_a(scrape_index: int) -> dict[Gpu, list[PodOnGpu]]:
    """Who holds each gpu-a device at a 30 s scrape (index 2k is grid point k)."""
    step = scrape_index / 2
    gpu0 = [TRAIN_A] if step <= 30 else ([] if step < 31 else [TRAIN_B])
    gpu1 = [INFER_X, INFER_Y] if 20 <= step <= 40 else [INFER_X]
    gpu2 = [RENDER] if 10 <= step <= 50 else []
    return {GPU_A0: gpu0, GPU_A1: gpu1, GPU_A2: gpu2}


def dcgm_dataset(last_sample_before_seconds: float) -> GpuDataset:
    grid = _grid(last_sample_before_seconds, DCGM_WINDOWS)
    rng = np.random.default_rng(20251031)
    store = ScrapedStore()

    # gpu-a: integer millijoule counters per device, 30 s scrapes on the grid.
    scrape_times_a = grid[0] + 30 * np.arange(2 * DCGM_WINDOWS + 1)
    reload_scrape = 2 * DRIVER_RELOAD_INDEX
    counters: dict[Gpu, np.ndarray] = {}
    for number, gpu in enumerate((GPU_A0, GPU_A1, GPU_A2)):
        step_mj = rng.integers(1_500_000, 12_000_000, len(scrape_times_a)).astype(np.float64)  # 50-400 W
        counters[gpu] = counter_values(step_mj, 7.0e11 + 1.0e9 * number, reload_scrape).astype(np.int64)
    for i, t in enumerate(scrape_times_a):
        holders = _on_gpu_a(i)
        lines: dict[str, list[str]] = {"DCGM_FI_DEV_POWER_USAGE": [], "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": []}
        for gpu, pods in holders.items():
            watts = rng.uniform(60.0, 400.0)  # an instantaneous reading, not the counter's average
            for pod in pods or [None]:
                lines["DCGM_FI_DEV_POWER_USAGE"].append(dcgm_line("DCGM_FI_DEV_POWER_USAGE", gpu, pod, f"{watts:f}"))
                lines["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].append(
                    dcgm_line("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu, pod, f"{counters[gpu][i]:d}")
                )
        store.scrape(dcgm_body(lines), int(t), NODE_A_TARGET, honor_labels=False)

    # gpu-b: the power gauge only, 20 s scrapes 10 s after each grid point.
    scrape_times_b = np.array([g + offset for g in grid[:-1] for offset in (10, 30, 50)])
    for t in scrape_times_b:
        lines = {
            "DCGM_FI_DEV_POWER_USAGE": [
                dcgm_line("DCGM_FI_DEV_POWER_USAGE", GPU_B3, NOTEBOOK, f"{rng.uniform(30.0, 250.0):f}"),
                dcgm_line("DCGM_FI_DEV_POWER_USAGE", GPU_B4, None, f"{rng.uniform(25.0, 30.0):f}"),
            ]
        }
        store.scrape(dcgm_body(lines), int(t), NODE_B_TARGET, honor_labels=True)

    dcgm_expected = split_shared(_expected_dcgm_series(store, grid))

    # Kepler 0.10 CPU (package zone) for every pod but render-0, and Kepler's GPU for two pods.
    writer = OpenMetricsWriter()
    cpu_parts: list[pd.DataFrame] = []
    kepler_gpu_parts: list[pd.DataFrame] = []
    spans = {TRAIN_A: (0, 30), TRAIN_B: (31, 60), INFER_X: (0, 60), INFER_Y: (20, 40), NOTEBOOK: (0, 60), WEB: (0, 60)}
    for number, (pod, (first, last)) in enumerate(spans.items()):
        steps = np.arange(first, last + 1)
        labels = {"node_name": "gpu-b" if pod is NOTEBOOK else "gpu-a", "pod_id": f"0000-{number}",
                  "pod_name": pod.pod, "pod_namespace": pod.namespace, **KEPLER_TARGET_LABELS}
        cpu_joules = np.round(rng.uniform(1.0, 40.0, len(steps)), 3)
        values = counter_values(cpu_joules, 900.0 + number, None)
        writer.add("kepler_pod_cpu_joules", "counter", {**labels, "zone": "package", "state": "running"},
                   zip(grid[steps].tolist(), values.tolist()))
        cpu_parts.append(_per_window(grid[steps[1:]] - WINDOW_SECONDS, pod, cpu_joules[1:]))
        if pod in (TRAIN_A, INFER_X):
            gpu_joules = np.round(rng.uniform(100.0, 9000.0, len(steps)), 3)
            writer.add("kepler_pod_gpu_joules", "counter", {**labels, "state": "running"},
                       zip(grid[steps].tolist(), counter_values(gpu_joules, 50.0, None).tolist()))
            kepler_gpu_parts.append(_per_window(grid[steps[1:]] - WINDOW_SECONDS, pod, gpu_joules[1:]))
    owners = {
        TRAIN_A.pod: ("Job", "train-a"),
        TRAIN_B.pod: ("Job", "train-b"),
        INFER_X.pod: ("Deployment", "infer"),
        INFER_Y.pod: ("Deployment", "infer"),
        RENDER.pod: ("StatefulSet", "render"),
        NOTEBOOK.pod: ("StatefulSet", "notebook"),
        WEB.pod: ("Deployment", "web"),
    }
    _add_owner_series(writer, grid, owners)
    return GpuDataset(
        name="dcgm",
        openmetrics=(writer.render(), store.openmetrics()),
        start_seconds=float(grid[0]),
        end_seconds=float(grid[-1]),
        cpu=pd.concat(cpu_parts, ignore_index=True),
        dcgm=dcgm_expected,
        kepler_gpu=pd.concat(kepler_gpu_parts, ignore_index=True),
        owners=owners,
        reset_window_start_seconds=float(grid[DRIVER_RELOAD_INDEX - 1]),
    )


def _expected_dcgm_series(store: ScrapedStore, grid: np.ndarray) -> list[tuple[str, str, str, dict[float, float]]]:
    """Per stored dcgm series that names a workload pod: its energy by window. gpu-a has the
    counter, so its gauge is not used; gpu-b has only the gauge."""
    out: list[tuple[str, str, str, dict[float, float]]] = []
    for metric, kind in (("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter"), ("DCGM_FI_DEV_POWER_USAGE", "gauge")):
        for key, points in store.series.get(metric, {}).items():
            labels = dict(key)
            if kind == "gauge" and labels["UUID"] in (GPU_A0.uuid, GPU_A1.uuid, GPU_A2.uuid):
                continue
            namespace = labels.get("exported_namespace", labels["namespace"])
            pod = labels.get("exported_pod", labels["pod"])
            if pod in (NODE_A_TARGET["pod"], NODE_B_TARGET["pod"]):
                continue  # a GPU that no pod holds
            energy = window_energy([(t, float(v)) for t, v in points], grid, kind, millijoules=kind == "counter")
            out.append((labels["UUID"], namespace, pod, energy))
    return out


def _per_window(window_starts: np.ndarray, pod: PodOnGpu, joules: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {"window_start_seconds": window_starts.astype("float64"), "namespace": pod.namespace, "pod": pod.pod,
         "joules": joules}
    )


def _add_owner_series(writer: OpenMetricsWriter, grid: np.ndarray, owners: Mapping[str, tuple[str, str]]) -> None:
    """kube_pod_owner with the pod's direct owner (ReplicaSet for Deployments, with its
    kube_replicaset_owner), scraped with honor_labels."""
    ones = [(int(t), 1.0) for t in grid]
    namespaces = {TRAIN_A.pod: "ml", TRAIN_B.pod: "ml", INFER_X.pod: "serving", INFER_Y.pod: "serving",
                  RENDER.pod: "batch", NOTEBOOK.pod: "ml", WEB.pod: "shop", "vllm-0": "llm"}
    written: set[str] = set()
    for pod, (kind, name) in owners.items():
        namespace = namespaces[pod]
        if kind == "Deployment":
            replicaset = pod.rsplit("-", 1)[0]
            writer.add("kube_pod_owner", "gauge", _ksm_labels(namespace, _owner_labels("ReplicaSet", replicaset), True, pod), ones)
            if replicaset not in written:
                written.add(replicaset)
                extra = {"replicaset": replicaset, **_owner_labels("Deployment", name)}
                writer.add("kube_replicaset_owner", "gauge", _ksm_labels(namespace, extra, True), ones)
        else:
            writer.add("kube_pod_owner", "gauge", _ksm_labels(namespace, _owner_labels(kind, name), True, pod), ones)


# -- Kepler 0.7 with its GPU counter, and dcgm-exporter --------------------------------------------

KEPLER_07_WINDOWS = 30
VLLM = PodOnGpu("llm", "vllm-0", "vllm")
GPU_C0 = Gpu(0, "GPU-0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5", "00000000:18:00.0", "NVIDIA H100 80GB HBM3", "gpu-c")


def kepler_07_gpu_dataset(last_sample_before_seconds: float) -> GpuDataset:
    grid = _grid(last_sample_before_seconds, KEPLER_07_WINDOWS)
    rng = np.random.default_rng(20251101)
    writer = OpenMetricsWriter()
    labels = {"container_id": "f" * 64, "container_name": VLLM.container, "container_namespace": VLLM.namespace,
              "pod_name": VLLM.pod, **KEPLER_TARGET_LABELS}
    cpu_total = np.zeros(len(grid))
    gpu_total = np.zeros(len(grid))
    for number, mode in enumerate(("dynamic", "idle")):
        cpu = np.round(rng.uniform(5.0, 50.0, len(grid)), 3)
        gpu = np.round(rng.uniform(500.0, 20000.0, len(grid)), 3)
        # kepler_container_joules_total = package + dram + other + GPU, per mode.
        writer.add("kepler_container_joules", "counter", {**labels, "mode": mode},
                   zip(grid.tolist(), counter_values(cpu + gpu, 4000.0 + number, None).tolist()))
        writer.add("kepler_container_gpu_joules", "counter", {**labels, "mode": mode},
                   zip(grid.tolist(), counter_values(gpu, 3000.0 + number, None).tolist()))
        cpu_total += cpu
        gpu_total += gpu
    owners = {VLLM.pod: ("StatefulSet", "vllm")}
    _add_owner_series(writer, grid, owners)

    store = ScrapedStore()
    scrape_times = grid[0] + 30 * np.arange(2 * KEPLER_07_WINDOWS + 1)
    counter = counter_values(rng.integers(6_000_000, 21_000_000, len(scrape_times)).astype(np.float64), 9.0e11, None)
    for t, value in zip(scrape_times, counter.astype(np.int64)):
        body = dcgm_body({"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": [
            dcgm_line("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", GPU_C0, VLLM, f"{value:d}")]})
        store.scrape(body, int(t), NODE_A_TARGET, honor_labels=False)
    starts = grid[:-1]
    return GpuDataset(
        name="kepler-0.7-gpu",
        openmetrics=(writer.render(), store.openmetrics()),
        start_seconds=float(grid[0]),
        end_seconds=float(grid[-1]),
        cpu=_per_window(starts, VLLM, cpu_total[1:]),
        dcgm=split_shared(_expected_dcgm_series(store, grid)),
        kepler_gpu=_per_window(starts, VLLM, gpu_total[1:]),
        owners=owners,
    )
