"""Owner resolution from kube-state-metrics label sets (no server needed)."""

from __future__ import annotations

import pytest

from trainer.owners import OwnerIndex, OwnerResolver, WorkloadRef


def _pod_owner(namespace: str, pod: str, kind: str, name: str, controller: str = "true", **extra: str) -> dict[str, str]:
    return {"__name__": "kube_pod_owner", "namespace": namespace, "pod": pod, "owner_kind": kind,
            "owner_name": name, "owner_is_controller": controller, **extra}


def _index(*label_sets: dict[str, str]) -> OwnerIndex:
    index = OwnerIndex()
    for labels in label_sets:
        index.add_series(labels)
    return index


def test_replicaset_leads_to_its_deployment() -> None:
    index = _index(
        _pod_owner("shop", "web-1", "ReplicaSet", "web-abc"),
        {"__name__": "kube_replicaset_owner", "namespace": "shop", "replicaset": "web-abc",
         "owner_kind": "Deployment", "owner_name": "web", "owner_is_controller": "true"},
    )
    assert OwnerResolver(index).resolve("shop", "web-1") == WorkloadRef("Deployment", "web")


def test_a_replicaset_without_owner_is_the_workload() -> None:
    index = _index(
        _pod_owner("shop", "web-1", "ReplicaSet", "web-abc"),
        {"__name__": "kube_replicaset_owner", "namespace": "shop", "replicaset": "web-abc",
         "owner_kind": "<none>", "owner_name": "<none>", "owner_is_controller": "false"},
    )
    assert OwnerResolver(index).resolve("shop", "web-1") == WorkloadRef("ReplicaSet", "web-abc")


def test_job_leads_to_its_cronjob_and_a_bare_job_stays_a_job() -> None:
    index = _index(
        _pod_owner("batch", "nightly-1-x", "Job", "nightly-1"),
        {"__name__": "kube_job_owner", "namespace": "batch", "job_name": "nightly-1",
         "owner_kind": "CronJob", "owner_name": "nightly", "owner_is_controller": "true"},
        _pod_owner("batch", "once-y", "Job", "once"),
    )
    resolver = OwnerResolver(index)
    assert resolver.resolve("batch", "nightly-1-x") == WorkloadRef("CronJob", "nightly")
    assert resolver.resolve("batch", "once-y") == WorkloadRef("Job", "once")


def test_the_same_names_in_another_namespace_do_not_mix() -> None:
    index = _index(
        _pod_owner("a", "p", "ReplicaSet", "rs"),
        {"__name__": "kube_replicaset_owner", "namespace": "b", "replicaset": "rs",
         "owner_kind": "Deployment", "owner_name": "other", "owner_is_controller": "true"},
    )
    assert OwnerResolver(index).resolve("a", "p") == WorkloadRef("ReplicaSet", "rs")


def test_exported_labels_name_the_object_when_honor_labels_was_off() -> None:
    index = _index(
        _pod_owner("monitoring", "kube-state-metrics-0", "DaemonSet", "agent",
                   exported_namespace="infra", exported_pod="agent-xyz"),
    )
    resolver = OwnerResolver(index)
    assert resolver.resolve("infra", "agent-xyz") == WorkloadRef("DaemonSet", "agent")
    assert resolver.resolve("monitoring", "kube-state-metrics-0") == WorkloadRef("Pod", "kube-state-metrics-0")


def test_the_controller_owner_wins() -> None:
    index = _index(
        _pod_owner("ns", "p", "ConfigMap", "zzz", controller="false"),
        _pod_owner("ns", "p", "StatefulSet", "db", controller="true"),
    )
    assert OwnerResolver(index).resolve("ns", "p") == WorkloadRef("StatefulSet", "db")


def test_fallback_only_for_pods_unknown_to_kube_state_metrics() -> None:
    index = _index(_pod_owner("ns", "bare", "<none>", "<none>", controller="false"))
    asked: list[tuple[str, str]] = []

    def fallback(namespace: str, pod: str) -> WorkloadRef | None:
        asked.append((namespace, pod))
        return WorkloadRef("Deployment", "from-api") if pod == "known-to-api" else None

    resolver = OwnerResolver(index, fallback)
    assert resolver.resolve("ns", "bare") == WorkloadRef("Pod", "bare")
    assert resolver.resolve("ns", "known-to-api") == WorkloadRef("Deployment", "from-api")
    assert resolver.resolve("ns", "unknown") == WorkloadRef("Pod", "unknown")
    assert resolver.resolve("ns", "known-to-api") == WorkloadRef("Deployment", "from-api")  # cached
    assert asked == [("ns", "known-to-api"), ("ns", "unknown")]


def test_a_series_that_is_not_an_owner_series_is_refused() -> None:
    with pytest.raises(ValueError, match="not an owner series"):
        OwnerIndex().add_series({"__name__": "kube_pod_info", "namespace": "a", "pod": "b"})
