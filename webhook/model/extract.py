"""Kubernetes workload object -> InferenceRequest.

One function serves the admission webhook, the YAML debugging endpoints and the trainer's
``collect`` step, so training and serving see identical requests. Every error names the
field in the manifest (``spec.template.spec.containers[1].resources.requests.cpu``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from pydantic import ValidationError

from webhook.model import quantity
from webhook.model.gpus import INSTANCE_TYPE_LABELS, gpu_fraction, resolve_gpu_product
from webhook.model.kinds import workload_kind
from webhook.model.schema import (
    ANNOTATION_PREFIX,
    MAX_CAPABILITIES,
    MAX_CAPABILITY_LENGTH,
    MAX_CPU_MILLICORES,
    MAX_DEVICES,
    MAX_EXTENDED_UNITS,
    MAX_INT32,
    MAX_INT64,
    MAX_MEMORY_MIB,
    MAX_PODS,
    RESTART_POLICIES,
    ContainerSpec,
    InferenceRequest,
    PodResources,
)

_STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "storage", "pods"})
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
Number = TypeVar("Number", int, float)
NODE_TYPE_LABEL = "node-type"


class ExtractionError(ValueError):
    """The object cannot be read as a workload; ``field`` is its dotted path in the manifest."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def is_workload(kind: object, api_version: object) -> bool:
    return workload_kind(kind, api_version) is not None


def workload_kind_of(obj: Mapping[str, Any]) -> str | None:
    """The workload kind of ``obj`` when it is one we predict for, else None."""
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    return kind if is_workload(kind, api_version) else None


def is_gpu_resource(name: str) -> bool:
    """A whole GPU or a slice of one (MIG): nvidia.com/gpu, amd.com/gpu, gpu.intel.com/*, nvidia.com/mig-*."""
    return gpu_fraction(name) is not None


def _required_affinity_labels(pod_spec: Mapping[str, Any]) -> dict[str, str]:
    """Node labels a required node affinity pins with `In`: the first value of each, from the first
    term (terms are alternatives). Read leniently: the apiserver validates affinity, and a shape it
    would refuse only means no label is learned from it."""
    affinity = pod_spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") if isinstance(node_affinity, Mapping) else None
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    if not isinstance(terms, list) or not terms or not isinstance(terms[0], Mapping):
        return {}
    labels: dict[str, str] = {}
    expressions = terms[0].get("matchExpressions")
    for expression in expressions if isinstance(expressions, list) else []:
        if not isinstance(expression, Mapping) or expression.get("operator") != "In":
            continue
        key, values = expression.get("key"), expression.get("values")
        if isinstance(key, str) and isinstance(values, list) and values and isinstance(values[0], str):
            labels.setdefault(key, values[0])
    return labels


