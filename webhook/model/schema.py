"""InferenceRequest v1: the spec of one workload's pod, in explicit units.

Field names and meanings stay compatible with the research prototype (``req_cpu_mcpu`` is
millicores, ``req_mem_mib`` is MiB = 2**20 bytes); fields it did not have are optional with
defaults, so its NDJSON files still load. Unknown fields are rejected so that a typo such as
``req_cpu_mpcu`` is an error that names the field, not a silently ignored value.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from webhook.model.kinds import KIND_NAMES, kind_named

WORKLOAD_KINDS = KIND_NAMES  # the table in webhook.model.kinds; its order is the one-hot order
# Spelled out for pydantic and type checkers; tests/webhook/test_kinds.py holds it to the table.
WorkloadKind = Literal[
    "Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob"
]

# Bounds that no real pod reaches; beyond them a value is a unit mistake, not a workload.
MAX_CPU_MILLICORES = 4_096_000  # 4096 cores
MAX_MEMORY_MIB = 64 * 2**20  # 64 TiB
MAX_CONTAINERS = 512
MAX_PODS = 1_000_000
MAX_DEVICES = 1024  # GPUs a pod asks for
# Units of any other extended resource: Kubernetes bounds them by int64 only, and some count bytes
# (Intel SGX's sgx.intel.com/epc: "512Ki") or MiB (HAMi's nvidia.com/gpumem: 3000).
MAX_EXTENDED_UNITS = float(2**63 - 1)
MAX_INT32 = 2**31 - 1  # the API's int32 fields (completions, backoffLimit)
MAX_INT64 = 2**63 - 1  # the API's int64 fields (activeDeadlineSeconds)
MAX_CAPABILITIES = 64  # Linux has 41
MAX_CAPABILITY_LENGTH = 64

ANNOTATION_PREFIX = "energetiscope.io/"
HostNamespace = Literal["network", "pid", "ipc"]


def _json_integer(value: object) -> object:
    # JSON Schema counts 1.0 as an integer; strict mode keeps booleans and strings out.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_int(maximum: int) -> object:
    # Constraints before the validator: pydantic then publishes them as JSON Schema's
    # minimum/maximum (after it, as keywords JSON Schema does not know).
    return Annotated[int, Field(ge=0, le=maximum), BeforeValidator(_json_integer)]


Millicores = _json_int(MAX_CPU_MILLICORES)
ContainerCount = _json_int(MAX_CONTAINERS)
PodCount = _json_int(MAX_PODS)
Int32 = _json_int(MAX_INT32)
Seconds = _json_int(MAX_INT64)
MiB = Annotated[float, Field(ge=0, le=MAX_MEMORY_MIB)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class ContainerSpec(_Strict):
    name: str = Field(min_length=1, max_length=253)
    image: str = Field(default="", max_length=4096)
    command: list[str] | None = None
    args: list[str] | None = None
    req_cpu_mcpu: Millicores | None = Field(default=None, description="CPU request, millicores")
    req_mem_mib: MiB | None = Field(default=None, description="memory request, MiB")
    lim_cpu_mcpu: Millicores | None = Field(default=None, description="CPU limit, millicores")
    lim_mem_mib: MiB | None = Field(default=None, description="memory limit, MiB")
    native_sidecar: bool = Field(default=False, description="an init container with restartPolicy: Always")
    privileged: bool = Field(default=False, description="securityContext.privileged")
    capabilities_added: list[Annotated[str, Field(max_length=MAX_CAPABILITY_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_CAPABILITIES, description="securityContext.capabilities.add, as written"
    )


class PodResources(_Strict):
    """Pod-level ``spec.resources`` (Kubernetes 1.32+): when set it bounds the whole pod."""

    req_cpu_mcpu: Millicores | None = None
    req_mem_mib: MiB | None = None
    lim_cpu_mcpu: Millicores | None = None
    lim_mem_mib: MiB | None = None


RestartPolicy = Literal["Always", "OnFailure", "Never"]  # a pod's spec.restartPolicy
RESTART_POLICIES: tuple[str, ...] = get_args(RestartPolicy)


class InferenceRequest(_Strict):
    schema_version: Literal["v1"] = "v1"
    namespace: str = Field(default="default", max_length=253)
    workload_kind: WorkloadKind
    workload_name: str = Field(default="", max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    containers: list[ContainerSpec] = Field(
        min_length=1, max_length=MAX_CONTAINERS, description="running containers, native sidecars included"
    )
    init_container_count: ContainerCount = Field(default=0, description="run-to-completion init containers")
    sidecar_count: ContainerCount = Field(default=0, description="native sidecars among containers")
    volume_types: list[str] = Field(default_factory=list)
    node_type: str | None = None
    runtime_class: str | None = None
    gpu_count: float = Field(default=0, ge=0, le=MAX_DEVICES, description="GPUs per pod, all vendors; a MIG slice g/7")
    parallelism: PodCount | None = None
    # A count of successful pods, not of pods at once: the API allows any int32.
    completions: Int32 | None = None
    # Added after the prototype:
    replicas: PodCount | None = None
    pod_resources: PodResources | None = None
    extended_resources: dict[str, Annotated[float, Field(ge=0, le=MAX_EXTENDED_UNITS)]] = Field(
        default_factory=dict, description="per pod, e.g. nvidia.com/gpu"
    )
    priority_class: str | None = None
    instance_type: str | None = Field(default=None, description="node selector node.kubernetes.io/instance-type")
    host_namespaces: list[HostNamespace] = Field(
        default_factory=list, max_length=3, description="the node's namespaces the pod shares: hostNetwork, hostPID, hostIPC"
    )
    gpu_product: str | None = Field(
        default=None, max_length=253,
        description="GPU product the pod selects (nvidia.com/gpu.product, gke-accelerator, instance type, ...)",
    )
    # A bare Pod's spec.restartPolicy as written: None when absent, and for every other kind, whose
    # pods' policy the kind fixes. Never or OnFailure: the pod runs its work to completion, as a
    # Job's pods do (Argo Workflows and Tekton steps, Spark executors, CI build pods).
    restart_policy: RestartPolicy | None = None
    # What a run reads (Job spec, a CronJob's jobTemplate.spec, the CronJob's schedule); not in
    # the spec hash, since none of it changes one pod's power (webhook.model.runs).
    completion_mode: Literal["NonIndexed", "Indexed"] | None = None
    backoff_limit: Int32 | None = None
    active_deadline_seconds: Seconds | None = Field(default=None, description="bounds a run's wall time, s")
    schedule: str | None = Field(default=None, max_length=1024, description="CronJob spec.schedule, as written")
    time_zone: str | None = Field(default=None, max_length=253, description="CronJob spec.timeZone")
    suspend: bool | None = Field(default=None, description="CronJob spec.suspend")


# What a workload's pods-count depends on; excluded from the spec hash so that scaling keeps
# the pod prediction and only the workload totals move.
_SCALE_FIELDS = frozenset({"replicas", "parallelism", "completions"})
RUN_FIELDS = frozenset(
    {"completion_mode", "backoff_limit", "active_deadline_seconds", "schedule", "time_zone", "suspend"}
)
_UNHASHED_FIELDS = _SCALE_FIELDS | RUN_FIELDS | {"annotations", "workload_name", "namespace"}
# What `json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)` builds on every
# call, built once: the same encoder, so the same text (json.dumps makes a JSONEncoder per call
# whenever it is given options).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def spec_hash(request: InferenceRequest) -> str:
    """Hash of everything that can change the per-pod prediction.

    Excludes the pod count fields, the run fields, annotations (they carry our own output and rollout
    bookkeeping) and identity (name, namespace): two identical pods get one prediction. The value is
    part of the annotation contract (`energetiscope.io/spec-hash`): the canonical text must not change.
    """
    payload = request.model_dump(mode="json", exclude=_UNHASHED_FIELDS)
    payload["labels"] = {k: v for k, v in sorted(payload["labels"].items()) if not k.startswith(ANNOTATION_PREFIX)}
    _drop_unset_later_fields(payload)
    canonical = _CANONICAL_JSON.encode(payload)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _drop_unset_later_fields(payload: dict[str, object]) -> None:
    """Host access fields and a bare Pod's restart policy came after the hash was published: left
    out where unset (a restart policy of Always is the default, so unset too), a pod that sets none
    of them keeps the hash (and so the cached prediction and annotation) it had before."""
    if not payload.get("host_namespaces"):
        payload.pop("host_namespaces", None)
    if payload.get("restart_policy") in (None, "Always"):
        payload.pop("restart_policy", None)
    for container in payload["containers"]:  # type: ignore[union-attr]
        if not container.get("privileged"):
            container.pop("privileged", None)
        if not container.get("capabilities_added"):
            container.pop("capabilities_added", None)


def workload_pods(request: InferenceRequest) -> int:
    """How many pods of the request's spec run at once (``Kind.pods_running``)."""
    kind = kind_named(request.workload_kind)
    return 1 if kind is None else kind.pods_running(request.replicas, request.parallelism, request.completions)


