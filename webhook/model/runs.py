"""What one run of a Job (or of a CronJob's Job) lasts and costs, and what a CronJob costs per day.

One place makes the per-run and per-day figures that the service, the ``/predict`` answer, the
annotations and the budgets read, so they cannot disagree:

- energy of one run, J = workload power (the pods that run at once x one pod's W) x the run's
  wall time, s; p10/p90 take the pod power's interval at the same run time;
- the run time comes from a trained run model when one serves (a predictor that implements
  :class:`RunTimeModel`), else from ``activeDeadlineSeconds``, which the Job controller enforces
  on the whole run (retries included), so the figures are an upper bound (``bound="upper"``);
  with neither, a run's length is unknown and there are no per-run figures;
- a CronJob's runs per day come from its schedule (``webhook.model.schedule``), and its energy
  per day is runs per day x energy per run.

The run fields (completions, deadline, schedule, ...) are not in the spec hash, since they do
not change one pod's power; these figures are therefore computed per request, never cached by
spec hash alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from webhook.model.kinds import kind_named
from webhook.model.prediction import PodPrediction
from webhook.model.schedule import SECONDS_PER_DAY, runs_per_day
from webhook.model.schema import InferenceRequest

Bound = Literal["upper"]
DEADLINE_SOURCE = "activeDeadlineSeconds"


@dataclass(frozen=True)
class Spread:
    """A predicted quantity with its 80% interval."""

    p10: float
    p50: float
    p90: float

    def times(self, factor: Spread) -> Spread:
        return Spread(self.p10 * factor.p10, self.p50 * factor.p50, self.p90 * factor.p90)


@dataclass(frozen=True)
class RunPrediction:
    """One run: its wall time (s) and energy (J), with what they came from."""

    seconds: Spread
    joules: Spread
    bound: Bound | None  # "upper" when the run time is activeDeadlineSeconds, not a prediction
    source: str  # DEADLINE_SOURCE, or the id of the model that predicted the run time


@dataclass(frozen=True)
class Runs:
    """The per-run and per-day figures of a Job or CronJob (all None for other kinds)."""

    run: RunPrediction | None = None
    runs_per_day: float | None = None  # CronJob only
    problem: str | None = None  # why a CronJob's runs per day are unknown, naming the field

    @property
    def joules_per_day(self) -> float | None:
        """A CronJob's energy per day, J (point); None when a run's energy or the rate is unknown."""
        return scheduled_joules_per_day(self.runs_per_day, None if self.run is None else self.run.joules.p50)

    @property
    def joules_per_day_p90(self) -> float | None:
        return scheduled_joules_per_day(self.runs_per_day, None if self.run is None else self.run.joules.p90)


NO_RUNS = Runs()


@runtime_checkable
class RunTimeModel(Protocol):
    """A trained predictor that also predicts a run's wall time (the trainer's run model).

    Its answers depend on the run fields as well as the pod spec, so they must be keyed by both.
    """

    @property
    def model_id(self) -> str: ...

    def predict_run_seconds(self, request: InferenceRequest) -> Spread | None: ...


def run_waves(request: InferenceRequest) -> int:
    """How many rounds of pods a run takes: completions / parallelism, rounded up (1 when either
    is unset: a single pod, or a work queue whose pods all start at once). The run model learns the
    wall time of one wave, so that a Job of 8 completions 2 at a time is 4 of its waves long."""
    completions = 1 if request.completions is None else request.completions
    parallelism = 1 if request.parallelism is None else request.parallelism
    if completions <= 0 or parallelism <= 0:
        return 1
    return max(1, -(-completions // parallelism))


def deadline_cap_seconds(request: InferenceRequest) -> float:
    """The longest a run of this Job can last, s: its ``activeDeadlineSeconds``, inf without one."""
    deadline = request.active_deadline_seconds
    return float(deadline) if deadline is not None and deadline > 0 else math.inf


def capped_run_seconds(request: InferenceRequest, wave_seconds: Spread) -> Spread:
    """A run's wall time, s, from one wave's: x the run's waves, and never beyond
    ``activeDeadlineSeconds``, after which the Job controller stops the run whatever its work (the
    simulated cluster's CronJobs stop at an hour: a run model that learns their typical wave
    otherwise answers past the deadline for templates with more work than their deadline allows).
    The trainer scores the run model through this function and the webhook serves through it."""
    waves = run_waves(request)
    cap = deadline_cap_seconds(request)
    return Spread(min(waves * wave_seconds.p10, cap), min(waves * wave_seconds.p50, cap),
                  min(waves * wave_seconds.p90, cap))


def scheduled_joules_per_day(runs: float | None, joules_per_run: float | None) -> float | None:
    """Runs per day x J per run; a CronJob that never runs costs 0 whatever a run would."""
    if runs == 0.0:
        return 0.0
    return None if runs is None or joules_per_run is None else runs * joules_per_run


def predicts_run_time(model: object) -> bool:
    """Whether ``model`` is a :class:`RunTimeModel` with a run model to use. An attribute check, not
    ``isinstance`` on the runtime-checkable Protocol: that walks the Protocol's attributes, ~17 us,
    a third of a review answered from the cache (cProfile of bench.mutate_stages' cached path);
    an artifact trained without runs says so with ``run_pipeline = None``."""
    return (callable(getattr(model, "predict_run_seconds", None)) and hasattr(model, "model_id")
            and getattr(model, "run_pipeline", True) is not None)


def run_seconds(request: InferenceRequest, model: object = None) -> tuple[Spread, Bound | None, str] | None:
    """A run's wall time: the run model's, else the deadline as an upper bound, else None."""
    if predicts_run_time(model):
        predicted = model.predict_run_seconds(request)  # type: ignore[union-attr]
        if predicted is not None:
            return predicted, None, model.model_id  # type: ignore[union-attr]
    deadline = request.active_deadline_seconds
    if deadline is None:
        return None
    seconds = float(deadline)
    return Spread(seconds, seconds, seconds), "upper", DEADLINE_SOURCE


def predict_runs(request: InferenceRequest, pod: PodPrediction, pods: int, model: object = None) -> Runs:
    """The per-run and per-day figures of a request whose pod prediction is ``pod``."""
    kind = kind_named(request.workload_kind)
    if kind is None or kind.runs == "none":
        return NO_RUNS
    run = None
    timed = run_seconds(request, model)
    if timed is not None:
        seconds, bound, source = timed
        watts = Spread(pods * pod.power_watts_p10, pods * pod.power_watts, pods * pod.power_watts_p90)
        run = RunPrediction(seconds=seconds, joules=watts.times(seconds), bound=bound, source=source)
    if kind.runs == "once":
        return Runs(run=run)
    rate = runs_per_day(request.schedule, request.time_zone, request.suspend)
    return Runs(run=run, runs_per_day=rate.runs_per_day, problem=rate.problem)


def joules_per_day(runs: Literal["none", "once", "scheduled"], watts: float, run_joules: float | None,
                   scheduled_runs_per_day: float | None) -> float | None:
    """What a workload is held to in ``quota-joules-per-day``, J, or None when it is unknown.

    A running workload draws its power all day (W x 86,400 s). A Job counts one run, capped at a
    day of its power, or a whole day when its run length is unknown. A CronJob counts runs per
    day x J per run, unknown when either is.
    """
    day_joules = watts * SECONDS_PER_DAY
    if runs == "none":
        return day_joules
    if runs == "once":
        return day_joules if run_joules is None else min(run_joules, day_joules)
    return scheduled_joules_per_day(scheduled_runs_per_day, run_joules)
