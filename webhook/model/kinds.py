"""The workload kinds EnergetiScope predicts for, as one table.

What a kind is (the API versions that serve it, where its pod template lives, how many pods
run at once from its spec, whether it has a scale subresource) is read from here by
extraction, the budget webhook, its inventory, the Kubernetes client endpoints and the
trainer, so a new kind is one row. The table holds only what the manifests say; the client
methods that read a kind live in ``webhook.kube``, since the model core must not import the
``kubernetes`` client.

The controller-ownership rule lives here too: an object a controller owns (a Deployment's
ReplicaSets, a CronJob's Jobs, any controller's Pods) is stood for by its owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

PodCount = Literal["replicas", "parallelism", "one", "per-node"]
Scope = Literal["total", "per-node"]
# Whether the kind runs to completion: "once" (a Job), "scheduled" (a CronJob, one Job per
# schedule time) or "none" (pods that run until deleted).
RunsKind = Literal["none", "once", "scheduled"]

# The spec fields each way of counting pods reads, in the object that holds them.
_COUNT_FIELDS: dict[str, tuple[str, ...]] = {
    "replicas": ("replicas",),
    "parallelism": ("parallelism", "completions"),
    "one": (),
    "per-node": (),
}


@dataclass(frozen=True)
class Kind:
    """One workload kind: where the API serves it and how its spec makes pods."""

    name: str
    group: str  # API group, "" for the core group
    resource: str  # plural, as an AdmissionReview's request.resource names it
    api_versions: tuple[str, ...]  # served; the first is the one the client lists and watches
    pod_spec_path: tuple[str, ...]  # path of the pod template's spec inside the object
    pods: PodCount  # how the number of pods running at once follows from the spec
    count_path: tuple[str, ...] = ("spec",)  # the object that holds the count fields
    scalable: bool = False  # has a scale subresource (kubectl scale, autoscalers)
    # Runs to completion; its Job spec (activeDeadlineSeconds, completionMode, ...) is the
    # object at ``count_path``.
    runs: RunsKind = "none"

    @property
    def api_version(self) -> str:
        return self.api_versions[0]

    @property
    def count_fields(self) -> tuple[str, ...]:
        """Names of the spec fields the pod count is read from (in the object at ``count_path``)."""
        return _COUNT_FIELDS[self.pods]

    @property
    def count_field_paths(self) -> tuple[str, ...]:
        """Dotted manifest paths of the count fields, as errors name them."""
        prefix = ".".join(self.count_path)
        return tuple(f"{prefix}.{name}" for name in self.count_fields)

    @property
    def scope(self) -> Scope:
        # A DaemonSet runs one pod per matching node; the node count is not in its spec.
        return "per-node" if self.pods == "per-node" else "total"

    def serves(self, api_version: object) -> bool:
        return api_version in self.api_versions

    def pods_running(self, replicas: int | None = None, parallelism: int | None = None,
                     completions: int | None = None) -> int:
        """How many pods of one spec run at once, with the apiserver's defaults.

        replicas: default 1. Parallelism: default 1, capped by completions when that is
        smaller. Pod: 1. DaemonSet: 1, i.e. totals are per node.
        """
        if self.pods == "replicas":
            return 1 if replicas is None else replicas
        if self.pods == "parallelism":
            parallel = 1 if parallelism is None else parallelism
            return parallel if completions is None else min(parallel, completions)
        return 1


_TEMPLATE = ("spec", "template", "spec")

# The order is the feature encoder's one-hot order of ``workload_kind``: append, never reorder.
KINDS: tuple[Kind, ...] = (
    Kind("Pod", "", "pods", ("v1",), ("spec",), "one"),
    Kind("Deployment", "apps", "deployments", ("apps/v1",), _TEMPLATE, "replicas", scalable=True),
    Kind("StatefulSet", "apps", "statefulsets", ("apps/v1",), _TEMPLATE, "replicas", scalable=True),
    Kind("DaemonSet", "apps", "daemonsets", ("apps/v1",), _TEMPLATE, "per-node"),
    Kind("ReplicaSet", "apps", "replicasets", ("apps/v1",), _TEMPLATE, "replicas", scalable=True),
    Kind("ReplicationController", "", "replicationcontrollers", ("v1",), _TEMPLATE, "replicas", scalable=True),
    Kind("Job", "batch", "jobs", ("batch/v1",), _TEMPLATE, "parallelism", runs="once"),
    # batch/v1beta1 CronJobs still arrive from old clients.
    Kind("CronJob", "batch", "cronjobs", ("batch/v1", "batch/v1beta1"),
         ("spec", "jobTemplate", "spec", "template", "spec"), "parallelism",
         count_path=("spec", "jobTemplate", "spec"), runs="scheduled"),
)
KIND_NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
KINDS_BY_NAME: Mapping[str, Kind] = MappingProxyType({k.name: k for k in KINDS})
_SCALABLE_BY_RESOURCE: dict[tuple[str, str], Kind] = {(k.group, k.resource): k for k in KINDS if k.scalable}


def kind_named(name: object) -> Kind | None:
    """The kind called ``name``, or None when it is not a workload kind."""
    return KINDS_BY_NAME.get(name) if isinstance(name, str) else None


def workload_kind(kind: object, api_version: object) -> Kind | None:
    """The kind of an object with this ``kind`` and ``apiVersion``, when it is a workload we predict for."""
    found = kind_named(kind)
    return found if found is not None and found.serves(api_version) else None


def scalable_kind(group: object, resource: object) -> Kind | None:
    """The workload whose scale subresource an AdmissionReview's ``request.resource`` names."""
    return _SCALABLE_BY_RESOURCE.get((group, resource)) if isinstance(group, str) and isinstance(resource, str) else None


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str


def controller_of(metadata: object) -> OwnerRef | None:
    """The controller ownerReference in an object's ``metadata.ownerReferences`` (at most one
    has ``controller: true``), or None; metadata that is not an object has none."""
    owners = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    if not isinstance(owners, list):
        return None
    for owner in owners:
        if isinstance(owner, Mapping) and owner.get("controller") is True:
            return OwnerRef(str(owner.get("kind") or ""), str(owner.get("name") or ""))
    return None


def has_controller(metadata: object) -> bool:
    """True when a controller (ReplicaSet, Job, ...) owns the object: its owner stands for it."""
    return controller_of(metadata) is not None
