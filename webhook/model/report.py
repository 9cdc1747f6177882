"""The answer shape of one workload's prediction, shared by ``POST /predict`` and ``energetiscope predict``.

Kept in the model core so the offline command and the HTTP endpoints report the same fields
without one importing the other.
"""

from __future__ import annotations

from typing import Any

from webhook.model.schema import PredictOut
from webhook.model.service import WorkloadPrediction


def predict_out(prediction: WorkloadPrediction) -> dict[str, Any]:
    """The prototype's fields first, then the new ones, as JSON values."""
    request, pod = prediction.request, prediction.pod
    runs = prediction.runs
    run = runs.run
    return PredictOut(
        pred_energy_step_j=prediction.pod_energy_step_joules,
        workload_kind=request.workload_kind,
        workload_name=request.workload_name,
        namespace=request.namespace,
        spec_hash=prediction.spec_hash,
        pod_power_watts=pod.power_watts,
        pod_power_watts_p10=pod.power_watts_p10,
        pod_power_watts_p90=pod.power_watts_p90,
        workload_pods=prediction.pods,
        workload_power_watts=prediction.workload_power_watts,
        workload_power_scope=prediction.scope,  # type: ignore[arg-type]
        energy_joules_per_hour=prediction.energy_joules_per_hour,
        model=pod.model_id,
        basis=pod.basis,
        fallback_reason=pod.fallback_reason,
        run_seconds=None if run is None else run.seconds.p50,
        run_seconds_p10=None if run is None else run.seconds.p10,
        run_seconds_p90=None if run is None else run.seconds.p90,
        energy_joules_per_run=None if run is None else run.joules.p50,
        energy_joules_per_run_p10=None if run is None else run.joules.p10,
        energy_joules_per_run_p90=None if run is None else run.joules.p90,
        run_bound=None if run is None else run.bound,
        run_source=None if run is None else run.source,
        runs_per_day=runs.runs_per_day,
        energy_joules_per_day=runs.joules_per_day,
        run_problem=runs.problem,
    ).model_dump(mode="json")
