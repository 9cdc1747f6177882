"""Which workload owns a pod, from kube-state-metrics series in Prometheus.

A pod's owner comes from `kube_pod_owner{namespace, pod, owner_kind, owner_name}`; one more hop
follows `kube_replicaset_owner` (ReplicaSet -> Deployment) and `kube_job_owner` (Job -> CronJob).
Nothing is guessed from names. A pod with no owner series is its own workload (kind Pod), unless
an optional `OwnerFallback` (the seam for a later Kubernetes API lookup) knows better.

kube-state-metrics writes the object's namespace and pod in labels that clash with Prometheus'
target labels. Scraped with honor_labels (the usual kube-prometheus setup) the object's values
stay in `namespace`/`pod`; without it Prometheus renames them `exported_namespace`/`exported_pod`
and `namespace`/`pod` then name the kube-state-metrics pod itself. The `exported_` label wins
whenever it is present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trainer.prometheus import PrometheusClient

# What kube-state-metrics writes in owner_kind/owner_name for an object without owner.
KSM_NO_OWNER = "<none>"
POD_OWNER_METRIC = "kube_pod_owner"
REPLICASET_OWNER_METRIC = "kube_replicaset_owner"
JOB_OWNER_METRIC = "kube_job_owner"
DEFAULT_LOOKUP_CHUNK_SECONDS = 86_400.0


@dataclass(frozen=True, order=True)
class WorkloadRef:
    """A workload: its kind (Deployment, StatefulSet, DaemonSet, CronJob, Job, Node, Pod, ...)
    and name, in the pod's namespace."""

    kind: str
    name: str


# The seam for a Kubernetes API fallback: given (namespace, pod) of a pod without owner series,
# return its workload, or None to let the pod be its own workload.
OwnerFallback = Callable[[str, str], "WorkloadRef | None"]


@dataclass(frozen=True, order=True)
class _OwnerCandidate:
    # Ordered so that max() prefers the controller owner, then a stable choice by kind and name.
    is_controller: bool
    ref: WorkloadRef


def object_label(labels: Mapping[str, str], name: str) -> str | None:
    """A kube-state-metrics object label (`namespace`, `pod`): the `exported_` one when present."""
    return labels.get(f"exported_{name}", labels.get(name))


@dataclass
class OwnerIndex:
    """Owner links read from kube-state-metrics, keyed by (namespace, object name)."""

    pod_owners: dict[tuple[str, str], set[_OwnerCandidate]] = field(default_factory=dict)
    replicaset_owners: dict[tuple[str, str], set[_OwnerCandidate]] = field(default_factory=dict)
    job_owners: dict[tuple[str, str], set[_OwnerCandidate]] = field(default_factory=dict)

    def add_series(self, labels: Mapping[str, str]) -> None:
        """Add one kube_pod_owner / kube_replicaset_owner / kube_job_owner label set."""
        metric = labels.get("__name__")
        if metric == POD_OWNER_METRIC:
            table, name_label = self.pod_owners, "pod"
        elif metric == REPLICASET_OWNER_METRIC:
            table, name_label = self.replicaset_owners, "replicaset"
        elif metric == JOB_OWNER_METRIC:
            table, name_label = self.job_owners, "job_name"
        else:
            raise ValueError(f"not an owner series: {dict(labels)!r}")
        namespace = object_label(labels, "namespace")
        name = object_label(labels, name_label)
        kind = labels.get("owner_kind", KSM_NO_OWNER)
        owner_name = labels.get("owner_name", KSM_NO_OWNER)
        if not namespace or not name:
            return
        key = (namespace, name)
        candidates = table.setdefault(key, set())
        if kind in ("", KSM_NO_OWNER) or owner_name in ("", KSM_NO_OWNER):
            return  # known to exist, known to have no owner
        candidates.add(
            _OwnerCandidate(
                is_controller=labels.get("owner_is_controller", "true") == "true",
                ref=WorkloadRef(kind=kind, name=owner_name),
            )
        )

    def pod_owner(self, namespace: str, pod: str) -> WorkloadRef | None:
        return _best(self.pod_owners.get((namespace, pod)))

    def replicaset_owner(self, namespace: str, replicaset: str) -> WorkloadRef | None:
        return _best(self.replicaset_owners.get((namespace, replicaset)))

    def job_owner(self, namespace: str, job: str) -> WorkloadRef | None:
        return _best(self.job_owners.get((namespace, job)))

    def knows_pod(self, namespace: str, pod: str) -> bool:
        """Whether kube-state-metrics reported the pod at all (possibly as ownerless)."""
        return (namespace, pod) in self.pod_owners


def _best(candidates: set[_OwnerCandidate] | None) -> WorkloadRef | None:
    return max(candidates).ref if candidates else None


def load_owner_index(
    client: PrometheusClient,
    start_seconds: float,
    end_seconds: float,
    lookup_chunk_seconds: float = DEFAULT_LOOKUP_CHUNK_SECONDS,
) -> OwnerIndex:
    """Read every owner series present between start and end, one series lookup per metric per
    chunk of `lookup_chunk_seconds` so a week of a churning cluster is not one huge answer."""
    index = OwnerIndex()
    matchers = [POD_OWNER_METRIC, REPLICASET_OWNER_METRIC, JOB_OWNER_METRIC]
    chunk_start = start_seconds
    while True:
        chunk_end = min(chunk_start + lookup_chunk_seconds, end_seconds)
        for labels in client.series(matchers, chunk_start, chunk_end):
            index.add_series(labels)
        if chunk_end >= end_seconds:
            return index
        chunk_start = chunk_end


class OwnerResolver:
    """Maps (namespace, pod) to its workload, following at most one hop past the pod's owner."""

    def __init__(self, index: OwnerIndex, fallback: OwnerFallback | None = None) -> None:
        self._index = index
        self._fallback = fallback
        self._cache: dict[tuple[str, str], WorkloadRef] = {}

    def resolve(self, namespace: str, pod: str) -> WorkloadRef:
        key = (namespace, pod)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._resolve(namespace, pod)
        return cached

    def _resolve(self, namespace: str, pod: str) -> WorkloadRef:
        owner = self._index.pod_owner(namespace, pod)
        if owner is None:
            # No owner series (or kube-state-metrics says "<none>"): ask the fallback when the
            # pod is unknown to kube-state-metrics; a pod it knows as ownerless is its own workload.
            if self._fallback is not None and not self._index.knows_pod(namespace, pod):
                found = self._fallback(namespace, pod)
                if found is not None:
                    return found
            return WorkloadRef(kind="Pod", name=pod)
        if owner.kind == "ReplicaSet":
            return self._index.replicaset_owner(namespace, owner.name) or owner
        if owner.kind == "Job":
            return self._index.job_owner(namespace, owner.name) or owner
        return owner

