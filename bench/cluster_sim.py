"""A simulated cluster: N workloads over D days, their pods' lives, and the energy each pod draws
in every 60 s window, from the ground truth in `bench.power_model`.

Workloads come from `bench.workloads` with one pod running at a time (replicas 1), so that the
series count stays "N workloads x D days x 1440 samples" per metric family, as sized in the issue.
Pods live the way their kind lives:

* Deployment: its pod runs throughout; one rollout at a random time replaces it with a pod of a
  new ReplicaSet (same spec: a `kubectl rollout restart`).
* StatefulSet (`name-0`), DaemonSet (one node's pod): run throughout.
* bare Pod: starts at a random time in the first third, runs to the end.
* Job: runs once, from a random start, for a profile-dependent time (minutes for CI, hours for
  ML training), within the range.
* CronJob: a Job every 1, 2, 6 or 24 h, each running 5 to 45 minutes.

Pods sit on nodes; half the nodes have a DRAM RAPL zone (Kepler 0.10 reports zone="dram" there),
and each node's Kepler exporter restarts once at a random time (every counter on the node resets),
which the trainer's increase() must handle.

Truth: a pod's power in a window is `power_model.window_power_watts(workload mean, ...)`, where
the workload mean is its spec's truth times its workload factor; the energy of the window is that
times 60 s. What the trainer should recover per workload is the mean of those windows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import power_model
from bench.workloads import WorkloadDraw, draw_workload
from webhook.model.extract import to_inference_request

WINDOW_SECONDS = 60
NODES_PER_WORKLOADS = 20  # one node per 20 workloads, at least MIN_NODES
MIN_NODES = 3
CRONJOB_PERIODS_HOURS = (1, 2, 6, 24)
CRONJOB_RUN_MINUTES = (5, 45)
JOB_RUN_MINUTES = {"ml-training": (360, 2880), "ci-runner": (8, 40), "batch-etl": (20, 120)}
DEFAULT_JOB_RUN_MINUTES = (15, 90)
KEPLER_JOB = {"container": "kepler-exporter", "job": "kepler"}
KSM_LABELS = {"container": "kube-state-metrics", "instance": "10.0.0.20:8080", "job": "kube-state-metrics"}


def stable_hex(*parts: str, length: int = 10) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Node:
    name: str
    has_dram_zone: bool
    kepler_restart_step: int  # grid index of the first sample after the exporter restarted
    exporter_pod: str
    exporter_instance: str


@dataclass
class SimPod:
    """One pod's life: grid indexes first..last (inclusive) hold its samples."""

    workload_index: int
    namespace: str
    name: str
    node: Node
    first_step: int
    last_step: int
    owner: tuple[str, str] | None  # (kind, name) of its controller; None for a bare pod
    owner_of_owner: tuple[str, str] | None = None  # a ReplicaSet's Deployment, a Job's CronJob
    step_joules: np.ndarray = field(default_factory=lambda: np.zeros(0))  # energy per sample interval

    @property
    def uid(self) -> str:
        return f"{stable_hex(self.namespace, self.name, length=8)}-0000-4000-8000-{stable_hex(self.name, length=12)}"


@dataclass
class SimulatedCluster:
    workloads: list[WorkloadDraw]
    pods: list[SimPod]
    nodes: list[Node]
    grid_start_seconds: int  # time of sample 0
    steps: int  # samples per series on the full grid

    @property
    def grid_end_seconds(self) -> int:
        return self.grid_start_seconds + (self.steps - 1) * WINDOW_SECONDS

    def sample_seconds(self, step: int) -> int:
        return self.grid_start_seconds + step * WINDOW_SECONDS


def _draw_single_pod_workloads(count: int, seed: int) -> list[WorkloadDraw]:
    rng = np.random.default_rng(seed)
    draws = []
    for index in range(count):
        draw = draw_workload(rng, index)
        # One pod at a time: the object says so too, so the spec and the pods agree.
        spec = draw.manifest["spec"]
        if "replicas" in spec:
            spec["replicas"] = 1
        for job_spec in (spec, spec.get("jobTemplate", {}).get("spec", {})):
            for key in ("parallelism", "completions"):
                if key in job_spec:
                    job_spec[key] = 1
        draws.append(WorkloadDraw(draw.manifest, draw.profile, to_inference_request(draw.manifest),
                                  draw.spec_power_watts, draw.workload_factor, 1))
    return draws


