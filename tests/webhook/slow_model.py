"""A server whose model predicts slowly: fault injection for the time-budget tests.

Model artifacts hold data only (`webhook.model.artifact`), so a slow model can no longer travel
inside one: this module is the server's entry point with `PodFeatureEncoder.transform` made to
sleep, for every spec or only for specs with a container requesting `SLOW_CPU_MILLICORES_VARIABLE`
millicores, as a model stuck on I/O or a pathological input would. The artifact it serves is a
real one, written by `write_model` and loaded from disk by the server as shipped.

Run as `python -m tests.webhook.slow_model serve ...` (`SLOW_SERVE` for `WebhookProcess`). The
delay is installed when this module is imported with `SLOW_SECONDS_VARIABLE` set, not only when it
runs as the server: the server's prediction process (`webhook.model.process`, started with
"spawn") imports it again as its main module, and must be as slow as the server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from webhook.model.artifact import build_pipeline, save_model
from webhook.model.features import PodFeatureEncoder
from webhook.model.schema import ContainerSpec, InferenceRequest

SLOW_SERVE = ("tests.webhook.slow_model", "serve")
SLOW_SECONDS_VARIABLE = "ENERGETISCOPE_TEST_SLOW_SECONDS"
SLOW_CPU_MILLICORES_VARIABLE = "ENERGETISCOPE_TEST_SLOW_CPU_MILLICORES"


def write_model(path: Path) -> None:
    requests = [InferenceRequest(workload_kind="Deployment", containers=[ContainerSpec(name="c", image="nginx", req_cpu_mcpu=m)])
                for m in (100, 250, 500)]
    save_model(path, build_pipeline(n_neighbors=2).fit(requests, [1.0, 2.0, 3.0]), "slow-model")


def slow_environment(delay_seconds: float = 5.0, slow_cpu_millicores: int | None = None) -> dict[str, str]:
    environment = {SLOW_SECONDS_VARIABLE: str(delay_seconds)}
    if slow_cpu_millicores is not None:
        environment[SLOW_CPU_MILLICORES_VARIABLE] = str(slow_cpu_millicores)
    return environment


def _install_delay() -> None:
    delay_seconds = float(os.environ.get(SLOW_SECONDS_VARIABLE, "5"))
    only = os.environ.get(SLOW_CPU_MILLICORES_VARIABLE)
    transform = PodFeatureEncoder.transform

    def slow_transform(self: PodFeatureEncoder, X: Any) -> np.ndarray:
        requests = list(X)
        if only is None or any(c.req_cpu_mcpu == int(only) for r in requests for c in r.containers):
            time.sleep(delay_seconds)
        return transform(self, requests)

    PodFeatureEncoder.transform = slow_transform  # type: ignore[method-assign]


if os.environ.get(SLOW_SECONDS_VARIABLE):
    _install_delay()

if __name__ == "__main__":
    from webhook.cli import main

    main()
