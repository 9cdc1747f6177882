"""Job runs for the runs step's real-Prometheus tests: kube-state-metrics job and pod series in
the exact families and labels its job and pod stores write, and Kepler counters over each pod's
life, with what every run must come out as (wall time, pod-seconds, joules, outcome, pods whose
energy Kepler does not have).

One scenario of three hours at 30 s scrapes, written twice in disjoint time ranges: with Kepler
0.10 pod counters (zones package, dram and core, which must not be added; a `state="terminated"`
sample with the final value after a pod ends, as Kepler's terminated-pod tracker exports it
once; Kepler's own GPU counter for one pod) and with Kepler 0.7 container counters (two
containers, modes dynamic and idle; a series just stops when its container ends). Runs:

* `nightly-report-*`: a CronJob's three runs; Kepler restarts during the second;
* `migrate`: a Job whose first pod fails (Error) and whose retry succeeds; its pods have no
  `kube_pod_status_phase`, so their outcome comes from the containers' terminated reasons;
* `render`: a parallel Job (completions 3, parallelism 3);
* `tiny`: a Job whose only pod Kepler never reported (ended between scrapes under 10 J);
* `etl`: a Job that fails (BackoffLimitExceeded) after two failed pods; Kepler 0.10 has no
  terminated sample for the second (dropped under its 10 J or 500-pod rule);
* `train`: a Job still running at the end of the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tests.trainer.kepler_datasets import (
    KEPLER_TARGET_LABELS,
    OpenMetricsWriter,
    _ksm_labels,
    _owner_labels,
    _stable_hex,
)

SCRAPE_SECONDS = 30
RANGE_SECONDS = 10_800
NAMESPACE = "batch"
ZONE_SHARES = {"package": 0.8, "dram": 0.2}  # core is inside package: written, never to be added
CORE_SHARE_OF_PACKAGE = 0.7
CONTAINER_SHARES = {"main": 0.7, "sidecar": 0.3}
MODE_SHARES = {"dynamic": 0.8, "idle": 0.2}
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


@dataclass(frozen=True)
class PodPlan:
    name: str
    start: int  # seconds after the range start
    end: int | None  # None: still running at the end of the range
    failed: bool = False
    watts: float = 10.0
    kepler: str = "full"  # "full", "no-final" (no terminated sample), "absent" (no series)
    restart_at: int | None = None  # a scrape time after which Kepler's counters start again from 0
    gpu_watts: float = 0.0  # Kepler 0.10's kepler_pod_gpu_joules_total


@dataclass(frozen=True)
class JobPlan:
    name: str
    pods: tuple[PodPlan, ...]
    cronjob: str = ""
    completions: int = 1
    parallelism: int = 1
    outcome: str = "succeeded"  # succeeded, failed, running
    phase_series: bool = True
    honor_labels: bool = True

    @property
    def start(self) -> int:
        return min(p.start for p in self.pods) - 2  # acknowledged by the Job controller first

    @property
    def end(self) -> int | None:
        return None if self.outcome == "running" else max(p.end or 0 for p in self.pods)


JOBS: tuple[JobPlan, ...] = (
    JobPlan("nightly-report-28930100", (PodPlan("nightly-report-28930100-7xk2p", 605, 1010, watts=12.5),),
            cronjob="nightly-report"),
    JobPlan("nightly-report-28930160", (PodPlan("nightly-report-28930160-q9w4d", 3605, 4120, watts=14.0, restart_at=3900),),
            cronjob="nightly-report", honor_labels=False),
    JobPlan("nightly-report-28930220", (PodPlan("nightly-report-28930220-m2v8c", 6605, 7055, watts=11.0),),
            cronjob="nightly-report"),
    JobPlan("migrate", (PodPlan("migrate-h7d2k", 1205, 1500, failed=True, watts=20.0),
                        PodPlan("migrate-p4x9s", 1512, 1903, watts=21.0)), phase_series=False),
    JobPlan("render", (PodPlan("render-0-b5n7t", 2005, 2600, watts=30.0, gpu_watts=150.0),
                       PodPlan("render-1-c8m2w", 2006, 2710, watts=25.0),
                       PodPlan("render-2-d3k6z", 2008, 2655, watts=28.0)), completions=3, parallelism=3,
            honor_labels=False),
    JobPlan("tiny", (PodPlan("tiny-r2d2x", 4005, 4020, watts=0.4, kepler="absent"),)),
    JobPlan("etl", (PodPlan("etl-f6g7h", 5005, 5300, failed=True, watts=18.0),
                    PodPlan("etl-j8k9l", 5310, 5600, failed=True, watts=17.0, kepler="no-final")), outcome="failed"),
    JobPlan("train", (PodPlan("train-w1e2r", 9005, None, watts=40.0),), outcome="running"),
)


@dataclass(frozen=True)
class ExpectedRun:
    job_name: str
    cronjob_name: str
    outcome: str
    run_seconds: float
    pod_seconds: float
    energy_joules: float
    gpu_energy_joules: float
    pods: int
    pods_failed: int
    pods_without_energy: int
    pods_without_final_energy: int


@dataclass(frozen=True)
class RunScenario:
    line: str
    openmetrics: str
    start_seconds: int
    end_seconds: int
    expected: dict[str, ExpectedRun]


def _scrapes(origin: int) -> list[int]:
    return [origin + k * SCRAPE_SECONDS for k in range(RANGE_SECONDS // SCRAPE_SECONDS + 1)]


def _counter_samples(pod: PodPlan, watts: float, origin: int, terminated: bool) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(running samples, terminated samples) of one counter of `watts`: joules since the pod
    started (or since Kepler restarted), at the scrapes while it runs; the terminated sample
    holds the final value at the first scrape after it ended."""
    end = pod.end if pod.end is not None else RANGE_SECONDS
    running: list[tuple[int, float]] = []
    for t in _scrapes(0):
        if pod.start < t < end or (pod.end is None and pod.start < t <= end):
            since = pod.restart_at if pod.restart_at is not None and t > pod.restart_at else pod.start
            running.append((origin + t, watts * (t - since)))
    finals: list[tuple[int, float]] = []
    if terminated and pod.end is not None:
        since = pod.restart_at if pod.restart_at is not None and pod.end > pod.restart_at else pod.start
        first_after = next(t for t in _scrapes(0) if t >= pod.end)
        finals.append((origin + first_after, watts * (pod.end - since)))
    return running, finals


