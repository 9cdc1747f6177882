"""The trainer's `runs` step: one row per Job run (a Job, standalone or created by a CronJob) with
its wall time, pod-seconds, energy and outcome, from kube-state-metrics and Kepler in Prometheus.

A batch workload is judged by what one run costs, not by its watts: this table is what a run
model (wall time and energy per run from the spec) trains on, through `trainer.run_dataset`.

kube-state-metrics gives the runs (series as its job and pod stores write them):

* `kube_job_status_start_time` (the run's start; runs that start inside [start, end) are read),
  `kube_job_status_completion_time` (set only when the Job succeeds), `kube_job_complete` /
  `kube_job_failed{condition="true"}`, `kube_job_status_failed{reason="BackoffLimitExceeded" |
  "DeadlineExceeded" | "Evicted"}` (1 for the Job's failure reason; without a reason label the
  series counts failed pods of a Job that has not failed), `kube_job_status_succeeded`,
  `kube_job_spec_completions`, `kube_job_spec_parallelism`, `kube_job_owner` (Job -> CronJob);
* `kube_pod_owner` (Pod -> Job), `kube_pod_start_time`, `kube_pod_completion_time` (the last
  container's finish), `kube_pod_status_phase` and, where the phase is absent,
  `kube_pod_container_status_terminated_reason` (`Completed` for every container: succeeded).

Each gauge's last value is read with `last_over_time` over chunks of the range (later chunks
win). A run's outcome at the end of the range: `succeeded` (completion time, or
`kube_job_complete` true), `failed` (`kube_job_failed` true or a failure reason), `running` (its
series still there at the end), else `unknown` (it vanished without an outcome). Its end: the
completion time; for a failed run its pods' last completion; for a running run the end of the
range (its wall time so far). A pod's life runs from its start time to its completion time, to
the end of the range while it runs, or to its run's end when it vanished without one.

Kepler gives each pod's energy over its life, from the stored samples of the same counters the
labels step reads (`trainer.kepler`, both lines; the Kepler 0.10 line in every `state`): per
series the first sample (the counter starts at 0 when Kepler first sees the pod or container,
so it holds the energy before the first scrape) plus every increase after it (a lower sample is
a counter reset: the new value counts from 0). The series of one pod are summed. GPU energy is
added from the labels step's source (`trainer.dcgm`): Kepler's GPU counter the same way, or
dcgm-exporter's per-pod windows (`read_dcgm_energy`) over the range.

Pods whose energy Kepler does not have are counted per run and named, never taken as 0 J.
Kepler 0.10+ (internal/monitor/terminated_resource_tracker.go, config `monitor.maxTerminated`
500 and `minTerminatedEnergyThreshold` 10 J) keeps a terminated pod only when its energy in the
node's primary zone is at least 10 J, and at most the 500 terminated pods of highest energy per
exporter; a kept pod is exported once, as a `state="terminated"` sample with its final counter
(the tracker is cleared after each export). So:

* `pods_without_energy`: a pod of the run with no Kepler series at all (it ended before a
  scrape, under 10 J or beyond the 500 kept, or Kepler missed it): its energy is unknown;
* `pods_without_final_energy` (Kepler 0.10 line): a pod that finished with running samples but
  no terminated sample: the energy after its last running scrape is missing, so its joules are a
  lower bound.

`energy_complete` is true only when neither happened; `missing_energy_pods` names the pods.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from trainer.dcgm import GpuChoice, GpuSource, choose_gpu_source, read_dcgm_energy
from trainer.kepler import (
    ContainerEnergySelection,
    EnergyQuery,
    KeplerLine,
    PodEnergySelection,
    build_energy_query,
    build_gpu_energy_query,
    detect_kepler_line,
    selection_counts_gpu,
)
from trainer.labels import parse_duration_seconds, parse_time_seconds
from trainer.owners import load_owner_index, object_label
from trainer.inputs import read_parquet_input
from trainer.prometheus import (
    DEFAULT_RAW_CHUNK_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    NO_RETRY,
    PrometheusClient,
    RetryPolicy,
    split_evaluation_range,
)
from webhook.files import write_atomically, write_text_atomically

OUTCOMES = ("succeeded", "failed", "running", "unknown")
RUN_COLUMNS: tuple[str, ...] = (
    "namespace",
    "job_name",
    "cronjob_name",  # "" for a Job without a CronJob
    "workload_kind",  # CronJob or Job: the spec the run joins to
    "workload_name",
    "outcome",
    "start_time",
    "end_time",  # NaT while running or when unknown
    "run_seconds",
    "pod_seconds",
    "pods",
    "pods_succeeded",
    "pods_failed",
    "completions",
    "parallelism",
    "energy_joules",
    "gpu_energy_joules",
    "pods_with_energy",
    "pods_without_energy",
    "pods_without_final_energy",
    "missing_energy_pods",  # space-separated pod names
    "energy_complete",
    "kepler_line",
)
DEFAULT_LOOKUP_CHUNK_SECONDS = 86_400.0
# A series counts as present at the end of the range when it has a sample this close before it.
PRESENT_AT_END_SECONDS = 600.0
# Pods per raw-sample read: their names go into one regex matcher.
PODS_PER_ENERGY_READ = 200
# Kepler's samples of a pod are read from this long before its start time (whole seconds) to after its end.
ENERGY_READ_MARGIN_SECONDS = 120.0
JOB_FAILURE_REASONS = ("BackoffLimitExceeded", "DeadlineExceeded", "Evicted")

Item = TypeVar("Item")
PodKey = tuple[str, str]  # namespace, pod
JobKey = tuple[str, str]  # namespace, job


# -- kube-state-metrics -------------------------------------------------------------------------


def _last_values(client: PrometheusClient, selector: str, start_seconds: float, end_seconds: float,
                 chunk_seconds: float) -> list[dict[str, str]]:
    """`last_over_time(selector[chunk])` at each chunk end: every series' last value in the
    range, as its labels with the value under `__value__` (later chunks replace earlier ones)."""
    latest: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for chunk in _chunks(start_seconds, end_seconds, chunk_seconds):
        promql = f"last_over_time({selector}[{_duration(chunk[1] - chunk[0])}])"
        for sample in client.instant_query(promql, chunk[1]):
            key = tuple(sorted(sample.labels.items()))
            latest[key] = {**sample.labels, "__value__": repr(sample.value)}
    return list(latest.values())


def _chunks(start_seconds: float, end_seconds: float, chunk_seconds: float) -> list[tuple[float, float]]:
    """Consecutive (start, end) pieces of the range, none longer than `chunk_seconds`."""
    count = max(1, math.ceil((end_seconds - start_seconds) / chunk_seconds - 1e-9))
    edges = [start_seconds + i * chunk_seconds for i in range(count)] + [end_seconds]
    return list(zip(edges, edges[1:]))


def _duration(seconds: float) -> str:
    return f"{max(int(math.ceil(seconds)), 1)}s"


def _job_key(labels: Mapping[str, str]) -> JobKey | None:
    namespace, job = object_label(labels, "namespace"), labels.get("job_name")
    return (namespace, job) if namespace and job else None


def _pod_key(labels: Mapping[str, str]) -> PodKey | None:
    namespace, pod = object_label(labels, "namespace"), object_label(labels, "pod")
    return (namespace, pod) if namespace and pod else None


@dataclass
class PodLife:
    """One pod of a run, from kube-state-metrics."""

    namespace: str
    pod: str
    job: str
    start_seconds: float = math.nan
    completion_seconds: float = math.nan
    phase: str = ""
    terminated_reasons: set[str] = field(default_factory=set)
    present_at_end: bool = False

    @property
    def outcome(self) -> str:
        if self.phase in ("Succeeded", "Failed"):
            return self.phase.lower()
        if not self.phase and self.terminated_reasons:
            return "succeeded" if self.terminated_reasons == {"Completed"} else "failed"
        return "running" if self.present_at_end else "unknown"

    @property
    def finished(self) -> bool:
        return self.outcome in ("succeeded", "failed")


@dataclass
class JobRun:
    """One Job run, from kube-state-metrics."""

    namespace: str
    job: str
    cronjob: str = ""
    start_seconds: float = math.nan
    completion_seconds: float = math.nan
    complete: bool = False
    failed: bool = False
    succeeded_pods: float = math.nan
    completions: float = math.nan
    parallelism: float = math.nan
    present_at_end: bool = False
    pods: list[PodLife] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.complete or math.isfinite(self.completion_seconds):
            return "succeeded"
        if self.failed:
            return "failed"
        return "running" if self.present_at_end else "unknown"

    def end_seconds(self, range_end_seconds: float) -> float:
        outcome = self.outcome
        if outcome == "succeeded" and math.isfinite(self.completion_seconds):
            return self.completion_seconds
        if outcome in ("succeeded", "failed"):
            ends = [p.completion_seconds for p in self.pods if math.isfinite(p.completion_seconds)]
            return max(ends) if ends else math.nan
        return range_end_seconds if outcome == "running" else math.nan


def read_job_runs(client: PrometheusClient, start_seconds: float, end_seconds: float,
                  chunk_seconds: float = DEFAULT_LOOKUP_CHUNK_SECONDS) -> list[JobRun]:
    """The Job runs that started in [start, end), with their pods (see the module docstring)."""
    def values(selector: str) -> list[dict[str, str]]:
        return _last_values(client, selector, start_seconds, end_seconds, chunk_seconds)

    runs: dict[JobKey, JobRun] = {}
    for labels in values("kube_job_status_start_time"):
        key = _job_key(labels)
        started = float(labels["__value__"])
        if key is not None and start_seconds <= started < end_seconds:
            runs[key] = JobRun(key[0], key[1], start_seconds=started)
    owners = load_owner_index(client, start_seconds, end_seconds, chunk_seconds)
    for key, run in runs.items():
        owner = owners.job_owner(*key)
        run.cronjob = owner.name if owner is not None and owner.kind == "CronJob" else ""

    def each(selector: str) -> Iterable[tuple[JobRun, float, Mapping[str, str]]]:
        return _matching(values(selector), _job_key, runs)

    for run, value, _ in each("kube_job_status_completion_time"):
        run.completion_seconds = value
    for run, value, _ in each('kube_job_complete{condition="true"}'):
        run.complete = run.complete or value == 1
    for run, value, _ in each('kube_job_failed{condition="true"}'):
        run.failed = run.failed or value == 1
    for run, value, labels in each("kube_job_status_failed"):
        run.failed = run.failed or (labels.get("reason", "") in JOB_FAILURE_REASONS and value == 1)
    for run, value, _ in each("kube_job_status_succeeded"):
        run.succeeded_pods = value
    for run, value, _ in each("kube_job_spec_completions"):
        run.completions = value
    for run, value, _ in each("kube_job_spec_parallelism"):
        run.parallelism = value
    for run, _, _ in _matching(_present_at_end(client, "kube_job_status_start_time", end_seconds), _job_key, runs):
        run.present_at_end = True

    pods: dict[PodKey, PodLife] = {}
    for namespace, pod in owners.pod_owners:
        owner = owners.pod_owner(namespace, pod)
        if owner is not None and owner.kind == "Job" and (namespace, owner.name) in runs:
            life = pods[(namespace, pod)] = PodLife(namespace, pod, owner.name)
            runs[(namespace, owner.name)].pods.append(life)
    _read_pod_lives(client, pods, values, end_seconds)
    return sorted(runs.values(), key=lambda r: (r.start_seconds, r.namespace, r.job))


def _read_pod_lives(client: PrometheusClient, pods: Mapping[PodKey, PodLife], values: Any, end_seconds: float) -> None:
    def each(selector: str) -> Iterable[tuple[PodLife, float, Mapping[str, str]]]:
        return _matching(values(selector), _pod_key, pods)

    for pod, value, _ in each("kube_pod_start_time"):
        pod.start_seconds = value
    for pod, value, _ in each("kube_pod_completion_time"):
        pod.completion_seconds = value
    for pod, value, labels in each("kube_pod_status_phase"):
        if value == 1:
            pod.phase = labels.get("phase", "")
    for pod, value, labels in each("kube_pod_container_status_terminated_reason"):
        if value == 1:
            pod.terminated_reasons.add(labels.get("reason", ""))
    for pod, _, _ in _matching(_present_at_end(client, "kube_pod_start_time", end_seconds), _pod_key, pods):
        pod.present_at_end = True


def _present_at_end(client: PrometheusClient, metric: str, end_seconds: float) -> list[dict[str, str]]:
    """The series of `metric` with a sample shortly before the end, their value under `__value__`."""
    promql = f"last_over_time({metric}[{_duration(PRESENT_AT_END_SECONDS)}])"
    return [{**s.labels, "__value__": repr(s.value)} for s in client.instant_query(promql, end_seconds)]


def _matching(found: Iterable[Mapping[str, str]], key_of: Callable[[Mapping[str, str]], Any],
              table: Mapping[Any, Item]) -> Iterator[tuple[Item, float, Mapping[str, str]]]:
    """(the object in `table` a series names, the series' value, its labels), for the series
    whose object `table` holds."""
    for labels in found:
        key = key_of(labels)
        if key in table:
            yield table[key], float(labels["__value__"]), labels


# -- Kepler -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodEnergy:
    """A pod's energy over its life from one Kepler counter family."""

    joules: float
    terminated_sample: bool  # Kepler 0.10+: a state="terminated" sample holds its final value


def lifetime_joules(values: Sequence[float]) -> float:
    """Energy counted by one counter series over its samples: the first value (counted from 0)
    plus each increase; a lower value is a reset, after which the new value counts from 0."""
    counter = np.asarray(values, dtype=np.float64)
    if not len(counter):
        return 0.0
    steps = np.diff(counter)
    return float(counter[0] + np.where(steps >= 0, steps, counter[1:]).sum())


def read_pod_lifetime_energy(client: PrometheusClient, query: EnergyQuery, lives: Mapping[PodKey, tuple[float, float]],
                             chunk_seconds: float) -> dict[PodKey, PodEnergy]:
    """Each pod's energy over (start, end) from the stored samples of `query`'s counters (see the
    module docstring); pods without a series are absent from the answer.

    Pods are read `PODS_PER_ENERGY_READ` at a time, and each batch's samples become its pods'
    joules before the next batch is read: every pod is in one batch only, so only one batch's
    samples are ever held. (They were all kept until the end before: at 2,000 simulated
    workloads `train runs` peaked at 304, 367 and 471 MiB over 1, 3 and 7 days; now 289, 314 and
    347 MiB, the rest being the Jobs' and pods' own series, one entry per object.)"""
    by_start = sorted(lives, key=lambda key: lives[key][0])
    energy: dict[PodKey, PodEnergy] = {}
    for first in range(0, len(by_start), PODS_PER_ENERGY_READ):
        energy.update(_batch_energy(_batch_samples(client, query, by_start[first:first + PODS_PER_ENERGY_READ], lives,
                                                   chunk_seconds)))
    return energy


_Samples = dict[PodKey, list[tuple[tuple[tuple[str, str], ...], tuple[tuple[float, float], ...], bool]]]


def _batch_samples(client: PrometheusClient, query: EnergyQuery, batch: Sequence[PodKey],
                   lives: Mapping[PodKey, tuple[float, float]], chunk_seconds: float) -> _Samples:
    """The batch's pods' series: per pod, (labels but state, samples, whether state="terminated")."""
    names = "|".join(sorted({re.escape(pod) for _, pod in batch}))
    selector = "{" + ", ".join([*query.matchers, f'{query.pod_label}=~"{_escape(names)}"']) + "}"
    read_start = min(lives[key][0] for key in batch) - ENERGY_READ_MARGIN_SECONDS
    read_end = max(lives[key][1] for key in batch) + ENERGY_READ_MARGIN_SECONDS
    wanted = set(batch)
    found: _Samples = {}
    for series in client.raw_samples(selector, read_start, read_end, chunk_seconds):
        key = (series.labels.get(query.namespace_label, ""), series.labels.get(query.pod_label, ""))
        if key not in wanted:
            continue
        identity = tuple(sorted((k, v) for k, v in series.labels.items() if k != "state"))
        found.setdefault(key, []).append((identity, series.points, series.labels.get("state") == "terminated"))
    return found


def _batch_energy(found: _Samples) -> dict[PodKey, PodEnergy]:
    """Per pod, its series' (identity, samples, terminated) summed into one lifetime energy."""
    energy: dict[PodKey, PodEnergy] = {}
    for key, parts in found.items():
        # A pod's running and terminated series of one counter are one counter: merge by time.
        merged: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
        for identity, points, _ in parts:
            for timestamp, value in points:
                held = merged.setdefault(identity, {})
                held[timestamp] = max(value, held.get(timestamp, value))
        joules = sum(lifetime_joules([v for _, v in sorted(points.items())]) for points in merged.values())
        energy[key] = PodEnergy(joules, any(terminated for _, _, terminated in parts))
    return energy


def _escape(value: str) -> str:
    """A PromQL string literal's inside (a regex's backslashes doubled)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


# -- the runs table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunsCollection:
    frame: pd.DataFrame
    kepler_line: KeplerLine
    gpu_source: GpuSource | None


def collect_runs(
    prom_url: str | PrometheusClient,
    start: datetime | float | str,
    end: datetime | float | str,
    *,
    kepler_line: KeplerLine | str | None = None,
    container_selection: ContainerEnergySelection | None = None,
    zones: tuple[str, ...] | None = None,
    gpu: GpuChoice | str = GpuChoice.AUTO,
    gpu_window_seconds: int = 60,
    lookup_chunk_seconds: float = DEFAULT_LOOKUP_CHUNK_SECONDS,
    raw_chunk_seconds: float = DEFAULT_RAW_CHUNK_SECONDS,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    retry: RetryPolicy = NO_RETRY,
) -> RunsCollection:
    """The runs table for the Job runs that started in [start, end) (see the module docstring).
    `retry` applies when a URL is given (a ready client brings its own)."""
    client = prom_url if isinstance(prom_url, PrometheusClient) else PrometheusClient(
        prom_url, timeout_seconds=timeout_seconds, retry=retry)
    start_seconds, end_seconds = parse_time_seconds(start), parse_time_seconds(end)
    if not end_seconds > start_seconds:
        raise ValueError(f"the end ({end_seconds:.0f}) is not after the start ({start_seconds:.0f})")
    runs = read_job_runs(client, start_seconds, end_seconds, lookup_chunk_seconds)
    line = KeplerLine(kepler_line) if kepler_line is not None else detect_kepler_line(client, start_seconds, end_seconds)
    # Every state of Kepler 0.10: the terminated sample holds the energy after the last running scrape.
    pod_selection = PodEnergySelection(zones=zones or PodEnergySelection().zones, states=None)
    lives = {(p.namespace, p.pod): _pod_span(p, run, end_seconds) for run in runs for p in run.pods}
    lives = {key: span for key, span in lives.items() if math.isfinite(span[0])}
    query = build_energy_query(line, 60, container_selection, pod_selection)
    cpu = read_pod_lifetime_energy(client, query, lives, raw_chunk_seconds)

    gpu_source = choose_gpu_source(client, gpu, line, start_seconds, end_seconds)
    gpu_joules: dict[PodKey, float] = {}
    if gpu_source is not None:
        kepler_gpu: dict[PodKey, float] = {}
        if gpu_source is GpuSource.KEPLER or selection_counts_gpu(line, container_selection):
            gpu_query = build_gpu_energy_query(line, 60, container_selection, pod_selection)
            kepler_gpu = {k: e.joules for k, e in read_pod_lifetime_energy(client, gpu_query, lives, raw_chunk_seconds).items()}
        if selection_counts_gpu(line, container_selection):
            # Kepler <= 0.9's container total holds its own GPU estimate: take it out once.
            cpu = {k: PodEnergy(max(e.joules - kepler_gpu.get(k, 0.0), 0.0), e.terminated_sample) for k, e in cpu.items()}
        gpu_joules = kepler_gpu if gpu_source is GpuSource.KEPLER else _dcgm_lifetime_joules(
            client, lives, start_seconds, end_seconds, gpu_window_seconds)
    frame = _runs_frame(runs, cpu, gpu_joules, lives, line, end_seconds)
    return RunsCollection(frame, line, gpu_source)


def _pod_span(pod: PodLife, run: JobRun, range_end_seconds: float) -> tuple[float, float]:
    """(start, end) of a pod's life: see the module docstring."""
    if math.isfinite(pod.completion_seconds):
        end = pod.completion_seconds
    elif pod.present_at_end and not pod.finished:
        end = range_end_seconds
    else:
        end = run.end_seconds(range_end_seconds)
    return pod.start_seconds, end


def _dcgm_lifetime_joules(client: PrometheusClient, lives: Mapping[PodKey, tuple[float, float]],
                          start_seconds: float, end_seconds: float, window_seconds: int) -> dict[PodKey, float]:
    """dcgm-exporter's per-pod GPU energy in the range's windows, summed per pod of a run."""
    count = int(math.floor((end_seconds - start_seconds) / window_seconds + 1e-9))
    if count < 1:
        return {}
    chunks = split_evaluation_range(start_seconds + window_seconds, start_seconds + count * window_seconds, window_seconds)
    dcgm = read_dcgm_energy(client, chunks, window_seconds)
    totals: dict[PodKey, float] = {}
    for namespace, pod, joules in zip(dcgm.namespaces, dcgm.pods, dcgm.energy_joules):
        if (namespace, pod) in lives:
            totals[(namespace, pod)] = totals.get((namespace, pod), 0.0) + float(joules)
    return totals


def _runs_frame(runs: Sequence[JobRun], cpu: Mapping[PodKey, PodEnergy], gpu: Mapping[PodKey, float],
                lives: Mapping[PodKey, tuple[float, float]], line: KeplerLine, range_end_seconds: float) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    for run in runs:
        end = run.end_seconds(range_end_seconds)
        energy = gpu_energy = 0.0
        measured, missing, partial = 0, [], []
        pod_seconds = 0.0
        for pod in sorted(run.pods, key=lambda p: (p.start_seconds, p.pod)):
            key = (pod.namespace, pod.pod)
            if key not in lives:
                continue  # never started (no start time): no time, no energy
            span = lives[key]
            pod_seconds += span[1] - span[0]
            if key not in cpu and key not in gpu:
                missing.append(pod.pod)
                continue
            measured += 1
            found = cpu.get(key)
            energy += (found.joules if found else 0.0) + gpu.get(key, 0.0)
            gpu_energy += gpu.get(key, 0.0)
            if line is KeplerLine.POD_COUNTERS and pod.finished and not (found and found.terminated_sample):
                partial.append(pod.pod)
        records.append({
            "namespace": run.namespace,
            "job_name": run.job,
            "cronjob_name": run.cronjob,
            "workload_kind": "CronJob" if run.cronjob else "Job",
            "workload_name": run.cronjob or run.job,
            "outcome": run.outcome,
            "start_time": run.start_seconds,
            "end_time": end if run.outcome in ("succeeded", "failed") else math.nan,
            "run_seconds": end - run.start_seconds,
            "pod_seconds": pod_seconds,
            "pods": len(run.pods),
            "pods_succeeded": sum(p.outcome == "succeeded" for p in run.pods),
            "pods_failed": sum(p.outcome == "failed" for p in run.pods),
            "completions": run.completions,
            "parallelism": run.parallelism,
            "energy_joules": energy,
            "gpu_energy_joules": gpu_energy,
            "pods_with_energy": measured,
            "pods_without_energy": len(missing),
            "pods_without_final_energy": len(partial),
            "missing_energy_pods": " ".join(missing + partial),
            "energy_complete": not missing and not partial,
            "kepler_line": line.value,
        })
    frame = pd.DataFrame.from_records(records, columns=list(RUN_COLUMNS))
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column].astype("float64") * 1000.0, unit="ms", utc=True)
    for column in ("pods", "pods_succeeded", "pods_failed", "pods_with_energy", "pods_without_energy",
                   "pods_without_final_energy"):
        frame[column] = frame[column].astype("int64")
    for column in ("run_seconds", "pod_seconds", "completions", "parallelism", "energy_joules", "gpu_energy_joules"):
        frame[column] = frame[column].astype("float64")
    frame["energy_complete"] = frame["energy_complete"].astype("bool")
    return frame


