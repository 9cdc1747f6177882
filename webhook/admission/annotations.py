"""The annotations EnergetiScope writes: the contract with users and with the budget webhook."""

from __future__ import annotations

from collections.abc import Mapping

from webhook.model.schema import ANNOTATION_PREFIX
from webhook.model.service import WorkloadPrediction

POD_POWER_WATTS = ANNOTATION_PREFIX + "pod-power-watts"
POD_POWER_WATTS_P10 = ANNOTATION_PREFIX + "pod-power-watts-p10"
POD_POWER_WATTS_P90 = ANNOTATION_PREFIX + "pod-power-watts-p90"
WORKLOAD_POWER_WATTS = ANNOTATION_PREFIX + "workload-power-watts"
WORKLOAD_POWER_SCOPE = ANNOTATION_PREFIX + "workload-power-scope"
ENERGY_JOULES_PER_HOUR = ANNOTATION_PREFIX + "energy-joules-per-hour"
MODEL = ANNOTATION_PREFIX + "model"
BASIS = ANNOTATION_PREFIX + "basis"
SPEC_HASH = ANNOTATION_PREFIX + "spec-hash"
SKIP_LABEL = ANNOTATION_PREFIX + "skip"

NUMERIC_KEYS = (POD_POWER_WATTS, POD_POWER_WATTS_P10, POD_POWER_WATTS_P90, WORKLOAD_POWER_WATTS, ENERGY_JOULES_PER_HOUR)
ALL_KEYS = NUMERIC_KEYS + (WORKLOAD_POWER_SCOPE, MODEL, BASIS, SPEC_HASH)


def _number(value: float) -> str:
    # Fixed decimals: the same prediction always renders to the same string, which is what
    # makes a second admission pass produce no patch.
    return f"{value:.3f}"


def render(prediction: WorkloadPrediction) -> dict[str, str]:
    pod = prediction.pod
    return {
        POD_POWER_WATTS: _number(pod.power_watts),
        POD_POWER_WATTS_P10: _number(pod.power_watts_p10),
        POD_POWER_WATTS_P90: _number(pod.power_watts_p90),
        WORKLOAD_POWER_WATTS: _number(prediction.workload_power_watts),
        WORKLOAD_POWER_SCOPE: prediction.scope,
        ENERGY_JOULES_PER_HOUR: _number(prediction.energy_joules_per_hour),
        MODEL: pod.model_id,
        BASIS: pod.basis,
        SPEC_HASH: prediction.spec_hash,
    }


def is_skipped(labels: Mapping[str, object] | None) -> bool:
    return bool(labels) and str(labels.get(SKIP_LABEL, "")).lower() == "true"  # type: ignore[union-attr]