def _measured_seconds(pod: PodPlan, line: str) -> float:
    """The pod's seconds Kepler's samples cover: its whole life with a final sample, else up to
    its last running scrape."""
    if pod.kepler == "absent":
        return 0.0
    if pod.end is None:
        return max(t for t in _scrapes(0) if t <= RANGE_SECONDS) - pod.start
    if line == "kepler-0.10" and pod.kepler == "full":
        return float(pod.end - pod.start)
    return max(t for t in _scrapes(0) if t < pod.end) - pod.start


def _kepler_series(writer: OpenMetricsWriter, pod: PodPlan, line: str, origin: int) -> None:
    if pod.kepler == "absent":
        return
    pod_id = f"{_stable_hex(NAMESPACE, pod.name, length=8)}-0000-4000-8000-{_stable_hex(pod.name, length=12)}"
    if line == "kepler-0.10":
        terminated = pod.kepler == "full"
        zones = {**ZONE_SHARES, "core": ZONE_SHARES["package"] * CORE_SHARE_OF_PACKAGE}
        counters = [("kepler_pod_cpu_joules", {"zone": zone}, share * pod.watts) for zone, share in zones.items()]
        if pod.gpu_watts:
            counters.append(("kepler_pod_gpu_joules", {}, pod.gpu_watts))
        for family, extra, watts in counters:
            labels = {"node_name": "worker-a", "pod_id": pod_id, "pod_name": pod.name, "pod_namespace": NAMESPACE,
                      **extra, **KEPLER_TARGET_LABELS}
            running, finals = _counter_samples(pod, watts, origin, terminated)
            writer.add(family, "counter", {**labels, "state": "running"}, running)
            if finals:
                writer.add(family, "counter", {**labels, "state": "terminated"}, finals)
        return
    for container, container_share in CONTAINER_SHARES.items():
        for mode, mode_share in MODE_SHARES.items():
            labels = {"container_id": _stable_hex(pod.name, container, length=64), "container_name": container,
                      "container_namespace": NAMESPACE, "mode": mode, "pod_name": pod.name, **KEPLER_TARGET_LABELS}
            running, _ = _counter_samples(pod, container_share * mode_share * pod.watts, origin, terminated=False)
            writer.add("kepler_container_joules", "counter", labels, running)


def _gauge(writer: OpenMetricsWriter, family: str, labels: dict[str, str], origin: int, first: int,
           value: object, last: int = RANGE_SECONDS) -> None:
    """A gauge at every scrape in [first, last]; `value` is a number or a function of the
    scrape's offset returning a number or None (no sample)."""
    samples = []
    for t in _scrapes(0):
        if first <= t <= last:
            v = value(t) if callable(value) else value
            if v is not None:
                samples.append((origin + t, float(v)))
    if samples:
        writer.add(family, "gauge", labels, samples)