# -- files and the command ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunsSummary:
    """What `run_runs` wrote."""

    path: Path
    runs: int
    by_outcome: dict[str, int]
    pods: int
    pods_without_energy: int
    pods_without_final_energy: int
    runs_energy_complete: int
    energy_joules: float
    kepler_line: str
    gpu_source: str | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}

    def describe(self) -> str:
        outcomes = ", ".join(f"{n} {o}" for o, n in self.by_outcome.items() if n)
        return (f"runs: {self.runs} ({outcomes or 'none'}), {self.pods} pods, {self.energy_joules:.1f} J "
                f"({self.kepler_line}; GPU: {self.gpu_source or 'none'}); energy complete for "
                f"{self.runs_energy_complete} runs; pods Kepler does not have: {self.pods_without_energy} without "
                f"energy, {self.pods_without_final_energy} without their final sample -> {self.path}")


def write_runs(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """The runs table as Parquet, atomically."""
    return write_atomically(path, lambda temp: frame[list(RUN_COLUMNS)].to_parquet(temp, index=False))


def read_runs(path: str | os.PathLike[str]) -> pd.DataFrame:
    frame = read_parquet_input(path, "a runs table (train runs' output)")
    missing = [c for c in RUN_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a runs table: it lacks columns {missing}")
    return frame


def run_runs(prom_url: str, start: str | float, end: str | float, out: str | os.PathLike[str], *,
             kepler_line: str | None = None, modes: Sequence[str] | None = None,
             components: Sequence[str] | None = None, zones: Sequence[str] | None = None,
             gpu: str = GpuChoice.AUTO.value, gpu_step: str | float = "60s", chunk: str | float = "6h",
             timeout: str | float = "30s", retry: RetryPolicy = RetryPolicy()) -> RunsSummary:
    """`energetiscope train runs`: collect the runs table, write it to `out` and its summary to
    `<out>.summary.json`. Plain strings in, as `trainer.labels.run_labels` takes them. Nothing is
    written unless every read succeeded (within `retry`)."""
    defaults = ContainerEnergySelection()
    container_selection = ContainerEnergySelection(components=tuple(components) if components else defaults.components,
                                                   modes=tuple(modes) if modes else defaults.modes)
    gpu_window = parse_duration_seconds(gpu_step)
    if not float(gpu_window).is_integer():
        raise ValueError(f"--gpu-step must be whole seconds, got {gpu_step!r}")
    collection = collect_runs(prom_url, start, end, kepler_line=kepler_line, container_selection=container_selection,
                              zones=tuple(zones) if zones else None, gpu=gpu, gpu_window_seconds=int(gpu_window),
                              raw_chunk_seconds=parse_duration_seconds(chunk),
                              timeout_seconds=parse_duration_seconds(timeout), retry=retry)
    frame = collection.frame
    path = write_runs(frame, out)
    summary = RunsSummary(
        path=path,
        runs=len(frame),
        by_outcome={o: int((frame["outcome"] == o).sum()) for o in OUTCOMES},
        pods=int(frame["pods"].sum()),
        pods_without_energy=int(frame["pods_without_energy"].sum()),
        pods_without_final_energy=int(frame["pods_without_final_energy"].sum()),
        runs_energy_complete=int(frame["energy_complete"].sum()),
        energy_joules=float(frame["energy_joules"].sum()),
        kepler_line=collection.kepler_line.value,
        gpu_source=collection.gpu_source.value if collection.gpu_source is not None else None,
    )
    write_text_atomically(Path(path).with_name(Path(path).name + ".summary.json"),
                          json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
