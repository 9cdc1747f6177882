"""The annotations EnergetiScope writes: the contract with users and with the budget webhook."""

from __future__ import annotations

from collections.abc import Mapping

from webhook.model.carbon import CarbonSettings, GridIntensity
from webhook.model.runs import Runs
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
# Jobs and CronJobs (webhook.model.runs): one run, and a CronJob's day.
RUN_SECONDS = ANNOTATION_PREFIX + "run-seconds"
ENERGY_JOULES_PER_RUN = ANNOTATION_PREFIX + "energy-joules-per-run"
ENERGY_JOULES_PER_RUN_P10 = ANNOTATION_PREFIX + "energy-joules-per-run-p10"
ENERGY_JOULES_PER_RUN_P90 = ANNOTATION_PREFIX + "energy-joules-per-run-p90"
RUN_BOUND = ANNOTATION_PREFIX + "run-bound"
RUNS_PER_DAY = ANNOTATION_PREFIX + "runs-per-day"
ENERGY_JOULES_PER_DAY = ANNOTATION_PREFIX + "energy-joules-per-day"
# Carbon (webhook.model.carbon): only where the grid is known, from --carbon-region,
# --grid-intensity or the pod's topology.kubernetes.io/region node selector; never guessed.
CARBON_GRAMS_PER_HOUR = ANNOTATION_PREFIX + "carbon-grams-per-hour"
CARBON_GRAMS_PER_RUN = ANNOTATION_PREFIX + "carbon-grams-per-run"
CARBON_GRAMS_PER_DAY = ANNOTATION_PREFIX + "carbon-grams-per-day"
CARBON_GRID = ANNOTATION_PREFIX + "carbon-grid"

NUMERIC_KEYS = (POD_POWER_WATTS, POD_POWER_WATTS_P10, POD_POWER_WATTS_P90, WORKLOAD_POWER_WATTS, ENERGY_JOULES_PER_HOUR)
ALL_KEYS = NUMERIC_KEYS + (WORKLOAD_POWER_SCOPE, MODEL, BASIS, SPEC_HASH)
# Written only where a figure exists, and removed where none does (a deadline taken out, a
# schedule made invalid, a forged key): a stale per-run figure must not outlive its cause.
RUN_KEYS = (RUN_SECONDS, ENERGY_JOULES_PER_RUN, ENERGY_JOULES_PER_RUN_P10, ENERGY_JOULES_PER_RUN_P90, RUN_BOUND,
            RUNS_PER_DAY, ENERGY_JOULES_PER_DAY)
# The same for carbon: a region taken out of the configuration or the node selector removes them.
CARBON_KEYS = (CARBON_GRAMS_PER_HOUR, CARBON_GRAMS_PER_RUN, CARBON_GRAMS_PER_DAY, CARBON_GRID)


def _number(value: float) -> str:
    # Fixed decimals: the same prediction always renders to the same string, which is what
    # makes a second admission pass produce no patch.
    return f"{value:.3f}"


def _optional_number(value: float | None) -> str | None:
    return None if value is None else _number(value)


def render_runs(runs: Runs) -> dict[str, str | None]:
    """The per-run and per-day keys; None for a key that must not be there."""
    run = runs.run
    return {
        RUN_SECONDS: None if run is None else _number(run.seconds.p50),
        ENERGY_JOULES_PER_RUN: None if run is None else _number(run.joules.p50),
        ENERGY_JOULES_PER_RUN_P10: None if run is None else _number(run.joules.p10),
        ENERGY_JOULES_PER_RUN_P90: None if run is None else _number(run.joules.p90),
        RUN_BOUND: None if run is None else run.bound,
        RUNS_PER_DAY: _optional_number(runs.runs_per_day),
        ENERGY_JOULES_PER_DAY: _optional_number(runs.joules_per_day),
    }


def render(prediction: WorkloadPrediction) -> dict[str, str | None]:
    """Our annotations for the prediction; a None value means the key must be removed."""
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
        **render_runs(prediction.runs),
    }


def wanted(prediction: WorkloadPrediction, grid: GridIntensity | None, carbon: CarbonSettings) -> dict[str, str | None]:
    """Every key the mutating webhook sets (a value) or removes (None) for this prediction."""
    return {**render(prediction), **render_carbon(prediction, grid, carbon)}


def render_carbon(prediction: WorkloadPrediction, grid: GridIntensity | None, carbon: CarbonSettings) -> dict[str, str | None]:
    """g CO2e per hour of running, per run and per day where those energies exist (times the
    configured PUE), and the grid that made them (``region@g/kWh``); every key None (removed)
    when the grid is unknown."""
    if grid is None:
        return dict.fromkeys(CARBON_KEYS)
    runs = prediction.runs
    run_joules = None if runs.run is None else runs.run.joules.p50
    day_joules = runs.joules_per_day

    def grams(joules: float | None) -> str | None:
        return None if joules is None else _number(carbon.grams_of_joules(joules, grid))

    return {
        CARBON_GRAMS_PER_HOUR: grams(prediction.energy_joules_per_hour),
        CARBON_GRAMS_PER_RUN: grams(run_joules),
        CARBON_GRAMS_PER_DAY: grams(day_joules),
        CARBON_GRID: f"{grid.region}@{_number(grid.grams_per_kwh)}",
    }


def is_skipped(labels: Mapping[str, object] | None) -> bool:
    return bool(labels) and str(labels.get(SKIP_LABEL, "")).lower() == "true"  # type: ignore[union-attr]