class PredictOut(BaseModel):
    """Answer of ``POST /predict``: the prototype's fields first, then the new ones."""

    pred_energy_step_j: float = Field(description="energy of one pod over one 60 s step, J")
    workload_kind: str
    workload_name: str
    namespace: str
    spec_hash: str
    pod_power_watts: float
    pod_power_watts_p10: float
    pod_power_watts_p90: float
    workload_pods: int
    workload_power_watts: float
    workload_power_scope: Literal["total", "per-node"]
    energy_joules_per_hour: float
    model: str
    basis: Literal["model", "prior"]
    fallback_reason: str | None = None
    # Jobs and CronJobs (webhook.model.runs); null where there is no figure.
    run_seconds: float | None = Field(default=None, description="one run's wall time, s")
    run_seconds_p10: float | None = None
    run_seconds_p90: float | None = None
    energy_joules_per_run: float | None = Field(default=None, description="workload W x run seconds, J")
    energy_joules_per_run_p10: float | None = None
    energy_joules_per_run_p90: float | None = None
    run_bound: Literal["upper"] | None = Field(default=None, description="upper: run time is activeDeadlineSeconds")
    run_source: str | None = Field(default=None, description="activeDeadlineSeconds, or the run model's id")
    runs_per_day: float | None = Field(default=None, description="CronJob runs per day, from schedule")
    energy_joules_per_day: float | None = Field(default=None, description="CronJob runs per day x J per run")
    run_problem: str | None = Field(default=None, description="why runs_per_day is unknown, naming the field")