def _ksm_series(writer: OpenMetricsWriter, job: JobPlan, origin: int) -> None:
    honor = job.honor_labels
    first_scrape = next(t for t in _scrapes(0) if t >= job.start)
    end = job.end

    def job_labels(**extra: str) -> dict[str, str]:
        return _ksm_labels(NAMESPACE, {"job_name": job.name, **extra}, honor)

    owner = _owner_labels("CronJob", job.cronjob) if job.cronjob else _owner_labels("<none>", "<none>")
    _gauge(writer, "kube_job_owner", job_labels(**owner), origin, first_scrape, 1)
    _gauge(writer, "kube_job_info", job_labels(), origin, first_scrape, 1)
    _gauge(writer, "kube_job_spec_completions", job_labels(), origin, first_scrape, job.completions)
    _gauge(writer, "kube_job_spec_parallelism", job_labels(), origin, first_scrape, job.parallelism)
    _gauge(writer, "kube_job_status_start_time", job_labels(), origin, first_scrape, origin + job.start)
    _gauge(writer, "kube_job_status_active", job_labels(), origin, first_scrape,
           lambda t: sum(p.start <= t and (p.end is None or t < p.end) for p in job.pods))
    _gauge(writer, "kube_job_status_succeeded", job_labels(), origin, first_scrape,
           lambda t: sum(p.end is not None and p.end <= t and not p.failed for p in job.pods))
    done = end is not None
    # status.failed: the count without a reason while the Job has not failed; once it has, one
    # series per known reason, 1 for the Job's own.
    failed_at = end if job.outcome == "failed" and end is not None else None
    _gauge(writer, "kube_job_status_failed", job_labels(), origin, first_scrape,
           lambda t: None if failed_at is not None and t >= failed_at
           else sum(p.end is not None and p.end <= t and p.failed for p in job.pods))
    if failed_at is not None:
        for reason in ("BackoffLimitExceeded", "DeadlineExceeded", "Evicted"):
            _gauge(writer, "kube_job_status_failed", job_labels(reason=reason), origin, failed_at,
                   1 if reason == "BackoffLimitExceeded" else 0)
    if done:
        assert end is not None
        finished = "true" if job.outcome == "succeeded" else "false"
        failed = "true" if job.outcome == "failed" else "false"
        for condition in ("true", "false", "unknown"):
            _gauge(writer, "kube_job_complete", job_labels(condition=condition), origin, end, int(condition == finished))
            _gauge(writer, "kube_job_failed", job_labels(condition=condition), origin, end, int(condition == failed))
        if job.outcome == "succeeded":
            _gauge(writer, "kube_job_status_completion_time", job_labels(), origin, end, origin + end)
    for pod in job.pods:
        _pod_series(writer, job, pod, origin)


def _pod_series(writer: OpenMetricsWriter, job: JobPlan, pod: PodPlan, origin: int) -> None:
    uid = f"{_stable_hex(pod.name, length=8)}-1111-4000-8000-{_stable_hex(pod.name, 'uid', length=12)}"
    first = next(t for t in _scrapes(0) if t >= pod.start)

    def pod_labels(**extra: str) -> dict[str, str]:
        return _ksm_labels(NAMESPACE, {"uid": uid, **extra}, job.honor_labels, pod.name)

    _gauge(writer, "kube_pod_owner", pod_labels(**_owner_labels("Job", job.name)), origin, first, 1)
    _gauge(writer, "kube_pod_start_time", pod_labels(), origin, first, origin + pod.start)
    if pod.end is not None:
        _gauge(writer, "kube_pod_completion_time", pod_labels(), origin, pod.end, origin + pod.end)
        reason = "Error" if pod.failed else "Completed"
        _gauge(writer, "kube_pod_container_status_terminated_reason", pod_labels(container="main", reason=reason),
               origin, pod.end, 1)
    if job.phase_series:
        final = "Failed" if pod.failed else "Succeeded"
        for phase in PHASES:
            _gauge(writer, "kube_pod_status_phase", pod_labels(phase=phase), origin, first,
                   lambda t, phase=phase: int(phase == ("Running" if pod.end is None or t < pod.end else final)))


def run_scenario(line: str, origin: int) -> RunScenario:
    """The scenario's series from `origin` (Unix seconds, on the scrape grid) for one Kepler line."""
    writer = OpenMetricsWriter()
    expected: dict[str, ExpectedRun] = {}
    for job in JOBS:
        _ksm_series(writer, job, origin)
        for pod in job.pods:
            _kepler_series(writer, pod, line, origin)
        end = job.end if job.end is not None else RANGE_SECONDS
        gpu = sum(p.gpu_watts * _measured_seconds(p, line) for p in job.pods) if line == "kepler-0.10" else 0.0
        expected[job.name] = ExpectedRun(
            job_name=job.name,
            cronjob_name=job.cronjob,
            outcome=job.outcome,
            run_seconds=float(end - job.start),
            pod_seconds=float(sum((p.end if p.end is not None else RANGE_SECONDS) - p.start for p in job.pods)),
            energy_joules=sum(p.watts * _measured_seconds(p, line) for p in job.pods) + gpu,
            gpu_energy_joules=gpu,
            pods=len(job.pods),
            pods_failed=sum(p.failed for p in job.pods),
            pods_without_energy=sum(p.kepler == "absent" for p in job.pods),
            pods_without_final_energy=sum(p.kepler == "no-final" for p in job.pods) if line == "kepler-0.10" else 0,
        )
    assert math.isclose(origin % SCRAPE_SECONDS, 0)
    return RunScenario(line, writer.render(), origin, origin + RANGE_SECONDS, expected)
