"""The Kubernetes API owner fallback of the labels step, against RECORDED API responses (the
same local server as test_collect.py; a real kube-apiserver version comes with the e2e harness)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.trainer.conftest import KeplerPrometheus
from tests.trainer.kube_api_server import RecordedKubeApi, load_recorded
from trainer.api_owners import KubernetesOwnerFallback
from trainer.kube import WorkloadReader
from trainer.labels import collect_labels
from trainer.owners import WorkloadRef


@pytest.fixture()
def fallback() -> Iterator[tuple[KubernetesOwnerFallback, RecordedKubeApi]]:
    lists, _ = load_recorded()
    with RecordedKubeApi(lists) as api:
        configuration = client.Configuration()
        configuration.host = api.url
        with client.ApiClient(configuration) as api_client:
            yield KubernetesOwnerFallback(WorkloadReader(api_client)), api


def test_pods_resolve_through_their_controllers(fallback: tuple[KubernetesOwnerFallback, RecordedKubeApi]) -> None:
    owners, _ = fallback
    assert owners("shop", "web-5f7d8c9b6d-abcde") == WorkloadRef("Deployment", "web")  # Pod -> ReplicaSet -> Deployment
    assert owners("batch", "nightly-report-28930000-xk2p9") == WorkloadRef("CronJob", "nightly-report")  # via its Job
    assert owners("batch", "once-q9z8x") == WorkloadRef("Job", "once")  # a Job nobody owns is the workload
    assert owners("db", "pg-0") == WorkloadRef("StatefulSet", "pg")
    assert owners("kube-system", "node-agent-x7k2p") == WorkloadRef("DaemonSet", "node-agent")
    assert owners("kube-system", "etcd-node1") == WorkloadRef("Node", "node1")  # a static pod's mirror


def test_bare_and_vanished_pods_give_none_and_answers_are_cached(
    fallback: tuple[KubernetesOwnerFallback, RecordedKubeApi],
) -> None:
    owners, api = fallback
    assert owners("default", "debug-shell") is None  # no controller: its own workload
    assert owners("shop", "web") is None  # the bare pod named like the Deployment
    assert owners("shop", "gone-7c9d") is None  # 404: long gone
    asked = len(api.requests)
    assert owners("default", "debug-shell") is None and owners("shop", "gone-7c9d") is None
    assert len(api.requests) == asked == owners.lookups == 3


@pytest.mark.prometheus
def test_labels_ask_the_api_only_about_pods_kube_state_metrics_never_reported(
    kepler_prometheus: KeplerPrometheus, fallback: tuple[KubernetesOwnerFallback, RecordedKubeApi]
) -> None:
    owners, api = fallback
    pods = kepler_prometheus.pods
    labels = collect_labels(kepler_prometheus.url, pods.start_seconds, pods.end_seconds, pods.window_seconds,
                            owner_fallback=owners)
    workloads = labels[["namespace", "pod", "workload_kind", "workload_name"]].drop_duplicates()
    assert sorted(map(tuple, workloads.to_numpy().tolist())) == [
        ("batch", "nightly-report-28930000-xk2p9", "CronJob", "nightly-report"),
        ("db", "pg-0", "StatefulSet", "pg"),
        ("default", "debug-shell", "Pod", "debug-shell"),
        ("shop", "web-5f7d8c9b6d-abcde", "Deployment", "web"),
    ]
    # debug-shell has no kube-state-metrics series: the API was asked about it, and only it.
    assert api.requests == ["/api/v1/namespaces/default/pods/debug-shell"]
