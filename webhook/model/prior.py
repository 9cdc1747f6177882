"""The embedded default predictor: physics, not data.

Cloud Carbon Footprint's method: a vCPU draws between a minimum (idle) and maximum (fully
busy) power, interpolated by average utilisation; memory draws a fixed power per GB.

    pod W = PUE x ( vCPU x (min W + u_cpu x (max W - min W))
                  + memory GB x 0.392 W
                  + GPUs x (GPU idle W + u_gpu x (GPU max W - GPU idle W)) )

vCPU and memory come from the pod's requests (the share of a node the scheduler reserves
for it). The p10/p90 interval uses low and high utilisation, and the p90 end takes the
limits, since a pod can burst up to them. A GPU's idle and maximum W are its product's
(`webhook.model.gpus`: a B200 is not a T4); an unknown product is a generic 30-300 W GPU.

Versions, each kept as the baseline evaluations show (`EARLIER_PRIORS`):

* `ccf-prior-v1`, as first shipped: CCF's default utilisation (50%) for CPU and GPU alike, and
  no GPU products: every GPU was 30-300 W.
* `ccf-prior-v2`: the GPU product table.
* `ccf-prior-v3` (embedded): a pod's CPU at 10% of what it requests, not CCF's 50%. CCF's
  default is for a virtual machine whose utilisation is unknown; a Kubernetes pod's request is
  a reservation, and clusters use a small share of what they reserve (Cast AI's Kubernetes Cost
  Benchmark: 13% of provisioned CPU used on average in 2023, 10% in 2024, 8% in 2025). On the
  seed's real Kepler measurements of ~30 common cluster services with the specs their public
  charts deploy (`python -m bench.accuracy --sets seed`, `seed, public chart specs`), v2
  overestimated most of them: mean |log error| 1.685 against v3's 1.497 and a constant's 1.570.
  GPUs keep 50%: a GPU pod is scheduled to work, and ML.ENERGY's serving measurements sit near it.

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

PRIOR_MODEL_ID = "ccf-prior-v3"
SECOND_PRIOR_MODEL_ID = "ccf-prior-v2"  # CCF's 50% CPU utilisation
FIRST_PRIOR_MODEL_ID = "ccf-prior-v1"  # and no GPU product table
BYTES_PER_MIB = 2**20
BYTES_PER_GB = 10**9


@dataclass(frozen=True)
class PriorCoefficients:
    # CCF's figures for an unknown processor (average over the microarchitectures it lists).
    cpu_min_watts_per_vcpu: float = 0.74
    cpu_max_watts_per_vcpu: float = 3.5
    memory_watts_per_gb: float = 0.392
    # CPU utilisation, of the requested vCPU: Kubernetes clusters use about a tenth of the CPU
    # they reserve (module docstring); the p10 end is a fifth of it, as CCF's is of its default.
    utilisation: float = 0.1
    utilisation_p10: float = 0.02
    utilisation_p90: float = 0.9
    # GPU utilisation: CCF's default when actual utilisation is unknown.
    gpu_utilisation: float = 0.5
    gpu_utilisation_p10: float = 0.1
    gpu_utilisation_p90: float = 0.9
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
        for prefix in ("", "gpu_"):
            for name in (f"{prefix}utilisation", f"{prefix}utilisation_p10", f"{prefix}utilisation_p90"):
                if getattr(self, name) > 1:
                    raise ValueError(f"prior coefficient {name} is a fraction in [0, 1], got {getattr(self, name)}")
            if not getattr(self, f"{prefix}utilisation_p10") <= getattr(self, f"{prefix}utilisation") <= getattr(
                    self, f"{prefix}utilisation_p90"):
                raise ValueError(f"prior utilisations must satisfy {prefix}utilisation_p10 <= {prefix}utilisation"
                                 f" <= {prefix}utilisation_p90")
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
    # 1 for the pods of a Job or CronJob, or a bare Pod whose restartPolicy is Never or OnFailure:
    # they run their work until it is done. 0 for the rest. The embedded prior does not read it; the
    # calibrated prior fits their W per vCPU apart, since a service's pods idle near a floor whatever
    # they request while a batch pod works through its request (webhook.model.calibration). Only
    # artifacts of feature version 4 on have the column.
    "runs_to_completion",
)
RUNS_TO_COMPLETION_KINDS = frozenset({"Job", "CronJob"})
RUNS_TO_COMPLETION_POLICIES = frozenset({"Never", "OnFailure"})  # a bare Pod's restartPolicy
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
        1.0 if request.workload_kind in RUNS_TO_COMPLETION_KINDS or request.restart_policy in RUNS_TO_COMPLETION_POLICIES
        else 0.0,
    )


def physics_rows(requests: Sequence[InferenceRequest], coefficients: "PriorCoefficients") -> np.ndarray:
    """The numbers the prior's formula reads, one row per request (`PHYSICS_COLUMNS`)."""
    rows = np.zeros((len(requests), len(PHYSICS_COLUMNS)), dtype=np.float64)
    for i, request in enumerate(requests):
        rows[i] = physics_row(request, coefficients)
    return rows


