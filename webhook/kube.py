"""The Kubernetes client: how to reach the API, and the client methods that read each workload kind.

The webhook's budget inventory, `energetiscope certs` and the trainer's `collect` all get
their client from :func:`api_client`, and read the kinds of ``webhook.model.kinds`` through
the endpoints below. The kinds table stays free of the `kubernetes` client (the model core
must not import it); this module maps each of its rows to the client's methods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from webhook.model.kinds import KINDS, Kind


def api_client(
    kubeconfig: str | Path | None = None,
    *,
    context: str | None = None,
    in_cluster: bool = False,
    in_cluster_fallback: bool = False,
) -> client.ApiClient:
    """A client with its own configuration (the process-wide default is left alone).

    ``in_cluster``: the pod's service account. Otherwise the kubeconfig (``None``: $KUBECONFIG
    or ~/.kube/config) and its ``context``; with ``in_cluster_fallback``, no kubeconfig at all
    (the usual case inside a pod) falls back to the service account, but a kubeconfig named
    and unreadable is an error.
    """
    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    try:
        config.load_kube_config(
            config_file=None if kubeconfig is None else str(kubeconfig), context=context,
            client_configuration=configuration,
        )
    except config.ConfigException:
        if kubeconfig is not None or not in_cluster_fallback:
            raise
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


@dataclass(frozen=True)
class WorkloadEndpoint:
    """Where the API serves one workload kind, and the client methods that read it."""

    kind: str
    api_version: str
    api_class: type
    list_all: str  # method listing the kind in every namespace
    list_namespaced: str
    read_namespaced: str


# The client's API class per group version (the version each kind is listed under).
_API_CLASSES: dict[str, type] = {"v1": client.CoreV1Api, "apps/v1": client.AppsV1Api, "batch/v1": client.BatchV1Api}


def _snake(name: str) -> str:
    # The client names its methods after the kind in snake case: ReplicationController ->
    # list_namespaced_replication_controller.
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _endpoint(kind: Kind) -> WorkloadEndpoint:
    snake = _snake(kind.name)
    return WorkloadEndpoint(
        kind.name, kind.api_version, _API_CLASSES[kind.api_version],
        f"list_{snake}_for_all_namespaces", f"list_namespaced_{snake}", f"read_namespaced_{snake}",
    )


WORKLOAD_ENDPOINTS: tuple[WorkloadEndpoint, ...] = tuple(_endpoint(kind) for kind in KINDS)
ENDPOINTS_BY_KIND: dict[str, WorkloadEndpoint] = {e.kind: e for e in WORKLOAD_ENDPOINTS}
COLLECTED_KINDS: tuple[str, ...] = tuple(e.kind for e in WORKLOAD_ENDPOINTS)
