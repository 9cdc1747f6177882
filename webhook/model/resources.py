"""Per-pod resource totals of an InferenceRequest, as the kubelet would account them."""

from __future__ import annotations

from dataclasses import dataclass

from webhook.model.schema import InferenceRequest


@dataclass(frozen=True)
class PodTotals:
    """Resources of the running containers (native sidecars included), summed per pod.

    A missing request falls back to the limit (the apiserver defaults it so), then to the
    given default. A request or limit of zero counts as missing, a choice for power rather than
    the apiserver's accounting (it keeps an explicit 0): Kubernetes' QoS classes ignore zero
    quantities, and `cpu: "0"` on a node agent says nothing of what it draws; read as 0 vCPU it
    made the prior's answer 0 W. A missing limit means "unbounded", so the limit totals fall back to the
    request totals: the pod cannot be expected to stay below what it asked for.
    Pod-level ``resources`` (Kubernetes 1.32+) replace the sums where set.
    """

    cpu_request_millicores: float
    cpu_limit_millicores: float
    memory_request_mib: float
    memory_limit_mib: float
    containers_without_cpu_request: int
    containers_without_memory_request: int


def pod_totals(request: InferenceRequest, default_cpu_millicores: float, default_memory_mib: float) -> PodTotals:
    cpu_req = cpu_lim = mem_req = mem_lim = 0.0
    no_cpu = no_mem = 0
    for c in request.containers:
        # `or`: None and zero alike fall through (the docstring).
        c_cpu_req = c.req_cpu_mcpu or c.lim_cpu_mcpu
        if not c_cpu_req:
            no_cpu += 1
            c_cpu_req = default_cpu_millicores
        c_mem_req = c.req_mem_mib or c.lim_mem_mib
        if not c_mem_req:
            no_mem += 1
            c_mem_req = default_memory_mib
        cpu_req += c_cpu_req
        mem_req += c_mem_req
        cpu_lim += max(c.lim_cpu_mcpu or c_cpu_req, c_cpu_req)
        mem_lim += max(c.lim_mem_mib or c_mem_req, c_mem_req)
    pod = request.pod_resources
    if pod is not None:  # zero counts as missing here too
        if pod.req_cpu_mcpu or pod.lim_cpu_mcpu:
            cpu_req = float(pod.req_cpu_mcpu or pod.lim_cpu_mcpu)  # type: ignore[arg-type]
            cpu_lim = float(max(pod.lim_cpu_mcpu or 0, cpu_req))
        if pod.req_mem_mib or pod.lim_mem_mib:
            mem_req = float(pod.req_mem_mib or pod.lim_mem_mib)  # type: ignore[arg-type]
            mem_lim = float(max(pod.lim_mem_mib or 0, mem_req))
    return PodTotals(cpu_req, cpu_lim, mem_req, mem_lim, no_cpu, no_mem)
