"""The simulator's ground truth: how much power a pod draws, given its spec and its profile.

This is the truth of every synthetic benchmark (the training sets of `admission_load` and
`predictor_scale`, the simulated cluster of `trainer_scale` and `accuracy`). It is a made-up
but physically shaped model, not a measurement; accuracy numbers on it say how well the
trainer recovers *this* function from Kepler-style counters, not how well it does on a real
cluster.

    pod W = workload_factor x (
                sum over running containers c of
                    ( CONTAINER_OVERHEAD_WATTS + busy_cores(c) x WATTS_PER_BUSY_CORE )
              + memory_request_GiB x WATTS_PER_GIB
              + gpus x (GPU idle W + gpu_utilisation x (GPU max W - GPU idle W)) )

    busy_cores(c) = the profile's idle load, whatever c requests               (most services)
                  | min(cpu_request(c) x cpu_utilisation, cpu_limit(c))         (batch work)
                  | AT_LIMIT_SHARE x cpu_limit(c), or of the request without one (busy agents)

Why: real long-running services mostly idle near a floor whatever they request (Kepler on a
real cluster, ../shared/data/seed-kepler: coredns 0.12 W, kube-state-metrics 0.10 W, an ingress
controller 0.05 W, with 100 m or more requested), while a few agents (a CNI, a node scanner) run
at their limits and batch jobs use what they asked for. The first simulator scaled every
service's power with its request, the way the CCF prior assumes, which made the prior look far
better on it than on real measurements. A container without a CPU request is taken to ask 0.1
core. The load kind, `cpu_utilisation`, `idle_busy_cores` and `gpu_utilisation` belong to the
workload's profile; the model sees the profile only through image, command and app-label words.
A GPU's idle and maximum W are those of its product (`webhook.model.gpus`, from the instance type
the pod selects), GPU_IDLE_WATTS and GPU_MAX_WATTS when none is known.

`workload_factor` is per workload, lognormal with median 1 and sigma WORKLOAD_FACTOR_SIGMA:
two services with the same spec still differ in traffic. No spec-based model can learn it, so
it sets a floor under any model's error: mean |log error| >= sigma x sqrt(2/pi) ~= 0.20.

Per 60 s window the power is further multiplied by a diurnal swing for long-running services
(1 + DIURNAL_AMPLITUDE x sin(2 pi (t - phase) / 1 day)) and a lognormal per-window noise of sigma
WINDOW_NOISE_SIGMA; both average out over a week.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONTAINER_OVERHEAD_WATTS = 0.02  # an idle container: Kepler attributes it a few hundredths of a W
WATTS_PER_BUSY_CORE = 7.0
WATTS_PER_GIB = 0.02  # memory draws by access, not by size: an idle GiB costs little
AT_LIMIT_SHARE = 0.9
GPU_IDLE_WATTS = 35.0
GPU_MAX_WATTS = 250.0
DEFAULT_CPU_CORES_WITHOUT_REQUEST = 0.1
WORKLOAD_FACTOR_SIGMA = 0.25
WINDOW_NOISE_SIGMA = 0.10
DIURNAL_AMPLITUDE = 0.30
SECONDS_PER_DAY = 86_400.0
MIB_PER_GIB = 1024.0


@dataclass(frozen=True)
class ContainerLoad:
    """What the truth needs of one running container."""

    cpu_request_millicores: int | None
    cpu_limit_millicores: int | None


def busy_cores(container: ContainerLoad, cpu_utilisation: float, idle_busy_cores: float | None = None,
               at_limit: bool = False) -> float:
    if idle_busy_cores is not None:
        return idle_busy_cores
    requested_cores = (
        container.cpu_request_millicores / 1000.0
        if container.cpu_request_millicores is not None
        else DEFAULT_CPU_CORES_WITHOUT_REQUEST
    )
    if at_limit:
        limit = container.cpu_limit_millicores / 1000.0 if container.cpu_limit_millicores is not None else requested_cores
        return AT_LIMIT_SHARE * limit
    busy = requested_cores * cpu_utilisation
    if container.cpu_limit_millicores is not None:
        busy = min(busy, container.cpu_limit_millicores / 1000.0)
    return busy


def pod_power_watts(
    containers: list[ContainerLoad],
    memory_request_mib: float,
    gpus: float,
    cpu_utilisation: float,
    gpu_utilisation: float,
    idle_busy_cores: float | None = None,
    at_limit: bool = False,
    gpu_idle_watts: float = GPU_IDLE_WATTS,
    gpu_max_watts: float = GPU_MAX_WATTS,
) -> float:
    """The noise-free power of one pod of the spec (workload_factor 1), W."""
    cpu_watts = sum(CONTAINER_OVERHEAD_WATTS + busy_cores(c, cpu_utilisation, idle_busy_cores, at_limit) * WATTS_PER_BUSY_CORE
                    for c in containers)
    memory_watts = memory_request_mib / MIB_PER_GIB * WATTS_PER_GIB
    gpu_watts = gpus * (gpu_idle_watts + gpu_utilisation * (gpu_max_watts - gpu_idle_watts))
    return cpu_watts + memory_watts + gpu_watts


def workload_factor(rng: np.random.Generator) -> float:
    return float(math.exp(rng.normal(0.0, WORKLOAD_FACTOR_SIGMA)))


def window_power_watts(
    mean_watts: float,
    window_start_seconds: np.ndarray,
    diurnal: bool,
    phase_seconds: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Power in each 60 s window for a pod whose long-run mean is `mean_watts`.

    The lognormal noise is divided by its mean, exp(sigma^2 / 2), so the expected power stays
    `mean_watts`; the sine averages to 0 over whole days.
    """
    noise = np.exp(rng.normal(0.0, WINDOW_NOISE_SIGMA, len(window_start_seconds)) - WINDOW_NOISE_SIGMA**2 / 2)
    swing = 1.0
    if diurnal:
        swing = 1.0 + DIURNAL_AMPLITUDE * np.sin(2 * math.pi * (window_start_seconds - phase_seconds) / SECONDS_PER_DAY)
    return mean_watts * swing * noise
