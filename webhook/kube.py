"""Where the Kubernetes API serves each workload kind, and the client methods that read it.

The webhook's budget inventory and the trainer's `collect` read the same kinds the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client


@dataclass(frozen=True)
class WorkloadEndpoint:
    """Where the API serves one workload kind, and the client methods that read it."""

    kind: str
    api_version: str
    api_class: type
    list_all: str  # method listing the kind in every namespace
    list_namespaced: str
    read_namespaced: str


WORKLOAD_ENDPOINTS: tuple[WorkloadEndpoint, ...] = (
    WorkloadEndpoint("Pod", "v1", client.CoreV1Api, "list_pod_for_all_namespaces",
                     "list_namespaced_pod", "read_namespaced_pod"),
    WorkloadEndpoint("ReplicationController", "v1", client.CoreV1Api,
                     "list_replication_controller_for_all_namespaces",
                     "list_namespaced_replication_controller", "read_namespaced_replication_controller"),
    WorkloadEndpoint("Deployment", "apps/v1", client.AppsV1Api, "list_deployment_for_all_namespaces",
                     "list_namespaced_deployment", "read_namespaced_deployment"),
    WorkloadEndpoint("StatefulSet", "apps/v1", client.AppsV1Api, "list_stateful_set_for_all_namespaces",
                     "list_namespaced_stateful_set", "read_namespaced_stateful_set"),
    WorkloadEndpoint("DaemonSet", "apps/v1", client.AppsV1Api, "list_daemon_set_for_all_namespaces",
                     "list_namespaced_daemon_set", "read_namespaced_daemon_set"),
    WorkloadEndpoint("ReplicaSet", "apps/v1", client.AppsV1Api, "list_replica_set_for_all_namespaces",
                     "list_namespaced_replica_set", "read_namespaced_replica_set"),
    WorkloadEndpoint("Job", "batch/v1", client.BatchV1Api, "list_job_for_all_namespaces",
                     "list_namespaced_job", "read_namespaced_job"),
    WorkloadEndpoint("CronJob", "batch/v1", client.BatchV1Api, "list_cron_job_for_all_namespaces",
                     "list_namespaced_cron_job", "read_namespaced_cron_job"),
)
ENDPOINTS_BY_KIND: dict[str, WorkloadEndpoint] = {e.kind: e for e in WORKLOAD_ENDPOINTS}
COLLECTED_KINDS: tuple[str, ...] = tuple(e.kind for e in WORKLOAD_ENDPOINTS)
