"""Small synthetic trainer datasets (pod-windows joined to specs) for fit and evaluate tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.dataset import request_json
from webhook.model.schema import ContainerSpec, InferenceRequest, spec_hash


def request(name: str, cpu_millicores: int, image: str = "example/app:1") -> InferenceRequest:
    return InferenceRequest(namespace="apps", workload_kind="Deployment", workload_name=name,
                            containers=[ContainerSpec(name="main", image=image, req_cpu_mcpu=cpu_millicores,
                                                      req_mem_mib=256)])


def dataset(pods: list[tuple[InferenceRequest, str, list[float]]], start: str = "2025-10-30T23:58:00Z") -> pd.DataFrame:
    """Pod-windows: (spec, pod, energy per 60 s window)."""
    records = []
    for spec, pod, energies in pods:
        for i, joules in enumerate(energies):
            records.append({"window_start": pd.Timestamp(start) + pd.Timedelta(minutes=i), "window_seconds": 60,
                            "namespace": spec.namespace, "pod": pod, "workload_kind": spec.workload_kind,
                            "workload_name": spec.workload_name, "join_rule": "workload", "spec_hash": spec_hash(spec),
                            "request_json": request_json(spec), "power_watts": joules / 60, "energy_joules": joules})
    return pd.DataFrame.from_records(records)


def scaling_pods(workloads: int, pods_per_workload: int = 2, seed: int = 7) -> list[tuple[InferenceRequest, str, list[float]]]:
    """Workloads whose power follows their CPU request (1 W + 8 W per core, +-5% per window),
    well above what the prior assumes per vCPU: 100 m .. 6.4 cores, each size repeated."""
    rng = np.random.default_rng(seed)
    pods = []
    for i in range(workloads):
        cpu = int(100 * 2 ** (i % 7))
        spec = request(f"svc-{i}", cpu, image=f"example/svc{i % 3}:1")
        watts = 1.0 + 8.0 * cpu / 1000
        for p in range(pods_per_workload):
            pods.append((spec, f"svc-{i}-{p}", list(watts * 60 * rng.uniform(0.95, 1.05, 6))))
    return pods