# The previous versions, as evaluations score them beside the embedded one (module docstring).
SECOND_PRIOR = PriorCoefficients(utilisation=0.5, utilisation_p10=0.1)
FIRST_PRIOR = PriorCoefficients(utilisation=0.5, utilisation_p10=0.1, gpu_products=False)
# Each with what sets it apart, as every evaluation names it beside the embedded prior.
EARLIER_PRIORS: tuple[tuple[PriorCoefficients, str], ...] = (
    (SECOND_PRIOR, "CCF's 50% CPU utilisation"), (FIRST_PRIOR, "first shipped"))


def prior_watts(physics: np.ndarray, coefficients: "PriorCoefficients", quantile: str, *,
                at_limits: bool = False) -> np.ndarray:
    """The CCF formula over `physics_rows`: W per row, at the CPU and GPU utilisation of one
    quantile ("p10", "p50" or "p90"), of the requests or of the limits."""
    k = coefficients
    suffix = {"p10": "_p10", "p50": "", "p90": "_p90"}[quantile]
    cpu_utilisation, gpu_utilisation = getattr(k, f"utilisation{suffix}"), getattr(k, f"gpu_utilisation{suffix}")
    vcpu = physics[:, 1] if at_limits else physics[:, 0]
    memory_gb = physics[:, 3] if at_limits else physics[:, 2]
    gpus, gpu_idle, gpu_max = physics[:, 4], physics[:, 5], physics[:, 6]
    cpu = vcpu * (k.cpu_min_watts_per_vcpu + cpu_utilisation * (k.cpu_max_watts_per_vcpu - k.cpu_min_watts_per_vcpu))
    gpu = gpus * (gpu_idle + gpu_utilisation * (gpu_max - gpu_idle))
    return k.pue * (cpu + memory_gb * k.memory_watts_per_gb + gpu)


class PriorPredictor:
    def __init__(self, coefficients: PriorCoefficients | None = None) -> None:
        self.coefficients = coefficients or PriorCoefficients()

    @property
    def model_id(self) -> str:
        """The version whose formula these coefficients are: v1 without GPU products, v2 at CCF's
        50% CPU utilisation, v3 otherwise (the embedded default, or a user's own utilisation)."""
        if not self.coefficients.gpu_products:
            return FIRST_PRIOR_MODEL_ID
        return SECOND_PRIOR_MODEL_ID if self.coefficients.utilisation == SECOND_PRIOR.utilisation else PRIOR_MODEL_ID

    def predict_one(self, request: InferenceRequest, fallback_reason: str | None = None) -> PodPrediction:
        k = self.coefficients
        physics = physics_rows([request], k)
        return PodPrediction(
            power_watts=float(prior_watts(physics, k, "p50")[0]),
            power_watts_p10=float(prior_watts(physics, k, "p10")[0]),
            power_watts_p90=float(prior_watts(physics, k, "p90", at_limits=True)[0]),
            model_id=self.model_id,
            basis="prior",
            fallback_reason=fallback_reason,
        )

    def predict(self, requests: Sequence[InferenceRequest]) -> list[PodPrediction]:
        return [self.predict_one(r) for r in requests]


def shipped_priors() -> list[tuple[PriorPredictor, str]]:
    """The embedded prior and every version before it, each with what sets it apart: the baselines
    an evaluation scores a model against."""
    return [(PriorPredictor(), "embedded"), *((PriorPredictor(k), why) for k, why in EARLIER_PRIORS)]
