"""A simulated cluster: N workloads over D days, their pods' lives, and the energy each pod draws
in every 60 s window, from the ground truth in `bench.power_model`.

Workloads come from `bench.workloads` with one pod running at a time (replicas 1), so that the
series count stays "N workloads x D days x 1440 samples" per metric family, as sized in the issue;
Jobs and CronJob runs keep their spec's completions and parallelism. Pods live the way their
kind lives:

* Deployment: its pod runs throughout; one rollout at a random time replaces it with a pod of a
  new ReplicaSet (same spec: a `kubectl rollout restart`).
* StatefulSet (`name-0`), DaemonSet (one node's pod): run throughout.
* bare Pod: starts at a random time in the first third, runs to the end; one that runs to
  completion (`restartPolicy: Never`, a CI build pod) ends when its work is done, after the time
  a Job's pod of its spec would take.
* Job: one run, from a random start. CronJob: a run every 1, 2, 6 or 24 h from a random offset.
  A run (`SimRun`) follows its Job spec: `completions` pods (default `parallelism`), at most
  `parallelism` at once; each pod runs for the workload's spec-driven time (the work its
  arguments state, `--partitions 16`, `--epochs 3`, `TEST_SHARDS=4`, times the profile's minutes
  per unit, +-20% per workload; longer for a smaller CPU request; +-15% per pod); a pod fails part-way with the profile's probability and is replaced by a retry until
  `backoffLimit` failures fail the run (BackoffLimitExceeded); `activeDeadlineSeconds` cuts a
  run that outlasts it (DeadlineExceeded); a run still going at the end of the range is running.
  Kepler's counters of a run's pods start at 0 (Kepler counts a pod from when it first sees it).

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
from typing import Any

import numpy as np

from bench import power_model
from bench.workloads import WorkloadDraw, draw_workload
from webhook.model.extract import to_inference_request
from webhook.model.prior import RUNS_TO_COMPLETION_POLICIES

WINDOW_SECONDS = 60
NODES_PER_WORKLOADS = 20  # one node per 20 workloads, at least MIN_NODES
MIN_NODES = 3
CRONJOB_PERIODS_HOURS = (1, 2, 6, 24)
CRONJOB_RUN_MINUTES = (5, 45)
JOB_RUN_MINUTES = {"ml-training": (360, 2880), "ci-runner": (8, 40), "batch-etl": (20, 120)}
DEFAULT_JOB_RUN_MINUTES = (15, 90)
# A pod's minutes scale as (this many millicores / its CPU request) ** CPU_SPEEDUP_EXPONENT.
REFERENCE_CPU_MILLICORES = 1000
CPU_SPEEDUP_EXPONENT = 0.5
POD_TIME_SIGMA = 0.15  # per pod, log scale
WORK_MINUTES_SIGMA = 0.2  # per workload, log scale: the same stated work runs faster or slower on other data
FAILURE_PROBABILITY = {"ci-runner": 0.15, "batch-etl": 0.08, "ml-training": 0.10}
DEFAULT_FAILURE_PROBABILITY = 0.05
DEFAULT_BACKOFF_LIMIT = 6  # the Job API's default
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
    failed: bool = False  # a Job's pod that failed (its container ended with Error)
    finished: bool = False  # a Job's pod, or a bare pod that runs to completion, that ended inside the range
    completes_at_step: int | None = None  # a bare pod that runs to completion: its last step (`simulate`)

    @property
    def of_job(self) -> bool:
        return self.owner is not None and self.owner[0] == "Job"

    @property
    def uid(self) -> str:
        return f"{stable_hex(self.namespace, self.name, length=8)}-0000-4000-8000-{stable_hex(self.name, length=12)}"


@dataclass
class SimRun:
    """One Job run: its pods (retries included), and how it ended. Its start is its first pod's
    first sample, its end its last pod's last sample."""

    workload_index: int
    namespace: str
    job_name: str
    cronjob_name: str  # "" for a standalone Job
    completions: int
    parallelism: int
    outcome: str  # succeeded, failed, running
    failure_reason: str  # BackoffLimitExceeded, DeadlineExceeded or ""
    pods: list[SimPod]

    @property
    def first_step(self) -> int:
        return min(p.first_step for p in self.pods)

    @property
    def last_step(self) -> int:
        return max(p.last_step for p in self.pods)


@dataclass
class SimulatedCluster:
    workloads: list[WorkloadDraw]
    pods: list[SimPod]
    nodes: list[Node]
    grid_start_seconds: int  # time of sample 0
    steps: int  # samples per series on the full grid
    runs: list[SimRun] = field(default_factory=list)

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
        pods = draw.pods if draw.manifest["kind"] in ("Job", "CronJob") else 1
        draws.append(WorkloadDraw(draw.manifest, draw.profile, to_inference_request(draw.manifest),
                                  draw.spec_power_watts, draw.workload_factor, pods, draw.work_units))
    return draws


