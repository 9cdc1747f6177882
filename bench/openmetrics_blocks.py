"""The simulated cluster as Prometheus TSDB blocks: Kepler counters and kube-state-metrics owner
series written as OpenMetrics, one file per 2-hour block, backfilled with `promtool`.

Why one file per block: `promtool tsdb create-blocks-from openmetrics` parses its whole input
once per 2-hour block it covers, so one file holding 7 days would be parsed 84 times. Files cut
at the block boundaries are parsed twice each (once for their time range, once to write). The
Python writer and promtool overlap: files are backfilled (two promtool processes at most) while
the next ones are written, and each file is deleted once its block exists, so the text never
fills the disk.

Series (labels as the exporters and a kube-prometheus Prometheus store them):

* Kepler 0.10 (`line="kepler-0.10"`): `kepler_pod_cpu_joules_total{zone, state="running",
  pod_name, pod_namespace, pod_id, node_name}`; zone package holds 85% of the pod's energy and
  dram 15% on nodes with a DRAM zone, package 100% on the others.
* Kepler 0.7 (`line="kepler-0.7"`): `kepler_container_joules_total{mode, container_name,
  container_namespace, pod_name, container_id}`, per running container, split by the containers'
  CPU requests, 80% in mode dynamic and 20% idle.
* kube-state-metrics: `kube_pod_owner` per pod, `kube_replicaset_owner` per ReplicaSet,
  `kube_job_owner` per Job (1 while the object exists), scraped with honor_labels.
* Job runs (`bench.cluster_sim.SimRun`): kube-state-metrics' `kube_job_status_start_time`,
  `kube_job_spec_completions`, `kube_job_spec_parallelism`, then `kube_job_status_completion_time`
  and `kube_job_complete{condition="true"}` (succeeded) or `kube_job_failed{condition="true"}` and
  `kube_job_status_failed{reason}` (failed); per pod `kube_pod_start_time`,
  `kube_pod_completion_time` and `kube_pod_container_status_terminated_reason`; kept
  `KSM_KEEP_STEPS` samples after the run ends (the Job's history), to the end while it runs. A
  run's pods count Kepler energy from 0, and on Kepler 0.10 a finished pod of at least
  `KEPLER_MIN_TERMINATED_JOULES` in its package zone gets one `state="terminated"` sample with its
  final values, as Kepler's terminated-pod tracker exports it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cluster_sim import KEPLER_JOB, KSM_LABELS, WINDOW_SECONDS, SimPod, SimulatedCluster, stable_hex
from harness.kepler_counters import counter_values

BLOCK_SECONDS = 7200
KEPLER_LINES = ("kepler-0.10", "kepler-0.7")
COUNTER_BASE_JOULES = 5.0e6  # an exporter that has been up for a while: a restart visibly lowers it
DRAM_SHARE = 0.15
IDLE_MODE_SHARE = 0.20
PROMTOOL_WORKERS = 2
KSM_KEEP_STEPS = 5
KEPLER_MIN_TERMINATED_JOULES = 10.0  # Kepler 0.10+ `monitor.minTerminatedEnergyThreshold`


@dataclass(frozen=True)
class Series:
    family: str
    kind: str  # "counter" or "gauge"
    label_text: str  # the inside of {...}
    first_step: int
    values: np.ndarray  # at grid indexes first_step, first_step + 1, ...

    @property
    def sample_name(self) -> str:
        return f"{self.family}_total" if self.kind == "counter" else self.family


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _counter(steps: np.ndarray, pod: SimPod, offset: int) -> np.ndarray:
    """A run's pod counts from 0 (Kepler first saw it at its start); other pods from a base that
    a restart visibly lowers. A restart that would not lower the counter is left out."""
    base = 0.0 if pod.of_job else COUNTER_BASE_JOULES + offset
    restart = pod.node.kepler_restart_step - pod.first_step
    if not 0 < restart < len(steps) or base + float(np.sum(steps[1:restart])) <= float(steps[restart]):
        return counter_values(steps, base, None)
    return counter_values(steps, base, restart)


def kepler_010_series(pod: SimPod) -> Iterator[Series]:
    node = pod.node
    zones = {"package": 1.0 - DRAM_SHARE, "dram": DRAM_SHARE} if node.has_dram_zone else {"package": 1.0}
    for offset, (zone, share) in enumerate(zones.items()):
        labels = _labels(container=KEPLER_JOB["container"], instance=node.exporter_instance, job=KEPLER_JOB["job"],
                         namespace="kepler", node_name=node.name, pod=node.exporter_pod, pod_id=pod.uid,
                         pod_name=pod.name, pod_namespace=pod.namespace, state="running", zone=zone)
        values = _counter(pod.step_joules * share, pod, offset)
        yield Series("kepler_pod_cpu_joules", "counter", labels, pod.first_step, values)
        if pod.finished and float(pod.step_joules.sum()) * zones["package"] >= KEPLER_MIN_TERMINATED_JOULES:
            terminated = labels.replace('state="running"', 'state="terminated"')
            yield Series("kepler_pod_cpu_joules", "counter", terminated, pod.last_step + 1, values[-1:])


def kepler_07_series(pod: SimPod, container_shares: list[tuple[str, float]]) -> Iterator[Series]:
    node = pod.node
    offset = 0
    for container, share in container_shares:
        for mode, mode_share in (("dynamic", 1.0 - IDLE_MODE_SHARE), ("idle", IDLE_MODE_SHARE)):
            labels = _labels(container="kepler-exporter", container_id=stable_hex(pod.namespace, pod.name, container, length=64),
                             container_name=container, container_namespace=pod.namespace, instance=node.exporter_instance,
                             job=KEPLER_JOB["job"], mode=mode, namespace="kepler", pod=node.exporter_pod, pod_name=pod.name)
            yield Series("kepler_container_joules", "counter", labels, pod.first_step,
                         _counter(pod.step_joules * share * mode_share, pod, offset))
            offset += 1


def _container_shares(cluster: SimulatedCluster, pod: SimPod) -> list[tuple[str, float]]:
    containers = cluster.workloads[pod.workload_index].request.containers
    weights = np.array([c.req_cpu_mcpu or 100 for c in containers], dtype=np.float64)
    return [(c.name, float(w / weights.sum())) for c, w in zip(containers, weights)]


def owner_series(cluster: SimulatedCluster) -> Iterator[Series]:
    """kube_pod_owner per pod, kube_replicaset_owner / kube_job_owner per controller (for the
    union of its pods' lives)."""
    spans: dict[tuple[str, str, str], tuple[int, int, tuple[str, str] | None]] = {}
    for pod in cluster.pods:
        kind, name = pod.owner if pod.owner else ("<none>", "<none>")
        controller = "true" if pod.owner else "false"
        labels = _labels(**KSM_LABELS, namespace=pod.namespace, owner_is_controller=controller, owner_kind=kind,
                         owner_name=name, pod=pod.name, uid=pod.uid)
        yield Series("kube_pod_owner", "gauge", labels, pod.first_step, np.ones(pod.last_step - pod.first_step + 1))
        if pod.owner and pod.owner[0] in ("ReplicaSet", "Job"):
            key = (pod.namespace, pod.owner[0], pod.owner[1])
            first, last, parent = spans.get(key, (pod.first_step, pod.last_step, pod.owner_of_owner))
            spans[key] = (min(first, pod.first_step), max(last, pod.last_step), parent)
    for (namespace, kind, name), (first, last, parent) in spans.items():
        parent_kind, parent_name = parent if parent else ("<none>", "<none>")
        controller = "true" if parent else "false"
        if kind == "ReplicaSet":
            family, extra = "kube_replicaset_owner", {"replicaset": name}
        else:
            family, extra = "kube_job_owner", {"job_name": name}
        labels = _labels(**KSM_LABELS, **extra, namespace=namespace, owner_is_controller=controller,
                         owner_kind=parent_kind, owner_name=parent_name)
        yield Series(family, "gauge", labels, first, np.ones(last - first + 1))


def _gauge(family: str, first: int, last: int, value: float, **labels: str) -> Series:
    """A kube-state-metrics gauge at grid indexes first..last; the object's labels win over the
    target's (honor_labels: a pod's `container` stays its own)."""
    return Series(family, "gauge", _labels(**{**KSM_LABELS, **labels}), first, np.full(last - first + 1, value))


def run_series(cluster: SimulatedCluster) -> Iterator[Series]:
    """kube-state-metrics' job and pod series of every run (see the module docstring)."""
    last_step = cluster.steps - 1
    for run in cluster.runs:
        keep = min(run.last_step + KSM_KEEP_STEPS, last_step) if run.outcome != "running" else last_step
        job = {"job_name": run.job_name, "namespace": run.namespace}
        yield _gauge("kube_job_status_start_time", run.first_step, keep, cluster.sample_seconds(run.first_step), **job)
        yield _gauge("kube_job_spec_completions", run.first_step, keep, run.completions, **job)
        yield _gauge("kube_job_spec_parallelism", run.first_step, keep, run.parallelism, **job)
        if run.outcome == "succeeded":
            yield _gauge("kube_job_status_completion_time", run.last_step, keep, cluster.sample_seconds(run.last_step), **job)
            yield _gauge("kube_job_complete", run.last_step, keep, 1, condition="true", **job)
        elif run.outcome == "failed":
            yield _gauge("kube_job_failed", run.last_step, keep, 1, condition="true", **job)
            yield _gauge("kube_job_status_failed", run.last_step, keep, 1, reason=run.failure_reason, **job)
        container = cluster.workloads[run.workload_index].request.containers[0].name
        for pod in run.pods:
            pod_labels = {"namespace": pod.namespace, "pod": pod.name, "uid": pod.uid}
            pod_keep = keep if pod.finished else last_step
            yield _gauge("kube_pod_start_time", pod.first_step, pod_keep, cluster.sample_seconds(pod.first_step), **pod_labels)
            if pod.finished:
                yield _gauge("kube_pod_completion_time", pod.last_step, pod_keep, cluster.sample_seconds(pod.last_step),
                             **pod_labels)
                yield _gauge("kube_pod_container_status_terminated_reason", pod.last_step, pod_keep, 1,
                             container=container, reason="Error" if pod.failed else "Completed", **pod_labels)


def all_series(cluster: SimulatedCluster, line: str) -> list[Series]:
    if line not in KEPLER_LINES:
        raise ValueError(f"unknown Kepler line {line!r}: choose from {', '.join(KEPLER_LINES)}")
    series: list[Series] = []
    for pod in cluster.pods:
        if line == "kepler-0.10":
            series.extend(kepler_010_series(pod))
        else:
            series.extend(kepler_07_series(pod, _container_shares(cluster, pod)))
    series.extend(owner_series(cluster))
    series.extend(run_series(cluster))
    return series


def _block_text(cluster: SimulatedCluster, series: list[Series], first: int, end: int) -> tuple[str, int]:
    """OpenMetrics for grid indexes [first, end): families in order, each series' samples in time
    order; and the number of samples."""
    lines: list[str] = []
    samples = 0
    family = None
    for item in series:
        lo, hi = max(first, item.first_step), min(end, item.first_step + len(item.values))
        if lo >= hi:
            continue
        if item.family != family:
            family = item.family
            lines.append(f"# TYPE {family} {item.kind}")
        prefix = f"{item.sample_name}{{{item.label_text}}} "
        seconds = cluster.grid_start_seconds + WINDOW_SECONDS * lo
        values = item.values[lo - item.first_step: hi - item.first_step].tolist()
        samples += len(values)
        # repr() round-trips a float exactly through Prometheus' parser.
        lines.extend(f"{prefix}{value!r} {seconds + WINDOW_SECONDS * i}" for i, value in enumerate(values))
    lines.append("# EOF")
    return "\n".join(lines) + "\n", samples


@dataclass(frozen=True)
class BackfillStats:
    files: int
    openmetrics_bytes: int
    samples: int
    series: int
    write_seconds: float  # Python: rendering the OpenMetrics text
    wall_seconds: float  # writing and promtool together (they overlap)
    promtool_seconds: float  # summed over promtool processes
    tsdb_bytes: int
    blocks: int


def _promtool(promtool: Path, source: Path, output: Path) -> float:
    started = time.perf_counter()
    completed = subprocess.run([str(promtool), "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(source),
                                str(output)], capture_output=True, text=True, timeout=3600, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"promtool failed on {source.name}: {(completed.stderr or completed.stdout)[-2000:]}")
    source.unlink()
    return time.perf_counter() - started


def backfill(cluster: SimulatedCluster, line: str, storage_dir: Path, promtool: Path) -> BackfillStats:
    """Write and backfill the cluster's series into `storage_dir` (a Prometheus data directory)."""
    series = sorted(all_series(cluster, line), key=lambda s: s.family)
    block_steps = BLOCK_SECONDS // WINDOW_SECONDS
    # Cut at the TSDB's 2 h boundaries (Unix time multiples), as promtool aligns its blocks.
    first_block_start = cluster.grid_start_seconds // BLOCK_SECONDS * BLOCK_SECONDS
    cuts = [max(0, (start - cluster.grid_start_seconds) // WINDOW_SECONDS)
            for start in range(first_block_start, cluster.grid_end_seconds + 1, BLOCK_SECONDS)] + [cluster.steps]
    storage_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_seconds = 0.0
    text_bytes = 0
    samples = 0
    with tempfile.TemporaryDirectory(prefix="openmetrics-", dir=storage_dir.parent) as tmp, \
            ThreadPoolExecutor(max_workers=PROMTOOL_WORKERS) as pool:
        pending: list[Future[float]] = []
        done_seconds: list[float] = []
        for number, (first, end) in enumerate(zip(cuts, cuts[1:])):
            if first >= end:
                continue
            rendering = time.perf_counter()
            text, block_samples = _block_text(cluster, series, first, end)
            source = Path(tmp) / f"block-{number:04d}.om"
            source.write_text(text, encoding="utf-8")
            write_seconds += time.perf_counter() - rendering
            text_bytes += len(text)
            samples += block_samples
            output = Path(tmp) / f"out-{number:04d}"
            pending.append(pool.submit(_promtool, promtool, source, output))
            while len(pending) >= PROMTOOL_WORKERS:  # bound the text on disk to two files
                done_seconds.append(pending.pop(0).result())
        done_seconds.extend(f.result() for f in pending)
        for output in sorted(Path(tmp).glob("out-*")):
            for block in output.iterdir():
                if block.is_dir():
                    shutil.move(str(block), storage_dir / block.name)
    tsdb_bytes = sum(f.stat().st_size for f in storage_dir.rglob("*") if f.is_file())
    blocks = sum(1 for d in storage_dir.iterdir() if d.is_dir() and (d / "meta.json").exists())
    return BackfillStats(files=len(done_seconds), openmetrics_bytes=text_bytes, samples=samples, series=len(series),
                         write_seconds=round(write_seconds, 1), wall_seconds=round(time.perf_counter() - started, 1),
                         promtool_seconds=round(sum(done_seconds), 1), tsdb_bytes=tsdb_bytes, blocks=blocks)
