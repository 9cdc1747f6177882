"""What a predictor answers, and the interface every predictor implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

from webhook.model.schema import InferenceRequest

Basis = Literal["model", "prior"]


@dataclass(frozen=True)
class PodPrediction:
    """Predicted average power of one pod, W, with an 80% interval."""

    power_watts: float
    power_watts_p10: float
    power_watts_p90: float
    model_id: str
    basis: Basis
    # Why a trained model answered with the prior instead (None when it did not).
    fallback_reason: str | None = None


class Predictor(Protocol):
    @property
    def model_id(self) -> str: ...

    def predict(self, requests: Sequence[InferenceRequest]) -> list[PodPrediction]: ...
