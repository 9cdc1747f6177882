"""The embedded default predictor: physics, not data.

Cloud Carbon Footprint's method: a vCPU draws between a minimum (idle) and maximum (fully
busy) power, interpolated by average utilisation; memory draws a fixed power per GB.

    pod W = PUE x ( vCPU x (min W + u x (max W - min W))
                  + memory GB x 0.392 W
                  + GPUs x (GPU min W + u x (GPU max W - GPU min W)) )

vCPU and memory come from the pod's requests (the share of a node the scheduler reserves
for it). The p10/p90 interval uses low and high utilisation, and the p90 end takes the
limits, since a pod can burst up to them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from webhook.model.prediction import PodPrediction
from webhook.model.resources import pod_totals
from webhook.model.schema import InferenceRequest

PRIOR_MODEL_ID = "ccf-prior-v1"
BYTES_PER_MIB = 2**20
BYTES_PER_GB = 10**9


@dataclass(frozen=True)
class PriorCoefficients:
    # CCF's figures for an unknown processor (average over the microarchitectures it lists).
    cpu_min_watts_per_vcpu: float = 0.74
    cpu_max_watts_per_vcpu: float = 3.5
    memory_watts_per_gb: float = 0.392
    # CCF's default when actual utilisation is unknown.
    utilisation: float = 0.5
    utilisation_p10: float = 0.1
    utilisation_p90: float = 0.9
    # Kepler measures at the node, without the data centre's overhead: 1.0 keeps
    # predictions comparable to the measurements the trainer learns from.
    pue: float = 1.0
    # A datacentre GPU idles around 30 W and tops out near 300 W (V100/A100 PCIe class).
    gpu_min_watts: float = 30.0
    gpu_max_watts: float = 300.0
    # A container with neither request nor limit: what a LimitRange would commonly default.
    default_cpu_millicores: float = 100.0
    default_memory_mib: float = 128.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:
                raise ValueError(f"prior coefficient {name} must be >= 0, got {value}")
        for name in ("utilisation", "utilisation_p10", "utilisation_p90"):
            if getattr(self, name) > 1:
                raise ValueError(f"prior coefficient {name} is a fraction in [0, 1], got {getattr(self, name)}")
        if not self.utilisation_p10 <= self.utilisation <= self.utilisation_p90:
            raise ValueError("prior utilisations must satisfy utilisation_p10 <= utilisation <= utilisation_p90")
        if self.cpu_min_watts_per_vcpu > self.cpu_max_watts_per_vcpu:
            raise ValueError("cpu_min_watts_per_vcpu must not exceed cpu_max_watts_per_vcpu")
        if self.gpu_min_watts > self.gpu_max_watts:
            raise ValueError("gpu_min_watts must not exceed gpu_max_watts")


class PriorPredictor:
    def __init__(self, coefficients: PriorCoefficients | None = None) -> None:
        self.coefficients = coefficients or PriorCoefficients()

    @property
    def model_id(self) -> str:
        return PRIOR_MODEL_ID

    def _watts(self, vcpu: float, memory_mib: float, gpus: float, utilisation: float) -> float:
        k = self.coefficients
        cpu = vcpu * (k.cpu_min_watts_per_vcpu + utilisation * (k.cpu_max_watts_per_vcpu - k.cpu_min_watts_per_vcpu))
        memory = memory_mib * BYTES_PER_MIB / BYTES_PER_GB * k.memory_watts_per_gb
        gpu = gpus * (k.gpu_min_watts + utilisation * (k.gpu_max_watts - k.gpu_min_watts))
        return k.pue * (cpu + memory + gpu)

    def predict_one(self, request: InferenceRequest, fallback_reason: str | None = None) -> PodPrediction:
        k = self.coefficients
        totals = pod_totals(request, k.default_cpu_millicores, k.default_memory_mib)
        gpus = request.gpu_count
        vcpu_req = totals.cpu_request_millicores / 1000
        vcpu_lim = totals.cpu_limit_millicores / 1000
        return PodPrediction(
            power_watts=self._watts(vcpu_req, totals.memory_request_mib, gpus, k.utilisation),
            power_watts_p10=self._watts(vcpu_req, totals.memory_request_mib, gpus, k.utilisation_p10),
            power_watts_p90=self._watts(vcpu_lim, totals.memory_limit_mib, gpus, k.utilisation_p90),
            model_id=PRIOR_MODEL_ID,
            basis="prior",
            fallback_reason=fallback_reason,
        )

    def predict(self, requests: Sequence[InferenceRequest]) -> list[PodPrediction]:
        return [self.predict_one(r) for r in requests]