def _nodes(count: int, steps: int, rng: np.random.Generator) -> list[Node]:
    return [Node(name=f"worker-{i:03d}", has_dram_zone=i % 2 == 0,
                 kepler_restart_step=int(rng.integers(steps // 4, 3 * steps // 4)),
                 exporter_pod=f"kepler-exporter-{stable_hex('kepler', str(i), length=5)}",
                 exporter_instance=f"10.0.{i // 250}.{i % 250 + 1}:9102") for i in range(count)]


def _minutes(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _lives(draw: WorkloadDraw, index: int, node: Node, steps: int, rng: np.random.Generator) -> list[SimPod]:
    request = draw.request
    kind, name, namespace = request.workload_kind, request.workload_name, request.namespace
    last = steps - 1
    if kind == "Deployment":
        rollout = int(rng.integers(steps // 5, 4 * steps // 5))
        pods = []
        for first, end in ((0, rollout - 1), (rollout, last)):
            replicaset = f"{name}-{stable_hex(name, str(first))}"
            pods.append(SimPod(index, namespace, f"{replicaset}-{stable_hex(replicaset, length=5)}", node, first, end,
                               ("ReplicaSet", replicaset), ("Deployment", name)))
        return pods
    if kind == "StatefulSet":
        return [SimPod(index, namespace, f"{name}-0", node, 0, last, ("StatefulSet", name))]
    if kind == "DaemonSet":
        return [SimPod(index, namespace, f"{name}-{stable_hex(name, node.name, length=5)}", node, 0, last, ("DaemonSet", name))]
    if kind == "Pod":
        return [SimPod(index, namespace, name, node, int(rng.integers(0, steps // 3)), last, None)]
    if kind == "Job":
        length = min(_minutes(rng, JOB_RUN_MINUTES.get(draw.profile.key, DEFAULT_JOB_RUN_MINUTES)), steps - 1)
        first = int(rng.integers(0, steps - length))
        return [SimPod(index, namespace, f"{name}-{stable_hex(name, length=5)}", node, first, first + length, ("Job", name))]
    # CronJob: a run every `period` hours, from a random offset.
    period = int(rng.choice(CRONJOB_PERIODS_HOURS)) * 60
    pods = []
    for first in range(int(rng.integers(0, period)), steps - 1, period):
        length = min(_minutes(rng, CRONJOB_RUN_MINUTES), last - first)
        if length < 1:
            continue
        job = f"{name}-{first}"
        pods.append(SimPod(index, namespace, f"{job}-{stable_hex(job, length=5)}", node, first, first + length,
                           ("Job", job), ("CronJob", name)))
    return pods


def simulate(workload_count: int, days: float, seed: int, end_before_seconds: float) -> SimulatedCluster:
    """The cluster's last sample is the latest whole minute at least an hour before
    `end_before_seconds` (Prometheus' head block starts at "now": backfilled data must be older)."""
    rng = np.random.default_rng(seed + 1)
    steps = int(days * 86_400 / WINDOW_SECONDS) + 1
    end = int((end_before_seconds - 3600) // WINDOW_SECONDS * WINDOW_SECONDS)
    grid_start = end - (steps - 1) * WINDOW_SECONDS
    draws = _draw_single_pod_workloads(workload_count, seed)
    nodes = _nodes(max(MIN_NODES, math.ceil(workload_count / NODES_PER_WORKLOADS)), steps, rng)
    window_starts = grid_start + WINDOW_SECONDS * (np.arange(steps, dtype=np.float64) - 1)
    pods: list[SimPod] = []
    for index, draw in enumerate(draws):
        node = nodes[int(rng.integers(len(nodes)))]
        phase = float(rng.uniform(0, power_model.SECONDS_PER_DAY))
        for pod in _lives(draw, index, node, steps, rng):
            # Sample s closes the window [t(s) - 60 s, t(s)); sample `first_step` has no window
            # of this pod before it, so its step energy is 0.
            span = slice(pod.first_step, pod.last_step + 1)
            watts = power_model.window_power_watts(draw.mean_power_watts, window_starts[span], draw.profile.diurnal,
                                                   phase, rng)
            joules = watts * WINDOW_SECONDS
            joules[0] = 0.0
            pod.step_joules = joules
            pods.append(pod)
    return SimulatedCluster(draws, pods, nodes, grid_start, steps)


def write_requests(cluster: SimulatedCluster, path: Path) -> Path:
    """The workloads' InferenceRequests as `energetiscope train collect` writes them (NDJSON)."""
    with open(path, "w", encoding="utf-8") as out:
        for draw in cluster.workloads:
            out.write(draw.request.model_dump_json() + "\n")
    return path


def truth_table(cluster: SimulatedCluster) -> list[dict[str, object]]:
    """Per workload: its identity, profile, the spec's true pod power and the workload's mean."""
    return [{"namespace": d.request.namespace, "workload_kind": d.request.workload_kind,
             "workload_name": d.request.workload_name, "profile": d.profile.key,
             "spec_power_watts": d.spec_power_watts, "workload_factor": d.workload_factor,
             "mean_power_watts": d.mean_power_watts} for d in cluster.workloads]


def write_truth(cluster: SimulatedCluster, path: Path) -> Path:
    path.write_text(json.dumps(truth_table(cluster)) + "\n")
    return path
