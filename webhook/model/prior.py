"""The embedded default predictor: physics, not data.

Cloud Carbon Footprint's method: a vCPU draws between a minimum (idle) and maximum (fully
busy) power, interpolated by average utilisation; memory draws a fixed power per GB.

    pod W = PUE x ( vCPU x (min W + u x (max W - min W))
                  + memory GB x 0.392 W
                  + GPUs x (GPU idle W + u x (GPU max W - GPU idle W)) )

vCPU and memory come from the pod's requests (the share of a node the scheduler reserves
for it). The p10/p90 interval uses low and high utilisation, and the p90 end takes the
limits, since a pod can burst up to them. A GPU's idle and maximum W are its product's
(`webhook.model.gpus`: a B200 is not a T4); an unknown product is a generic 30-300 W GPU.
`ccf-prior-v1`, the prior as first shipped, knew no products: every GPU was 30-300 W. It
stays available (`PriorCoefficients(gpu_products=False)`) as the baseline evaluations show.

`physics_rows` turns requests into the few numbers this formula reads; the trained model's
calibrated prior (`webhook.model.calibration`) fits its coefficients on the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from webhook.model.gpus import GPU_PRODUCTS, gpu_product
from webhook.model.prediction import PodPrediction
from webhook.model.resources import pod_totals
from webhook.model.schema import InferenceRequest

PRIOR_MODEL_ID = "ccf-prior-v2"
FIRST_PRIOR_MODEL_ID = "ccf-prior-v1"  # the same without the GPU product table
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
    # Per-product GPU power (webhook.model.gpus); False is ccf-prior-v1's one generic GPU.
    gpu_products: bool = True

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool):
                continue
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


# The columns of `physics_rows`, in order.
PHYSICS_COLUMNS = (
    "vcpu_request",
    "vcpu_limit",
    "memory_gb_request",
    "memory_gb_limit",
    "gpus",
    "gpu_idle_watts",
    "gpu_max_watts",
    "gpu_product_index",  # index into webhook.model.gpus.GPU_PRODUCTS, -1 for a product it does not know
)
_PRODUCT_INDEX = {product.name: index for index, product in enumerate(GPU_PRODUCTS)}


def physics_row(request: InferenceRequest, coefficients: "PriorCoefficients") -> tuple[float, ...]:
    """One request's `PHYSICS_COLUMNS`, as Python numbers (the encoder builds a single row from them
    without a numpy array per request)."""
    totals = pod_totals(request, coefficients.default_cpu_millicores, coefficients.default_memory_mib)
    product = gpu_product(request.gpu_product if coefficients.gpu_products else None)
    return (
        totals.cpu_request_millicores / 1000,
        totals.cpu_limit_millicores / 1000,
        totals.memory_request_mib * BYTES_PER_MIB / BYTES_PER_GB,
        totals.memory_limit_mib * BYTES_PER_MIB / BYTES_PER_GB,
        request.gpu_count,
        product.idle_watts if coefficients.gpu_products else coefficients.gpu_min_watts,
        product.max_watts if coefficients.gpu_products else coefficients.gpu_max_watts,
        _PRODUCT_INDEX.get(product.name, -1),
    )


def physics_rows(requests: Sequence[InferenceRequest], coefficients: "PriorCoefficients") -> np.ndarray:
    """The numbers the prior's formula reads, one row per request (`PHYSICS_COLUMNS`)."""
    rows = np.zeros((len(requests), len(PHYSICS_COLUMNS)), dtype=np.float64)
    for i, request in enumerate(requests):
        rows[i] = physics_row(request, coefficients)
    return rows


def prior_watts(physics: np.ndarray, coefficients: "PriorCoefficients", utilisation: float, *,
                at_limits: bool = False) -> np.ndarray:
    """The CCF formula over `physics_rows`: W per row, at one utilisation (requests, or limits)."""
    k = coefficients
    vcpu = physics[:, 1] if at_limits else physics[:, 0]
    memory_gb = physics[:, 3] if at_limits else physics[:, 2]
    gpus, gpu_idle, gpu_max = physics[:, 4], physics[:, 5], physics[:, 6]
    cpu = vcpu * (k.cpu_min_watts_per_vcpu + utilisation * (k.cpu_max_watts_per_vcpu - k.cpu_min_watts_per_vcpu))
    gpu = gpus * (gpu_idle + utilisation * (gpu_max - gpu_idle))
    return k.pue * (cpu + memory_gb * k.memory_watts_per_gb + gpu)


class PriorPredictor:
    def __init__(self, coefficients: PriorCoefficients | None = None) -> None:
        self.coefficients = coefficients or PriorCoefficients()

    @property
    def model_id(self) -> str:
        return PRIOR_MODEL_ID if self.coefficients.gpu_products else FIRST_PRIOR_MODEL_ID

    def predict_one(self, request: InferenceRequest, fallback_reason: str | None = None) -> PodPrediction:
        k = self.coefficients
        physics = physics_rows([request], k)
        return PodPrediction(
            power_watts=float(prior_watts(physics, k, k.utilisation)[0]),
            power_watts_p10=float(prior_watts(physics, k, k.utilisation_p10)[0]),
            power_watts_p90=float(prior_watts(physics, k, k.utilisation_p90, at_limits=True)[0]),
            model_id=self.model_id,
            basis="prior",
            fallback_reason=fallback_reason,
        )

    def predict(self, requests: Sequence[InferenceRequest]) -> list[PodPrediction]:
        return [self.predict_one(r) for r in requests]
