"""A model artifact that predicts slowly: fault injection for the time-budget test.

It is a real artifact the server loads from disk; only its encoder sleeps, as a model
stuck on I/O or a pathological input would.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from webhook.model.features import PodFeatureEncoder


class SlowEncoder(PodFeatureEncoder):
    def __init__(self, delay_seconds: float = 5.0, slow_cpu_millicores: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay_seconds = delay_seconds
        # When set, only specs with a container requesting this much CPU are slow.
        self.slow_cpu_millicores = slow_cpu_millicores

    def _is_slow(self, X: Any) -> bool:
        if self.slow_cpu_millicores is None:
            return True
        return any(c.req_cpu_mcpu == self.slow_cpu_millicores for request in X for c in request.containers)

    def transform(self, X: Any) -> np.ndarray:
        if getattr(self, "armed_", False) and self._is_slow(X):
            time.sleep(self.delay_seconds)
        return super().transform(X)