def _mapping(value: Any, field: str, *, required: bool = False) -> Mapping[str, Any]:
    # A parsed JSON object is a dict: `isinstance(value, Mapping)` asks the ABC machinery, about
    # ten times the cost of the type check, and extraction asks it ~20 times an object.
    if type(value) is dict:
        return value
    if value is None:
        if required:
            raise ExtractionError(field, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise ExtractionError(field, f"expected an object, got {type(value).__name__}")
    return value


def _child_mapping(parent: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any]:
    """`parent[key]` as `_mapping` reads it, the field `field.key` spelled out only for an error."""
    value = parent.get(key)
    return value if type(value) is dict else _mapping(value, f"{field}.{key}")


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ExtractionError(field, f"expected a list, got {type(value).__name__}")
    return value


def _string_list(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    items = [_null_as_empty(item) for item in _list(value, field)]
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ExtractionError(f"{field}[{i}]", f"expected a string, got {type(item).__name__}")
    return items


def _optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ExtractionError(field, f"expected a string, got {type(value).__name__}")
    return value


def _string_map(value: Any, field: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, item in _mapping(value, field).items():
        item = _null_as_empty(item)
        if not isinstance(item, str):
            raise ExtractionError(f"{field}[{key!r}]", f"expected a string, got {type(item).__name__}")
        result[_json_key(key, field)] = item
    return result


def _null_as_empty(item: Any) -> Any:
    # `team:` with no value, `args: [a, ~]`: the API server decodes a null string as the empty one.
    return "" if item is None else item


def _json_key(key: Any, field: str) -> str:
    """A YAML map key as sigs.k8s.io/yaml writes it into JSON: `yes:` is "true", `1:` is "1"."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)):
        return str(key)
    raise ExtractionError(field, f"a key must be a string, got {key!r}")


def _count(value: Any, field: str, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExtractionError(field, f"expected an integer, got {value!r}")
    if value < 0:
        raise ExtractionError(field, f"must not be negative, got {value}")
    if maximum is not None and value > maximum:
        raise ExtractionError(field, f"must be at most {maximum}, got {value}")
    return value


def _optional_bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ExtractionError(field, f"expected true or false, got {value!r}")


# The bounds of the count fields in the manifest: pods at once, or the API's int32.
_COUNT_MAXIMA = {"replicas": MAX_PODS, "parallelism": MAX_PODS, "completions": MAX_INT32}
_COMPLETION_MODES = ("NonIndexed", "Indexed")


def _run_fields(obj: Mapping[str, Any], job_spec: Mapping[str, Any], job_field: str, runs: str) -> dict[str, Any]:
    """What a run reads: the Job spec's deadline, retries and completion mode, and a CronJob's
    schedule. The schedule and time zone are kept as written: an invalid one is a warning when
    the runs per day are counted (``webhook.model.schedule``), never a reason not to annotate."""
    if runs == "none":
        return {}
    mode = _optional_str(job_spec.get("completionMode"), f"{job_field}.completionMode")
    if mode is not None and mode not in _COMPLETION_MODES:
        raise ExtractionError(f"{job_field}.completionMode", f"expected NonIndexed or Indexed, got {mode!r}")
    fields: dict[str, Any] = {
        "completion_mode": mode,
        "backoff_limit": _count(job_spec.get("backoffLimit"), f"{job_field}.backoffLimit", MAX_INT32),
        "active_deadline_seconds": _count(
            job_spec.get("activeDeadlineSeconds"), f"{job_field}.activeDeadlineSeconds", MAX_INT64
        ),
    }
    if runs == "scheduled":
        spec = _mapping(obj.get("spec"), "spec", required=True)
        fields["schedule"] = _optional_str(spec.get("schedule"), "spec.schedule")
        fields["time_zone"] = _optional_str(spec.get("timeZone"), "spec.timeZone")
        fields["suspend"] = _optional_bool(spec.get("suspend"), "spec.suspend")
    return fields


def _amount(value: Any, field: str, convert: Callable[[object, str], Number], maximum: float, unit: str) -> Number | None:
    """Parse a quantity with ``convert`` and check it lies in [0, maximum]."""
    if value is None:
        return None
    try:
        amount = convert(value, field)
    except quantity.QuantityError as exc:
        raise ExtractionError(field, str(exc).removeprefix(f"{field}: ")) from None
    if amount < 0:
        raise ExtractionError(field, f"must not be negative, got {value!r}")
    if amount > maximum:
        shown = _shown(amount)
        raise ExtractionError(field, f"{value!r} is {shown} {unit}, above the limit of {maximum:g} {unit}")
    return amount


def _shown(amount: float) -> str:
    try:
        return f"{float(amount):g}"
    except OverflowError:  # an int past a float (`cpu: 1e400` in millicores)
        return "more than 1e308"


# CPU and memory amounts already read, by the quantity string: manifests repeat a few ("100m",
# "128Mi"), and converting one (a Decimal scaled and rounded, or divided into MiB) and spelling out
# its field cost more than a lookup. Strings only, and short ones as in `quantity`: a string is an
# exact key, where a number would make 0.0 and -0.0 (which reads as -0.0 MiB) one key. Only values
# that passed every check are kept, so an error still names its field.
_MEMO_MAX_CHARS = 32
_MEMO_MAX_ENTRIES = 4096
_CPU_READ: dict[str, int] = {}
_MEMORY_READ: dict[str, float] = {}


def _remembered_amount(read: dict[str, Any], value: Any, field: str, key: str,
                       convert: Callable[[object, str], Number], maximum: float, unit: str) -> Number | None:
    """`_amount` of ``value``, the field ``field.key``, through the memo ``read``."""
    if value is None:
        return None
    is_string = type(value) is str
    if is_string:
        known = read.get(value)
        if known is not None:
            return known
    amount = _amount(value, f"{field}.{key}", convert, maximum, unit)
    if is_string and len(value) <= _MEMO_MAX_CHARS and len(read) < _MEMO_MAX_ENTRIES:
        read[value] = amount
    return amount


def _cpu(value: Any, field: str, key: str) -> int | None:
    return _remembered_amount(_CPU_READ, value, field, key, quantity.cpu_millicores, MAX_CPU_MILLICORES, "millicores")


def _memory(value: Any, field: str, key: str) -> float | None:
    return _remembered_amount(_MEMORY_READ, value, field, key, quantity.memory_mebibytes, MAX_MEMORY_MIB, "MiB")


@dataclass(frozen=True)
class _Resources:
    req_cpu_mcpu: int | None
    req_mem_mib: float | None
    lim_cpu_mcpu: int | None
    lim_mem_mib: float | None
    extended: dict[str, float]


def _resources(value: Any, field: str) -> _Resources:
    resources = _mapping(value, field)
    requests = _child_mapping(resources, "requests", field)
    limits = _child_mapping(resources, "limits", field)
    extended: dict[str, float] = {}
    # Extended resources must have request == limit; a limit alone implies the request.
    for section_name, section in (("requests", requests), ("limits", limits)):
        for name, amount in section.items():
            if name in _STANDARD_RESOURCES or str(name).startswith("hugepages-"):
                continue
            gpu = is_gpu_resource(str(name))
            devices = _amount(amount, f"{field}.{section_name}[{name!r}]", quantity.count,
                              MAX_DEVICES if gpu else MAX_EXTENDED_UNITS, "devices" if gpu else "units")
            extended[str(name)] = max(extended.get(str(name), 0.0), devices or 0.0)
    return _Resources(
        req_cpu_mcpu=_cpu(requests.get("cpu"), field, "requests.cpu"),
        req_mem_mib=_memory(requests.get("memory"), field, "requests.memory"),
        lim_cpu_mcpu=_cpu(limits.get("cpu"), field, "limits.cpu"),
        lim_mem_mib=_memory(limits.get("memory"), field, "limits.memory"),
        extended=extended,
    )


def _container(value: Any, field: str, *, native_sidecar: bool) -> tuple[ContainerSpec, dict[str, float]]:
    container = _mapping(value, field)
    name = container.get("name")
    if not isinstance(name, str) or not name:
        raise ExtractionError(f"{field}.name", "is required and must be a non-empty string")
    image = _optional_str(container.get("image"), f"{field}.image") or ""
    res = _resources(container.get("resources"), f"{field}.resources")
    privileged, capabilities_added = _security(container.get("securityContext"), field)
    spec = ContainerSpec(
        name=name,
        image=image,
        command=_string_list(container.get("command"), f"{field}.command"),
        args=_string_list(container.get("args"), f"{field}.args"),
        req_cpu_mcpu=res.req_cpu_mcpu,
        req_mem_mib=res.req_mem_mib,
        lim_cpu_mcpu=res.lim_cpu_mcpu,
        lim_mem_mib=res.lim_mem_mib,
        native_sidecar=native_sidecar,
        privileged=privileged,
        capabilities_added=capabilities_added,
    )
    return spec, res.extended


def _security(value: Any, container_field: str) -> tuple[bool, list[str]]:
    """A container's privileges (its ``securityContext``): what a node agent (a CNI, a scanner, an
    exporter) asks for and an application seldom does, so words the model can group pods by. Most
    containers set none: they cost one check, and field paths are spelled out only where there is
    a context to read."""
    if value is None:
        return False, []
    field = f"{container_field}.securityContext"
    context = _mapping(value, field)
    privileged = _optional_bool(context.get("privileged"), f"{field}.privileged") or False
    capabilities = _child_mapping(context, "capabilities", field)
    added = _string_list(capabilities.get("add"), f"{field}.capabilities.add") or []
    if len(added) > MAX_CAPABILITIES:
        raise ExtractionError(f"{field}.capabilities.add", f"lists {len(added)} capabilities, above the limit of {MAX_CAPABILITIES}")
    for i, capability in enumerate(added):
        if len(capability) > MAX_CAPABILITY_LENGTH:
            raise ExtractionError(f"{field}.capabilities.add[{i}]", f"is {len(capability)} characters, above the limit of "
                                  f"{MAX_CAPABILITY_LENGTH}")
    return privileged, added


# The node's namespaces a pod can share, by their pod spec field.
_HOST_NAMESPACE_FIELDS = (("hostNetwork", "network"), ("hostPID", "pid"), ("hostIPC", "ipc"))


def _host_namespaces(pod_spec: Mapping[str, Any], spec_field: str) -> list[str]:
    # The field path only for a value that is set: most pods set none of the three.
    return [namespace for key, namespace in _HOST_NAMESPACE_FIELDS
            if (value := pod_spec.get(key)) is not None and _optional_bool(value, f"{spec_field}.{key}")]


def _restart_policy(pod_spec: Mapping[str, Any], spec_field: str) -> str | None:
    policy = pod_spec.get("restartPolicy")
    if policy is None:
        return None
    if policy not in RESTART_POLICIES:
        raise ExtractionError(f"{spec_field}.restartPolicy", f"expected Always, OnFailure or Never, got {policy!r}")
    return str(policy)


def _volume_type(volume: Any, field: str) -> str:
    volume = _mapping(volume, field)
    sources = [key for key in volume if key != "name"]
    # A volume has exactly one source; the apiserver defaults a bare volume to emptyDir.
    return str(sources[0]) if sources else "emptyDir"


def _dig(obj: Mapping[str, Any], path: tuple[str, ...]) -> tuple[Mapping[str, Any], str]:
    node: Mapping[str, Any] = obj
    for depth, key in enumerate(path):
        value = node.get(key)
        # The path so far is spelled out only for an error (a dict is what a parsed object holds).
        node = value if type(value) is dict else _mapping(value, ".".join(path[:depth + 1]), required=True)
    return node, ".".join(path)


# The metadata an InferenceRequest is built from; everything else in metadata is bookkeeping.
_READ_METADATA = ("name", "generateName", "namespace", "labels", "annotations")


def _without_ignored(value: Any, ignored: Callable[[str], bool]) -> Any:
    # Only entries that extraction would accept and then drop: a malformed one stays, so that
    # the error it raises is the same with or without this step.
    if not isinstance(value, Mapping):
        return value
    return {k: v for k, v in value.items() if not (isinstance(k, str) and isinstance(v, str) and ignored(k))}


def _is_ours(key: str) -> bool:
    return key.startswith(ANNOTATION_PREFIX)


def _is_ours_or_last_applied(key: str) -> bool:
    return key.startswith(ANNOTATION_PREFIX) or key == _LAST_APPLIED


def read_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a workload object its InferenceRequest depends on, and all extraction reads.

    Leaves out status, managedFields, resourceVersion and the like, our own labels and
    annotations and kubectl's last-applied-configuration: the same workload re-applied, or seen
    by /mutate and then by /validate with our annotations added, has the same part.
    """
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        metadata = {key: metadata[key] for key in _READ_METADATA if key in metadata}
        for key, ignored in (("labels", _is_ours), ("annotations", _is_ours_or_last_applied)):
            kept = _without_ignored(metadata.pop(key, None), ignored)
            if not (kept is None or (isinstance(kept, Mapping) and not kept)):  # absent, null and {} read the same
                metadata[key] = kept
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": metadata, "spec": obj.get("spec")}


def to_inference_request(obj: Mapping[str, Any]) -> InferenceRequest:
    """Build the InferenceRequest of a workload object (a dict as the API serves it).

    Raises ExtractionError naming the field when the object cannot be read.
    """
    if not isinstance(obj, Mapping):
        raise ExtractionError("object", f"expected an object, got {type(obj).__name__}")
    return from_read_part(read_part(obj))


def from_read_part(obj: Mapping[str, Any]) -> InferenceRequest:
    """:func:`to_inference_request` of an object reduced by :func:`read_part`."""
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    workload = workload_kind(kind, api_version)
    if workload is None:
        raise ExtractionError("kind", f"{api_version}/{kind} is not a workload kind EnergetiScope predicts for")
    metadata = _mapping(obj.get("metadata"), "metadata")
    pod_spec, spec_field = _dig(obj, workload.pod_spec_path)

    containers: list[ContainerSpec] = []
    extended: dict[str, float] = {}

    def add_extended(amounts: dict[str, float]) -> None:
        for name, devices in amounts.items():
            extended[name] = extended.get(name, 0.0) + devices

    init_container_count = 0
    sidecar_count = 0
    for i, item in enumerate(_list(pod_spec.get("initContainers"), f"{spec_field}.initContainers")):
        field = f"{spec_field}.initContainers[{i}]"
        restart_policy = _mapping(item, field).get("restartPolicy")
        if restart_policy == "Always":
            # Native sidecars (KEP-753) run for the pod's whole life, so they draw power like containers.
            spec, amounts = _container(item, field, native_sidecar=True)
            containers.append(spec)
            add_extended(amounts)
            sidecar_count += 1
        else:
            _container(item, field, native_sidecar=False)  # validated, then not counted: it exits
            init_container_count += 1
    main = _list(pod_spec.get("containers"), f"{spec_field}.containers")
    if not main:
        raise ExtractionError(f"{spec_field}.containers", "must list at least one container")
    for i, item in enumerate(main):
        spec, amounts = _container(item, f"{spec_field}.containers[{i}]", native_sidecar=False)
        containers.append(spec)
        add_extended(amounts)

    pod_res = _resources(pod_spec.get("resources"), f"{spec_field}.resources")
    pod_resources = None
    if any(v is not None for v in (pod_res.req_cpu_mcpu, pod_res.req_mem_mib, pod_res.lim_cpu_mcpu, pod_res.lim_mem_mib)):
        pod_resources = PodResources(
            req_cpu_mcpu=pod_res.req_cpu_mcpu,
            req_mem_mib=pod_res.req_mem_mib,
            lim_cpu_mcpu=pod_res.lim_cpu_mcpu,
            lim_mem_mib=pod_res.lim_mem_mib,
        )

    node_selector = _string_map(pod_spec.get("nodeSelector"), f"{spec_field}.nodeSelector")
    node_labels = {**_required_affinity_labels(pod_spec), **node_selector}
    instance_type = next((node_labels[k] for k in INSTANCE_TYPE_LABELS if k in node_labels), None)

    counts_at, counts_field = _dig(obj, workload.count_path)
    counts = {
        name: _count(counts_at.get(name), f"{counts_field}.{name}", _COUNT_MAXIMA[name]) for name in workload.count_fields
    }
    replicas, parallelism, completions = (counts.get(n) for n in ("replicas", "parallelism", "completions"))

    labels = {
        k: v
        for k, v in _string_map(metadata.get("labels"), "metadata.labels").items()
        if not k.startswith(ANNOTATION_PREFIX)
    }
    annotations = {
        k: v
        for k, v in _string_map(metadata.get("annotations"), "metadata.annotations").items()
        if not k.startswith(ANNOTATION_PREFIX) and k != _LAST_APPLIED
    }
    name = metadata.get("name") or metadata.get("generateName") or ""
    try:
        return InferenceRequest(
            namespace=_optional_str(metadata.get("namespace"), "metadata.namespace") or "default",
            workload_kind=workload.name,  # type: ignore[arg-type]
            workload_name=_optional_str(name, "metadata.name") or "",
            labels=labels,
            annotations=annotations,
            containers=containers,
            init_container_count=init_container_count,
            sidecar_count=sidecar_count,
            volume_types=[
                _volume_type(v, f"{spec_field}.volumes[{i}]")
                for i, v in enumerate(_list(pod_spec.get("volumes"), f"{spec_field}.volumes"))
            ],
            node_type=node_selector.get(NODE_TYPE_LABEL),
            runtime_class=_optional_str(pod_spec.get("runtimeClassName"), f"{spec_field}.runtimeClassName"),
            gpu_count=sum(v * (gpu_fraction(k) or 0.0) for k, v in extended.items()),
            gpu_product=resolve_gpu_product(node_labels),
            parallelism=parallelism,
            completions=completions,
            replicas=replicas,
            pod_resources=pod_resources,
            extended_resources=extended,
            priority_class=_optional_str(pod_spec.get("priorityClassName"), f"{spec_field}.priorityClassName"),
            instance_type=instance_type,
            host_namespaces=_host_namespaces(pod_spec, spec_field),
            restart_policy=_restart_policy(pod_spec, spec_field) if workload.name == "Pod" else None,
            **_run_fields(obj, counts_at, counts_field, workload.runs),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ExtractionError(field, first["msg"]) from None
