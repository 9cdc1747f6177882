"""A model artifact that predicts slowly: fault injection for the time-budget test.

It is a real artifact the server loads from disk; only its encoder sleeps, as a model
stuck on I/O or a pathological input would.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from webhook.features import PodFeatureEncoder


class SlowEncoder(PodFeatureEncoder):
    def __init__(self, delay_seconds: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay_seconds = delay_seconds

    def transform(self, X: Any) -> np.ndarray:
        if getattr(self, "armed_", False):
            time.sleep(self.delay_seconds)
        return super().transform(X)
