"""The table of workload kinds: every reader of a kind agrees with it."""

from __future__ import annotations

from typing import get_args

import pytest

from webhook.model import kinds
from webhook.model.schema import WORKLOAD_KINDS, WorkloadKind


def test_the_schema_literal_is_the_table():
    assert get_args(WorkloadKind) == WORKLOAD_KINDS == kinds.KIND_NAMES


@pytest.mark.parametrize(
    ("name", "counts", "pods"),
    [
        ("Pod", {}, 1),
        ("DaemonSet", {}, 1),
        ("Deployment", {}, 1),
        ("Deployment", {"replicas": 4}, 4),
        ("ReplicationController", {"replicas": 0}, 0),
        ("Job", {}, 1),
        ("Job", {"parallelism": 5}, 5),
        ("Job", {"parallelism": 5, "completions": 2}, 2),
        ("CronJob", {"completions": 3}, 1),
    ],
)
def test_pods_running_follows_the_apiserver_defaults(name, counts, pods):
    kind = kinds.kind_named(name)
    assert kind is not None and kind.pods_running(**counts) == pods


def test_scope_count_fields_and_scale():
    assert kinds.kind_named("DaemonSet").scope == "per-node"
    assert {k.scope for k in kinds.KINDS if k.name != "DaemonSet"} == {"total"}
    assert kinds.kind_named("CronJob").count_field_paths == (
        "spec.jobTemplate.spec.parallelism", "spec.jobTemplate.spec.completions")
    assert kinds.scalable_kind("apps", "deployments").name == "Deployment"
    assert kinds.scalable_kind("", "replicationcontrollers").name == "ReplicationController"
    assert kinds.scalable_kind("apps", "daemonsets") is None
    assert kinds.workload_kind("CronJob", "batch/v1beta1").name == "CronJob"
    assert kinds.workload_kind("Deployment", "extensions/v1beta1") is None


def test_controller_ownership_is_one_rule():
    owned = {"ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": True}]}
    assert kinds.controller_of(owned) == kinds.OwnerRef("ReplicaSet", "web-1")
    assert kinds.has_controller(owned)
    assert not kinds.has_controller({"ownerReferences": [{"kind": "ReplicaSet", "name": "x"}]})
    assert not kinds.has_controller({"ownerReferences": "nonsense"})
    assert not kinds.has_controller({})


def test_every_kind_has_client_endpoints():
    from webhook.kube import ENDPOINTS_BY_KIND

    for kind in kinds.KINDS:
        endpoint = ENDPOINTS_BY_KIND[kind.name]
        assert endpoint.api_version == kind.api_version
        for method in (endpoint.list_all, endpoint.list_namespaced, endpoint.read_namespaced):
            assert callable(getattr(endpoint.api_class, method))
