"""Kepler and kube-state-metrics series for the real-Prometheus tests, as OpenMetrics text, with
the per-pod energy per window each dataset was built from (the answer the trainer must recover).

* `seed_container_dataset`: the project's real measurements (shared/data/seed-kepler, read at
  test time, never copied) turned back into Kepler 0.7-style counters.
* `synthetic_pod_dataset`: a small Kepler 0.10-style dataset (zones, states, pod ids).

Both put every counter sample exactly on the window grid and restart Kepler once (all counters of
a node drop and count again from the restart), so the expected energy per window is known
exactly: the step energy each counter was built from.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.kepler_counters import counter_values

WINDOW_SECONDS = 60
REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_LABELS_PATH = REPO_ROOT.parent / "shared" / "data" / "seed-kepler" / "kepler_labels_6h.parquet"

# Prometheus target labels of the Kepler exporter pod: present on every Kepler series, and never
# to be taken for the workload's namespace or pod.
KEPLER_TARGET_LABELS = {
    "namespace": "kepler",
    "pod": "kepler-exporter-7x2lq",
    "container": "kepler-exporter",
    "instance": "192.0.2.10:9102",
    "job": "kepler",
}
KSM_TARGET_LABELS = {
    "instance": "192.0.2.20:8080",
    "job": "kube-state-metrics",
    "container": "kube-state-metrics",
}
KSM_OWN_NAMESPACE = "monitoring"
KSM_OWN_POD = "kube-state-metrics-6d4f8b7c9-q2wzn"
KSM_NO_OWNER = "<none>"


# -- OpenMetrics text -------------------------------------------------------------------------


@dataclass
class OpenMetricsWriter:
    """Collects series per metric family and renders OpenMetrics text for promtool."""

    families: dict[str, tuple[str, list[tuple[dict[str, str], list[tuple[int, float]]]]]] = field(
        default_factory=dict
    )

    def add(self, family: str, kind: str, labels: Mapping[str, str], samples: Iterable[tuple[int, float]]) -> None:
        known_kind, series = self.families.setdefault(family, (kind, []))
        assert known_kind == kind, f"{family} declared as {known_kind} and {kind}"
        series.append((dict(labels), list(samples)))

    def render(self) -> str:
        lines: list[str] = []
        for family, (kind, series_list) in self.families.items():
            lines.append(f"# TYPE {family} {kind}")
            sample_name = f"{family}_total" if kind == "counter" else family
            for labels, samples in series_list:
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                for timestamp, value in samples:
                    # repr() round-trips a float exactly through the Go parser.
                    lines.append(f"{sample_name}{{{label_text}}} {value!r} {timestamp}")
        lines.append("# EOF")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _stable_hex(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class BackfillDataset:
    """OpenMetrics text plus the per-pod energy per window it encodes."""

    name: str
    openmetrics: str
    start_seconds: float  # start of the first window
    end_seconds: float  # end of the last window
    window_seconds: int
    expected: pd.DataFrame  # window_start_seconds, namespace, pod, workload_kind, workload_name, ...
    restart_window_start_seconds: float


# -- the seed measurements as Kepler 0.7 counters ------------------------------------------------

# How the seed's per-step energy is spread over each pod's four counters: two containers, each in
# dynamic and idle mode. The trainer must add them back up.
_CONTAINER_MODE_SHARES = (("main", "dynamic", 0.60), ("main", "idle", 0.20), ("sidecar", "dynamic", 0.15))
_LAST_SHARE = ("sidecar", "idle")  # gets what is left, so the four add up to the step energy
_PSEUDO_PODS = {"kernel_processes", "system_processes"}  # Kepler's own pseudo pods: no KSM series


def seed_container_dataset(seed_path: Path, last_sample_before_seconds: float) -> BackfillDataset:
    """The seed measurements as Kepler 0.7 counters, shifted so their last sample is the latest
    grid point before `last_sample_before_seconds`, with matching kube-state-metrics series."""
    seed = pd.read_parquet(seed_path)
    # Shift by whole minutes: the samples stay on their 60 s grid.
    shift_seconds = math.floor((last_sample_before_seconds - seed["ts"].max()) / WINDOW_SECONDS) * WINDOW_SECONDS
    grid = np.sort(seed["ts"].unique()) + shift_seconds
    assert np.all(np.diff(grid) == WINDOW_SECONDS), "seed samples are not on a 60 s grid"
    restart_index = len(grid) // 2 + 7

    writer = OpenMetricsWriter()
    expected_parts: list[pd.DataFrame] = []
    replicasets_written: set[tuple[str, str]] = set()
    jobs_written: set[tuple[str, str]] = set()
    pods = seed.groupby(["namespace", "pod", "workload_kind", "workload_name"], sort=True)
    for pod_index, ((namespace, pod, kind, workload), rows) in enumerate(pods):
        rows = rows.sort_values("ts")
        timestamps = (rows["ts"].to_numpy() + shift_seconds).astype("int64")
        assert np.array_equal(timestamps, grid), f"{namespace}/{pod} misses grid points"
        step_joules = rows["energy_step_j"].to_numpy(dtype=np.float64)
        # The seed's first step has no energy (no earlier sample); every other step has one.
        assert math.isnan(step_joules[0]) and not np.isnan(step_joules[1:]).any()
        step_joules = np.nan_to_num(step_joules, nan=0.0)

        shares: dict[tuple[str, str], np.ndarray] = {}
        for container, mode, share in _CONTAINER_MODE_SHARES:
            shares[(container, mode)] = step_joules * share
        shares[_LAST_SHARE] = step_joules - sum(shares.values())
        for series_index, ((container, mode), steps) in enumerate(shares.items()):
            values = counter_values(steps, base_joules=5000.0 + 100.0 * pod_index + series_index, restart_index=restart_index)
            labels = {
                "container_id": _stable_hex(namespace, pod, container, length=64),
                "container_name": container,
                "container_namespace": namespace,
                "mode": mode,
                "pod_name": pod,
                **KEPLER_TARGET_LABELS,
            }
            writer.add("kepler_container_joules", "counter", labels, zip(timestamps.tolist(), values.tolist()))

        _add_seed_owner_series(
            writer, namespace, pod, kind, workload, timestamps, pod_index, replicasets_written, jobs_written
        )
        expected_parts.append(
            pd.DataFrame(
                {
                    "window_start_seconds": timestamps[:-1].astype("float64"),
                    "namespace": namespace,
                    "pod": pod,
                    "workload_kind": kind,
                    "workload_name": workload,
                    "energy_joules": step_joules[1:],
                    "dynamic_joules": (shares[("main", "dynamic")] + shares[("sidecar", "dynamic")])[1:],
                }
            )
        )
    return BackfillDataset(
        name="seed-kepler-0.7",
        openmetrics=writer.render(),
        start_seconds=float(grid[0]),
        end_seconds=float(grid[-1]),
        window_seconds=WINDOW_SECONDS,
        expected=pd.concat(expected_parts, ignore_index=True),
        restart_window_start_seconds=float(grid[restart_index - 1]),
    )


def _ksm_labels(namespace: str, extra: Mapping[str, str], honor_labels: bool, pod: str | None = None) -> dict[str, str]:
    """kube-state-metrics labels as Prometheus stores them: with honor_labels the object's
    namespace/pod stay; without, they become exported_* and namespace/pod name the KSM pod."""
    labels = dict(KSM_TARGET_LABELS)
    if honor_labels:
        labels["namespace"] = namespace
        if pod is not None:
            labels["pod"] = pod
    else:
        labels.update(namespace=KSM_OWN_NAMESPACE, pod=KSM_OWN_POD, exported_namespace=namespace)
        if pod is not None:
            labels["exported_pod"] = pod
    labels.update(extra)
    return labels


def _owner_labels(kind: str, name: str) -> dict[str, str]:
    return {"owner_kind": kind, "owner_name": name, "owner_is_controller": "true" if kind != KSM_NO_OWNER else "false"}


def _add_seed_owner_series(
    writer: OpenMetricsWriter,
    namespace: str,
    pod: str,
    kind: str,
    workload: str,
    timestamps: np.ndarray,
    pod_index: int,
    replicasets_written: set[tuple[str, str]],
    jobs_written: set[tuple[str, str]],
) -> None:
    honor = pod_index % 2 == 0
    ones = [(int(t), 1.0) for t in timestamps]
    if kind == "Pod":
        if pod not in _PSEUDO_PODS:  # a bare pod: KSM knows it, with no owner
            writer.add("kube_pod_owner", "gauge", _ksm_labels(namespace, _owner_labels(KSM_NO_OWNER, KSM_NO_OWNER), honor, pod), ones)
        return
    if kind == "Deployment":
        # The test knows the ReplicaSet's name from the pod's; the trainer must not guess it.
        replicaset = pod.rsplit("-", 1)[0]
        writer.add("kube_pod_owner", "gauge", _ksm_labels(namespace, _owner_labels("ReplicaSet", replicaset), honor, pod), ones)
        if (namespace, replicaset) not in replicasets_written:
            replicasets_written.add((namespace, replicaset))
            extra = {"replicaset": replicaset, **_owner_labels("Deployment", workload)}
            writer.add("kube_replicaset_owner", "gauge", _ksm_labels(namespace, extra, honor), ones)
        return
    if kind == "Job":
        writer.add("kube_pod_owner", "gauge", _ksm_labels(namespace, _owner_labels("Job", workload), honor, pod), ones)
        if (namespace, workload) not in jobs_written:
            jobs_written.add((namespace, workload))
            extra = {"job_name": workload, **_owner_labels(KSM_NO_OWNER, KSM_NO_OWNER)}
            writer.add("kube_job_owner", "gauge", _ksm_labels(namespace, extra, honor), ones)
        return
    # DaemonSet, StatefulSet, Node (static pods): the pod's owner is the workload.
    writer.add("kube_pod_owner", "gauge", _ksm_labels(namespace, _owner_labels(kind, workload), honor, pod), ones)


# -- a small Kepler 0.10 dataset ---------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticPod:
    namespace: str
    pod: str
    node: str
    workload_kind: str
    workload_name: str
    first_step: int  # first grid index with a running sample
    last_step: int  # last grid index with a running sample
    terminated_steps: tuple[int, ...] = ()  # grid indexes with a state="terminated" sample
    owner_chain: tuple[tuple[str, str], ...] = ()  # (kind, name) from the pod's owner upwards


SYNTHETIC_STEPS = 121  # two hours of 60 s samples
SYNTHETIC_RESTART_INDEX = 40  # Kepler restarts on worker-a
NODE_ZONES = {"worker-a": ("package", "core", "dram"), "worker-b": ("package", "core")}  # no dram on b
SYNTHETIC_PODS = (
    SyntheticPod("shop", "web-5f7d8c9b6d-abcde", "worker-a", "Deployment", "web", 0, 120,
                 owner_chain=(("ReplicaSet", "web-5f7d8c9b6d"), ("Deployment", "web"))),
    SyntheticPod("batch", "nightly-report-28930000-xk2p9", "worker-a", "CronJob", "nightly-report", 10, 70,
                 owner_chain=(("Job", "nightly-report-28930000"), ("CronJob", "nightly-report"))),
    SyntheticPod("default", "debug-shell", "worker-b", "Pod", "debug-shell", 0, 120),
    SyntheticPod("db", "pg-0", "worker-a", "StatefulSet", "pg", 0, 90, terminated_steps=(91, 92, 93),
                 owner_chain=(("StatefulSet", "pg"),)),
)


def synthetic_pod_dataset(last_sample_before_seconds: float) -> BackfillDataset:
    """Kepler 0.10 `kepler_pod_cpu_joules_total` for `SYNTHETIC_PODS`, with their owner series.

    Expected columns besides the identity: package_joules, core_joules, dram_joules (per window,
    running series only) and terminated (True for the zero-energy windows that exist only when
    terminated series are read too).
    """
    last = math.floor(last_sample_before_seconds / WINDOW_SECONDS) * WINDOW_SECONDS
    grid = last - WINDOW_SECONDS * np.arange(SYNTHETIC_STEPS - 1, -1, -1, dtype="int64")
    rng = np.random.default_rng(20251030)
    writer = OpenMetricsWriter()
    expected_parts: list[pd.DataFrame] = []
    for pod_index, spec in enumerate(SYNTHETIC_PODS):
        steps = np.arange(spec.first_step, spec.last_step + 1)
        zones = NODE_ZONES[spec.node]
        package = np.round(rng.uniform(0.5, 30.0, len(steps)), 3)
        step_joules = {
            "package": package,
            "core": np.round(package * 0.7, 3),  # core is part of package: never to be added to it
            "dram": np.round(rng.uniform(0.1, 5.0, len(steps)), 3),
        }
        restart = SYNTHETIC_RESTART_INDEX - spec.first_step if spec.node == "worker-a" else None
        if restart is not None and not 0 < restart < len(steps):
            restart = None
        pod_id = f"{_stable_hex(spec.namespace, spec.pod, length=8)}-0000-4000-8000-{_stable_hex(spec.pod, length=12)}"
        for zone_index, zone in enumerate(zones):
            values = counter_values(step_joules[zone], base_joules=800.0 + 50.0 * pod_index + zone_index, restart_index=restart)
            labels = {
                "node_name": spec.node,
                "pod_id": pod_id,
                "pod_name": spec.pod,
                "pod_namespace": spec.namespace,
                "zone": zone,
                **KEPLER_TARGET_LABELS,
            }
            running = zip(grid[steps].tolist(), values.tolist())
            writer.add("kepler_pod_cpu_joules", "counter", {**labels, "state": "running"}, running)
            if spec.terminated_steps:
                final = float(values[-1])
                terminated = [(int(grid[i]), final) for i in spec.terminated_steps]
                writer.add("kepler_pod_cpu_joules", "counter", {**labels, "state": "terminated"}, terminated)
        _add_synthetic_owner_series(writer, spec, grid, honor=pod_index % 2 == 1)

        window_steps = steps[1:]
        frame = pd.DataFrame(
            {
                "window_start_seconds": (grid[window_steps] - WINDOW_SECONDS).astype("float64"),
                "namespace": spec.namespace,
                "pod": spec.pod,
                "workload_kind": spec.workload_kind,
                "workload_name": spec.workload_name,
                "package_joules": step_joules["package"][1:],
                "core_joules": step_joules["core"][1:],
                "dram_joules": step_joules["dram"][1:] if "dram" in zones else 0.0,
                "terminated": False,
            }
        )
        # A terminated series repeating its final value adds zero-energy windows once it has
        # two samples in a window: only visible when terminated series are read.
        later = [i for i in spec.terminated_steps if i - 1 in spec.terminated_steps]
        zeros = pd.DataFrame(
            {
                "window_start_seconds": (grid[later] - WINDOW_SECONDS).astype("float64"),
                "namespace": spec.namespace,
                "pod": spec.pod,
                "workload_kind": spec.workload_kind,
                "workload_name": spec.workload_name,
                "package_joules": 0.0,
                "core_joules": 0.0,
                "dram_joules": 0.0,
                "terminated": True,
            }
        )
        expected_parts.extend([frame, zeros] if len(zeros) else [frame])
    return BackfillDataset(
        name="synthetic-kepler-0.10",
        openmetrics=writer.render(),
        start_seconds=float(grid[0]),
        end_seconds=float(grid[-1]),
        window_seconds=WINDOW_SECONDS,
        expected=pd.concat(expected_parts, ignore_index=True),
        restart_window_start_seconds=float(grid[SYNTHETIC_RESTART_INDEX - 1]),
    )


def _add_synthetic_owner_series(writer: OpenMetricsWriter, spec: SyntheticPod, grid: np.ndarray, honor: bool) -> None:
    if not spec.owner_chain:
        return  # unknown to kube-state-metrics: the trainer must fall back to the pod itself
    span = grid[spec.first_step : max(spec.last_step, *spec.terminated_steps, spec.last_step) + 1]
    ones = [(int(t), 1.0) for t in span]
    (kind, name), *rest = spec.owner_chain
    writer.add("kube_pod_owner", "gauge", _ksm_labels(spec.namespace, _owner_labels(kind, name), honor, spec.pod), ones)
    if rest:
        (parent_kind, parent_name), = rest
        metric, name_label = {"ReplicaSet": ("kube_replicaset_owner", "replicaset"), "Job": ("kube_job_owner", "job_name")}[kind]
        extra = {name_label: name, **_owner_labels(parent_kind, parent_name)}
        writer.add(metric, "gauge", _ksm_labels(spec.namespace, extra, honor), ones)


def expected_energy(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Sum of the chosen per-zone/per-mode expected columns."""
    return frame[list(columns)].sum(axis=1)
