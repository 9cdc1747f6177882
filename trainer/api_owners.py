"""The Kubernetes API owner fallback for the labels step (`trainer.owners.OwnerFallback`).

For a pod kube-state-metrics never reported, read the Pod's controller ownerReference, then one
more hop as kube-state-metrics' series would give: a ReplicaSet's owner (its Deployment) and a
Job's owner (its CronJob). A pod the API no longer has (most pods of a past range are gone) or
one without a controller gives None, and the labels step then takes the pod as its own workload.
"""

from __future__ import annotations

from trainer.kube import WorkloadReader
from trainer.owners import WorkloadRef
from webhook.model.kinds import controller_of

# Owner kinds whose own controller is the workload a person manages.
_ONE_MORE_HOP = frozenset({"ReplicaSet", "Job"})


class KubernetesOwnerFallback:
    """Callable as `OwnerFallback`: (namespace, pod) -> WorkloadRef | None. Answers are cached."""

    def __init__(self, reader: WorkloadReader) -> None:
        self._reader = reader
        self._cache: dict[tuple[str, str, str], WorkloadRef | None] = {}
        self.lookups = 0  # API reads made, for reports and tests

    def _controller(self, kind: str, namespace: str, name: str) -> WorkloadRef | None:
        key = (kind, namespace, name)
        if key not in self._cache:
            self.lookups += 1
            manifest = self._reader.read(kind, namespace, name)
            owner = controller_of(manifest.get("metadata")) if manifest is not None else None
            self._cache[key] = WorkloadRef(kind=owner.kind, name=owner.name) if owner else None
        return self._cache[key]

    def __call__(self, namespace: str, pod: str) -> WorkloadRef | None:
        owner = self._controller("Pod", namespace, pod)
        if owner is None or owner.kind not in _ONE_MORE_HOP:
            return owner
        return self._controller(owner.kind, namespace, owner.name) or owner