def _nodes(count: int, steps: int, rng: np.random.Generator) -> list[Node]:
    return [Node(name=f"worker-{i:03d}", has_dram_zone=i % 2 == 0,
                 kepler_restart_step=int(rng.integers(steps // 4, 3 * steps // 4)),
                 exporter_pod=f"kepler-exporter-{stable_hex('kepler', str(i), length=5)}",
                 exporter_instance=f"10.0.{i // 250}.{i % 250 + 1}:9102") for i in range(count)]


def _minutes(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _lives(draw: WorkloadDraw, index: int, node: Node, steps: int, rng: np.random.Generator,
           runs: list[SimRun]) -> list[SimPod]:
    """The workload's pods; a Job's or CronJob's runs are added to `runs`."""
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
        pod = SimPod(index, namespace, name, node, int(rng.integers(0, steps // 3)), last, None)
        if request.restart_policy in RUNS_TO_COMPLETION_POLICIES:
            # Its length from a random stream of its own, so that every other workload's simulation
            # is the same with or without pods that run to completion (`simulate` cuts its windows).
            own = np.random.default_rng(int(stable_hex(namespace, name), 16))
            pod.completes_at_step = min(last, pod.first_step + max(1, int(round(_pod_minutes(draw, own)))) - 1)
        return [pod]
    if kind == "Job":
        minutes = _pod_minutes(draw, rng)
        first = int(rng.integers(0, max(1, steps - int(minutes) - 1)))
        return _job_run(draw, index, node, name, "", first, minutes, last, rng, runs).pods
    # CronJob: a run every `period` hours, from a random offset.
    period = int(rng.choice(CRONJOB_PERIODS_HOURS)) * 60
    minutes = _pod_minutes(draw, rng)
    pods = []
    for first in range(int(rng.integers(0, period)), steps - 1, period):
        pods.extend(_job_run(draw, index, node, f"{name}-{first}", name, first, minutes, last, rng, runs).pods)
    return pods


def _run_minutes_bounds(draw: WorkloadDraw) -> tuple[int, int]:
    if draw.request.workload_kind == "CronJob":
        return CRONJOB_RUN_MINUTES
    return JOB_RUN_MINUTES.get(draw.profile.key, DEFAULT_JOB_RUN_MINUTES)


def _speed(draw: WorkloadDraw) -> float:
    cpu_millicores = sum(c.req_cpu_mcpu or 100 for c in draw.request.containers)
    return (REFERENCE_CPU_MILLICORES / max(cpu_millicores, 10)) ** CPU_SPEEDUP_EXPONENT


def _pod_minutes(draw: WorkloadDraw, rng: np.random.Generator) -> float:
    """The workload's pod time (minutes), scaled by its CPU request (a pod with half the CPU takes
    ~1.4x as long). Batch work whose arguments state its size (`--partitions 16`, `--epochs 3`,
    `TEST_SHARDS=4`: `bench.workloads`) takes the profile's minutes per unit times the units,
    with a per-workload spread of WORK_MINUTES_SIGMA the spec does not show; other work a size
    drawn within the profile's bounds, which the spec does not show at all."""
    if draw.work_units is not None:
        minutes = draw.profile.minutes_per_work_unit * draw.work_units * math.exp(rng.normal(0.0, WORK_MINUTES_SIGMA))
        return max(1.0, minutes * _speed(draw))
    return max(1.0, _minutes(rng, _run_minutes_bounds(draw)) * _speed(draw))


def spec_pod_minutes(draw: WorkloadDraw) -> float:
    """What the spec alone says of `_pod_minutes`: the stated work without the workload's spread,
    or the geometric middle of the profile's bounds (the truth of the spec for a run's length)."""
    if draw.work_units is not None:
        return max(1.0, draw.profile.minutes_per_work_unit * draw.work_units * _speed(draw))
    low, high = _run_minutes_bounds(draw)
    return max(1.0, math.sqrt(low * high) * _speed(draw))


def _job_spec(draw: WorkloadDraw) -> dict[str, Any]:
    spec = draw.manifest["spec"]
    return spec["jobTemplate"]["spec"] if draw.manifest["kind"] == "CronJob" else spec


def _job_run(draw: WorkloadDraw, index: int, node: Node, job: str, cronjob: str, first: int, minutes: float,
             last: int, rng: np.random.Generator, runs: list[SimRun]) -> SimRun:
    """One run of the workload's Job spec from grid index `first` (see the module docstring),
    added to `runs` when it has a pod."""
    spec = _job_spec(draw)
    parallelism = int(spec.get("parallelism") or 1)
    completions = int(spec.get("completions") or parallelism)
    backoff_limit = int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    deadline = spec.get("activeDeadlineSeconds")
    deadline_step = first + int(deadline) // WINDOW_SECONDS if deadline else None
    failure_probability = FAILURE_PROBABILITY.get(draw.profile.key, DEFAULT_FAILURE_PROBABILITY)
    slots = [first] * max(1, min(parallelism, completions))
    pods: list[SimPod] = []
    failures, outcome, reason = 0, "succeeded", ""
    remaining = completions
    while remaining and outcome == "succeeded":
        slot = int(np.argmin(slots))
        start = slots[slot]
        length = max(1, int(round(minutes * math.exp(rng.normal(0.0, POD_TIME_SIGMA)))))
        fails = bool(rng.random() < failure_probability)
        if fails:
            length = max(1, int(length * rng.uniform(0.1, 0.9)))
        end = start + length
        if deadline_step is not None and end > deadline_step:
            end, fails, outcome, reason = deadline_step, True, "failed", "DeadlineExceeded"
        if end > last:
            end, outcome, reason = last, "running", ""
        if start >= end:
            break
        pod_name = f"{job}-{stable_hex(job, str(len(pods)), length=5)}"
        pods.append(SimPod(index, draw.request.namespace, pod_name, node, start, end, ("Job", job),
                           ("CronJob", cronjob) if cronjob else None, failed=fails and outcome != "running",
                           finished=outcome != "running"))
        slots[slot] = end + 1
        if fails and outcome == "succeeded":
            failures += 1
            if failures > backoff_limit:
                outcome, reason = "failed", "BackoffLimitExceeded"
        elif not fails:
            remaining -= 1
    run = SimRun(index, draw.request.namespace, job, cronjob, completions, parallelism, outcome, reason, pods)
    if pods:
        runs.append(run)
    return run


def simulate(workload_count: int, days: float, seed: int, end_before_seconds: float) -> SimulatedCluster:
    """The cluster's last sample is the latest whole minute at least an hour before
    `end_before_seconds` (Prometheus' head block starts at "now": backfilled data must be older)."""
    rng = np.random.default_rng(seed + 1)
    steps = int(days * 86_400 / WINDOW_SECONDS) + 1
    end = int((end_before_seconds - 3600) // WINDOW_SECONDS * WINDOW_SECONDS)
    grid_start = end - (steps - 1) * WINDOW_SECONDS
    draws = _draw_single_pod_workloads(workload_count, seed)
    runs: list[SimRun] = []
    nodes = _nodes(max(MIN_NODES, math.ceil(workload_count / NODES_PER_WORKLOADS)), steps, rng)
    window_starts = grid_start + WINDOW_SECONDS * (np.arange(steps, dtype=np.float64) - 1)
    pods: list[SimPod] = []
    for index, draw in enumerate(draws):
        node = nodes[int(rng.integers(len(nodes)))]
        phase = float(rng.uniform(0, power_model.SECONDS_PER_DAY))
        for pod in _lives(draw, index, node, steps, rng, runs):
            # Sample s closes the window [t(s) - 60 s, t(s)); sample `first_step` has no window
            # of this pod before it, so its step energy is 0.
            span = slice(pod.first_step, pod.last_step + 1)
            watts = power_model.window_power_watts(draw.mean_power_watts, window_starts[span], draw.profile.diurnal,
                                                   phase, rng)
            joules = watts * WINDOW_SECONDS
            joules[0] = 0.0
            if pod.completes_at_step is not None:  # its windows drawn to the end, as before, then cut
                joules = joules[:pod.completes_at_step - pod.first_step + 1]
                pod.finished = pod.completes_at_step < pod.last_step
                pod.last_step = pod.completes_at_step
            pod.step_joules = joules
            pods.append(pod)
    return SimulatedCluster(draws, pods, nodes, grid_start, steps, runs)


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
             "mean_power_watts": d.mean_power_watts,
             **({"spec_pod_seconds": spec_pod_minutes(d) * 60.0} if d.request.workload_kind in ("Job", "CronJob") else {})}
            for d in cluster.workloads]


def run_truth_table(cluster: SimulatedCluster) -> list[dict[str, object]]:
    """Per Job run: what `energetiscope train runs` must recover from the series the cluster
    writes (`bench.openmetrics_blocks`): outcome, wall time, pod-seconds and joules."""
    return [{"namespace": r.namespace, "job_name": r.job_name, "cronjob_name": r.cronjob_name,
             "workload_kind": "CronJob" if r.cronjob_name else "Job",
             "workload_name": r.cronjob_name or cluster.workloads[r.workload_index].request.workload_name,
             "outcome": r.outcome, "failure_reason": r.failure_reason, "pods": len(r.pods),
             "pods_failed": sum(p.failed for p in r.pods),
             "run_seconds": float((r.last_step - r.first_step) * WINDOW_SECONDS),
             "pod_seconds": float(sum(p.last_step - p.first_step for p in r.pods) * WINDOW_SECONDS),
             "energy_joules": float(sum(p.step_joules.sum() for p in r.pods))} for r in cluster.runs]


def write_truth(cluster: SimulatedCluster, path: Path) -> Path:
    path.write_text(json.dumps(truth_table(cluster)) + "\n")
    return path
