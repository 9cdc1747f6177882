"""Runs of Jobs and CronJobs: runs per day from a schedule, per-run figures, their annotations and budgets."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from croniter import croniter

from webhook.admission import annotations as keys
from webhook.admission.inventory import WorkloadInventory
from webhook.admission.mutate import MutationSettings, mutate
from webhook.admission.policy import PolicyStore, parse_policy
from webhook.admission.review import parse_review
from webhook.admission.validate import Budgets, validate
from webhook.model.extract import ExtractionError, to_inference_request
from webhook.model.prior import PriorPredictor
from webhook.model.runs import Spread
from webhook.model.schedule import runs_per_day
from webhook.model.schema import InferenceRequest, spec_hash
from webhook.model.service import PredictionService

from .reviews import apply, patch_of, review

CYCLE_DAYS = 146_097  # the 400-year Gregorian cycle


@pytest.fixture
def service() -> PredictionService:
    service = PredictionService(PriorPredictor())
    service.load()
    return service


def _job_spec(deadline: int | None = None, parallelism: int | None = None, completions: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "train", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}}}
    for key, value in (("activeDeadlineSeconds", deadline), ("parallelism", parallelism), ("completions", completions)):
        if value is not None:
            spec[key] = value
    return spec


def _job(name: str = "train", namespace: str = "batch", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": _job_spec(**spec)}


def _cronjob(schedule: str = "@hourly", name: str = "nightly", namespace: str = "batch", time_zone: str | None = None,
             suspend: bool | None = None, **job: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"schedule": schedule, "jobTemplate": {"spec": _job_spec(**job)}}
    if time_zone is not None:
        spec["timeZone"] = time_zone
    if suspend is not None:
        spec["suspend"] = suspend
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _mutated(service: PredictionService, obj: dict[str, Any], **request: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    answer = mutate(parse_review(review(obj, **request)), service, MutationSettings()).review
    assert answer["response"]["allowed"] is True
    return apply(obj, answer), answer["response"]


# --- runs per day ---------------------------------------------------------------------------

@pytest.mark.parametrize(("schedule", "expected"), [
    ("@hourly", 24.0),
    ("*/15 * * * *", 96.0),
    ("0 9 * * MON-FRI", 5 / 7),
    ("0 9 * * mon-fri", 5 / 7),  # names in any case
    ("30 8-17/3 * * 1-5", 4 * 5 / 7),  # hours 8, 11, 14, 17 on weekdays
    ("0 0 1 * *", 12 * 400 / CYCLE_DAYS),
    ("0 0 29 2 *", 97 / CYCLE_DAYS),  # leap days only
    ("0 0 31 2 *", 0.0),  # valid for the apiserver, never runs
    ("0 0 1 * 0-6", 1.0),  # day of month OR day of week when neither is *: every day
    ("0 0 ? * MON", 1 / 7),  # ? is *: AND
    ("@weekly", 1 / 7),
    ("@every 5m", 288.0),  # the apiserver accepts it; the controller runs it every 5 minutes
    ("@every 1h30m", 16.0),
])
def test_runs_per_day_of_a_schedule(schedule: str, expected: float) -> None:
    rate = runs_per_day(schedule, None, None)
    assert rate.problem is None
    assert rate.runs_per_day == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("schedule", ["0 0 1 * *", "0 0 13 * FRI", "15 6 29 2 *"])
def test_runs_per_day_matches_croniter_over_the_whole_cycle(schedule: str) -> None:
    """An independent count: croniter's own iteration over 400 years (its day_or is robfig's OR)."""
    start, end = datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2400, 1, 1, tzinfo=timezone.utc)
    # get_next is strictly after its start: begin a minute early so that a run at the start counts.
    runs, iterator = 0, croniter(schedule, start - timedelta(minutes=1), day_or=True)
    while iterator.get_next(datetime) < end:
        runs += 1
    assert runs_per_day(schedule, None, None).runs_per_day == pytest.approx(runs / CYCLE_DAYS, rel=1e-12)


def test_time_zone_is_checked_and_suspend_gives_zero() -> None:
    utc = runs_per_day("0 9 * * MON-FRI", None, None).runs_per_day
    assert runs_per_day("0 9 * * MON-FRI", "Europe/Berlin", None).runs_per_day == utc
    assert runs_per_day("0 9 * * MON-FRI", "Asia/Kolkata", None).runs_per_day == utc
    assert runs_per_day("0 9 * * MON-FRI", "Europe/Berlin", True).runs_per_day == 0.0
    assert runs_per_day("0 9 * * MON-FRI", "Europe/Berlin", False).runs_per_day == utc
    for zone, problem in (("Mars/Olympus", "unknown time zone Mars/Olympus"), ("Local", "explicit time zone"),
                          ("", "non-empty"), ("../etc/passwd", "unknown time zone")):
        rate = runs_per_day("@hourly", zone, None)
        assert rate.runs_per_day is None and rate.problem is not None
        assert rate.problem.startswith("spec.timeZone: ") and problem in rate.problem


@pytest.mark.parametrize(("schedule", "time_zone", "problem"), [
    ("0 0 * * 7", None, "above maximum (6)"),  # robfig's day of week stops at 6
    ("0 0 L * *", None, "failed to parse int from L"),
    ("0 0 1 * * *", None, "expected exactly 5 fields, found 6"),
    ("10-5 * * * *", None, "beyond end of range"),
    ("*/0 * * * *", None, "positive number"),
    ("@Hourly", None, "unrecognized descriptor"),
    ("@every soon", None, "invalid duration"),
    ("TZ=UTC 0 * * * *", "UTC", "cannot use both timeZone field and TZ or CRON_TZ"),
    ("", None, "Required value"),
])
def test_the_apiservers_cron_dialect_is_enforced(schedule: str, time_zone: str | None, problem: str) -> None:
    rate = runs_per_day(schedule, time_zone, None)
    assert rate.runs_per_day is None
    assert rate.problem is not None and rate.problem.startswith("spec.schedule: ") and problem in rate.problem


# --- extraction ------------------------------------------------------------------------------

def test_run_fields_are_read_and_kept_out_of_the_spec_hash() -> None:
    cronjob = _cronjob("0 9 * * MON-FRI", time_zone="Europe/Berlin", suspend=False, deadline=600, parallelism=2)
    cronjob["spec"]["jobTemplate"]["spec"].update(backoffLimit=3, completionMode="Indexed", completions=4)
    request = to_inference_request(cronjob)
    assert (request.schedule, request.time_zone, request.suspend) == ("0 9 * * MON-FRI", "Europe/Berlin", False)
    assert (request.active_deadline_seconds, request.backoff_limit, request.completion_mode) == (600, 3, "Indexed")
    other = copy.deepcopy(cronjob)
    other["spec"].update(schedule="@hourly", suspend=True)
    other["spec"]["jobTemplate"]["spec"].update(activeDeadlineSeconds=5, backoffLimit=0)
    assert spec_hash(to_inference_request(other)) == spec_hash(request)
    other["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "3"
    assert spec_hash(to_inference_request(other)) != spec_hash(request)


@pytest.mark.parametrize(("obj", "field", "problem"), [
    (_job(deadline=-1), "spec.activeDeadlineSeconds", "must not be negative"),
    (_job(completions=2**31), "spec.completions", "must be at most 2147483647"),
    (_cronjob(deadline=-5), "spec.jobTemplate.spec.activeDeadlineSeconds", "must not be negative"),
    (_cronjob(completions=2**31), "spec.jobTemplate.spec.completions", "must be at most"),
    ({**_cronjob(), "spec": {**_cronjob()["spec"], "suspend": "yes"}}, "spec.suspend", "expected true or false"),
])
def test_invalid_run_fields_name_the_manifest_field(obj: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ExtractionError) as raised:
        to_inference_request(obj)
    assert raised.value.field == field and problem in raised.value.problem


def test_completions_beyond_the_pod_bound_but_within_int32_are_read() -> None:
    request = to_inference_request(_job(parallelism=10, completions=5_000_000))
    assert request.completions == 5_000_000


# --- per-run figures and annotations ------------------------------------------------------------

def test_a_deadline_bounds_a_run_and_the_annotations_say_so(service: PredictionService) -> None:
    job = _job(deadline=600, parallelism=3, completions=5)
    annotated, response = _mutated(service, job)
    notes = annotated["metadata"]["annotations"]
    pod_watts = float(notes[keys.POD_POWER_WATTS])
    assert notes[keys.RUN_SECONDS] == "600.000" and notes[keys.RUN_BOUND] == "upper"
    # 3 pods at once (parallelism, below completions) x the pod's W x 600 s.
    assert float(notes[keys.ENERGY_JOULES_PER_RUN]) == pytest.approx(3 * pod_watts * 600, rel=1e-3)
    assert float(notes[keys.ENERGY_JOULES_PER_RUN_P10]) < float(notes[keys.ENERGY_JOULES_PER_RUN]) \
        < float(notes[keys.ENERGY_JOULES_PER_RUN_P90])
    assert keys.RUNS_PER_DAY not in notes and keys.ENERGY_JOULES_PER_DAY not in notes  # a Job runs once
    assert "warnings" not in response
    # Re-applied as it is stored: an empty patch.
    again = mutate(parse_review(review(annotated, operation="UPDATE", old=annotated)), service, MutationSettings())
    assert again.patch == () and again.outcome == "unchanged"


def test_without_a_deadline_the_prior_gives_no_per_run_figures(service: PredictionService) -> None:
    notes = _mutated(service, _job(parallelism=2))[0]["metadata"]["annotations"]
    assert keys.POD_POWER_WATTS in notes
    assert not set(keys.RUN_KEYS) & set(notes)
    cron_notes = _mutated(service, _cronjob("*/15 * * * *"))[0]["metadata"]["annotations"]
    assert cron_notes[keys.RUNS_PER_DAY] == "96.000"
    assert keys.ENERGY_JOULES_PER_DAY not in cron_notes and keys.ENERGY_JOULES_PER_RUN not in cron_notes


def test_a_cronjob_carries_runs_and_energy_per_day_and_reapplies_to_an_empty_patch(service: PredictionService) -> None:
    cronjob = _cronjob("0 9 * * MON-FRI", time_zone="Europe/Berlin", deadline=3600, parallelism=2)
    annotated, _ = _mutated(service, cronjob)
    notes = annotated["metadata"]["annotations"]
    assert notes[keys.RUNS_PER_DAY] == f"{5 / 7:.3f}"
    per_run = 2 * float(notes[keys.POD_POWER_WATTS]) * 3600
    assert float(notes[keys.ENERGY_JOULES_PER_RUN]) == pytest.approx(per_run, rel=1e-3)
    assert float(notes[keys.ENERGY_JOULES_PER_DAY]) == pytest.approx(per_run * 5 / 7, rel=1e-3)
    assert notes[keys.RUN_BOUND] == "upper"
    for _ in range(2):
        again = mutate(parse_review(review(annotated, operation="UPDATE", old=annotated)), service, MutationSettings())
        assert again.patch == ()
    # Suspended: 0 runs and 0 J a day, the per-run figures stay.
    suspended = copy.deepcopy(annotated)
    suspended["spec"]["suspend"] = True
    notes = _mutated(service, suspended, operation="UPDATE", old=annotated)[0]["metadata"]["annotations"]
    assert notes[keys.RUNS_PER_DAY] == "0.000" and notes[keys.ENERGY_JOULES_PER_DAY] == "0.000"
    assert float(notes[keys.ENERGY_JOULES_PER_RUN]) == pytest.approx(per_run, rel=1e-3)


def test_stale_and_forged_run_annotations_are_removed(service: PredictionService) -> None:
    annotated, _ = _mutated(service, _cronjob("@hourly", deadline=600))
    no_deadline = copy.deepcopy(annotated)
    del no_deadline["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    answer = mutate(parse_review(review(no_deadline, operation="UPDATE", old=annotated)), service, MutationSettings())
    removed = {op["path"].rsplit("/", 1)[1].replace("~1", "/") for op in answer.patch if op["op"] == "remove"}
    assert removed == {keys.RUN_SECONDS, keys.ENERGY_JOULES_PER_RUN, keys.ENERGY_JOULES_PER_RUN_P10,
                       keys.ENERGY_JOULES_PER_RUN_P90, keys.RUN_BOUND, keys.ENERGY_JOULES_PER_DAY}
    after = apply(no_deadline, answer.review)["metadata"]["annotations"]
    assert after[keys.RUNS_PER_DAY] == "24.000" and keys.ENERGY_JOULES_PER_DAY not in after
    forged = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop",
              "annotations": {keys.ENERGY_JOULES_PER_RUN: "1", "team": "a"}},
              "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}
    notes = _mutated(service, forged)[0]["metadata"]["annotations"]
    assert keys.ENERGY_JOULES_PER_RUN not in notes and notes["team"] == "a"


@pytest.mark.parametrize(("field", "value", "named"), [
    ("schedule", "every day at nine", "spec.schedule: "),
    ("schedule", "0 0 * * 7", "spec.schedule: "),
    ("timeZone", "Mars/Olympus", "spec.timeZone: "),
])
def test_an_invalid_schedule_is_admitted_with_a_warning_and_the_rest_annotated(
    service: PredictionService, field: str, value: str, named: str
) -> None:
    cronjob = _cronjob(deadline=600)
    cronjob["spec"][field] = value
    annotated, response = _mutated(service, cronjob)
    assert response["allowed"] is True and "status" not in response
    assert len(response["warnings"]) == 1
    warning = response["warnings"][0]
    assert warning.startswith(f"energetiscope: no runs-per-day: {named}") and len(warning) <= 120
    notes = annotated["metadata"]["annotations"]
    assert keys.POD_POWER_WATTS in notes and notes[keys.RUN_SECONDS] == "600.000"
    assert keys.RUNS_PER_DAY not in notes and keys.ENERGY_JOULES_PER_DAY not in notes


def test_per_run_figures_follow_the_request_not_the_spec_hash_cache(service: PredictionService) -> None:
    short, long = to_inference_request(_job(deadline=100)), to_inference_request(_job(deadline=300, parallelism=2))
    assert spec_hash(short) == spec_hash(long)
    first, second = service.predict(short), service.predict(long)
    assert service.cache.hits >= 1  # the pod prediction was shared
    assert first.runs.run is not None and second.runs.run is not None
    assert second.runs.run.joules.p50 == pytest.approx(6 * first.runs.run.joules.p50)
    cached = service.cached(long)
    assert cached is not None and cached.runs == second.runs


class _RunModel(PriorPredictor):
    """A predictor that also predicts run time, as the trainer's run model will."""

    @property
    def model_id(self) -> str:
        return "run-model-test"

    def predict_run_seconds(self, request: InferenceRequest) -> Spread | None:
        return Spread(60.0 * (request.completions or 1), 120.0 * (request.completions or 1), 240.0 * (request.completions or 1))


def test_a_run_model_supplies_the_run_time_and_is_never_answered_from_the_pod_cache() -> None:
    service = PredictionService(PriorPredictor())
    service._predictor = _RunModel()  # what load() does with a trained model
    job = to_inference_request(_job(deadline=100000, completions=3))
    prediction = service.predict(job)
    run = prediction.runs.run
    assert run is not None and run.bound is None and run.source == "run-model-test"
    assert (run.seconds.p10, run.seconds.p50, run.seconds.p90) == (180.0, 360.0, 720.0)
    assert run.joules.p50 == pytest.approx(prediction.workload_power_watts * 360.0)
    assert service.cached(job) is None  # its run time needs the model: a worker thread
    deployment = to_inference_request({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
                                       "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}})
    service.predict(deployment)
    assert service.cached(deployment) is not None


# --- budgets -------------------------------------------------------------------------------------

def _budgets(policy: str, namespace_annotations: dict[str, str] | None = None,
             workloads: list[tuple[str, dict[str, Any]]] = ()) -> Budgets:  # type: ignore[assignment]
    store = PolicyStore(None)
    store.policy = parse_policy(policy, "test policy")
    inventory = WorkloadInventory()
    kinds = {"Namespace", "Deployment", "Job", "CronJob"}
    inventory.expected_kinds = frozenset(kinds)
    inventory.apply("Namespace", "ADDED", {"metadata": {"name": "batch", "annotations": namespace_annotations or {}}})
    for kind, obj in workloads:
        inventory.apply(kind, "ADDED", obj)
    for kind in kinds:
        inventory.mark_synced(kind)
    return Budgets(store, inventory)


def _validate(service: PredictionService, budgets: Budgets, obj: dict[str, Any]) -> dict[str, Any]:
    return validate(parse_review(review(obj)), service, budgets).review["response"]


def test_max_run_joules_in_each_mode(service: PredictionService) -> None:
    job = _job(deadline=600, parallelism=2)
    notes = _mutated(service, job)[0]["metadata"]["annotations"]
    run_joules, pod_watts = float(notes[keys.ENERGY_JOULES_PER_RUN]), float(notes[keys.POD_POWER_WATTS])
    limit = 1000
    assert run_joules > limit
    for mode in ("enforce", "warn", "audit"):
        budgets = _budgets("defaultMode: warn", {"energetiscope.io/max-run-joules": str(limit),
                                                 "energetiscope.io/budget-mode": mode})
        response = _validate(service, budgets, job)
        if mode == "enforce":
            assert response["allowed"] is False and response["status"]["code"] == 403
            message = response["status"]["message"]
            assert message.startswith(f"energetiscope: Job batch/train is predicted at {run_joules:.0f} J per run "
                                      f"(2 pods x {pod_watts:.2f} W x 600 s, an upper bound: activeDeadlineSeconds)")
            assert f"above max-run-joules {limit} J set by namespace batch" in message
            assert "kubectl annotate ns batch energetiscope.io/max-run-joules=<J> --overwrite" in message
        elif mode == "warn":
            assert response["allowed"] is True
            assert f"energetiscope: Job batch/train {run_joules:.0f} J > max-run-joules {limit} J (namespace batch)" \
                in response["warnings"]
            assert all(len(w) <= 120 for w in response["warnings"])
        else:
            assert response["allowed"] is True and "warnings" not in response
            assert "max-run-joules" in response["auditAnnotations"]["budget-exceeded"]
    roomy = _budgets("defaultMode: enforce", {"energetiscope.io/max-run-joules": str(run_joules + 1)})
    assert _validate(service, roomy, job)["allowed"] is True
    # The policy file's default, and a CronJob's run.
    from_policy = _validate(service, _budgets(f"defaultMode: enforce\ndefaults: {{maxRunJoules: {limit}}}"),
                            _cronjob(deadline=600, parallelism=2))
    assert from_policy["allowed"] is False
    assert "above max-run-joules 1000 J set by policy file" in from_policy["status"]["message"]
    assert "edit defaults.maxRunJoules in the policy" in from_policy["status"]["message"]


def test_max_run_joules_without_a_run_time_warns_instead_of_denying(service: PredictionService) -> None:
    for mode, warned in (("enforce", True), ("warn", True), ("audit", False)):
        budgets = _budgets(f"defaultMode: {mode}\ndefaults: {{maxRunJoules: 1}}")
        response = _validate(service, budgets, _job(parallelism=50))
        assert response["allowed"] is True
        warnings = response.get("warnings", [])
        assert (warnings == ["energetiscope: Job batch/train: max-run-joules not checked: no run time; "
                             "set activeDeadlineSeconds"]) is warned, warnings
    # Deployments have no runs: the limit does not apply to them.
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "batch"},
                  "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}
    assert "warnings" not in _validate(service, _budgets("defaultMode: enforce\ndefaults: {maxRunJoules: 1}"), deployment)


def test_quota_joules_per_day_adds_cronjobs_days_jobs_runs_and_running_workloads(service: PredictionService) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "batch"},
                  "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}}}
    web = _mutated(service, deployment)[0]
    hourly = _mutated(service, _cronjob("@hourly", name="hourly", deadline=300))[0]
    job = _mutated(service, _job(name="once", deadline=1200))[0]
    # The inventory counts pods x the annotated pod W, 24 h a day.
    web_day = 2 * float(web["metadata"]["annotations"][keys.POD_POWER_WATTS]) * 86400
    hourly_day = float(hourly["metadata"]["annotations"][keys.ENERGY_JOULES_PER_DAY])
    job_run = float(job["metadata"]["annotations"][keys.ENERGY_JOULES_PER_RUN])
    assert hourly_day == pytest.approx(24 * float(hourly["metadata"]["annotations"][keys.ENERGY_JOULES_PER_RUN]), abs=0.1)
    existing = web_day + hourly_day + job_run
    newcomer = _cronjob("*/15 * * * *", name="often", deadline=60)
    newcomer_notes = _mutated(service, newcomer)[0]["metadata"]["annotations"]
    newcomer_day = float(newcomer_notes[keys.ENERGY_JOULES_PER_DAY])
    workloads = [("Deployment", web), ("CronJob", hourly), ("Job", job)]
    tight = _budgets("defaultMode: enforce", {"energetiscope.io/quota-joules-per-day": f"{existing + newcomer_day - 5:.0f}"},
                     workloads)
    denied = _validate(service, tight, newcomer)
    assert denied["allowed"] is False
    message = denied["status"]["message"]
    assert f"CronJob batch/often is predicted at {newcomer_day:.0f} J a day (96 runs a day x " in message
    assert f"the namespace total with it would be {existing + newcomer_day:.0f} J" in message
    assert "above quota-joules-per-day" in message and "set by namespace batch" in message
    roomy = _budgets("defaultMode: enforce", {"energetiscope.io/quota-joules-per-day": f"{existing + newcomer_day + 5:.0f}"},
                     workloads)
    assert _validate(service, roomy, newcomer)["allowed"] is True
    # Re-admitting an existing CronJob replaces its own day instead of adding it again.
    exact = _budgets("defaultMode: enforce", {"energetiscope.io/quota-joules-per-day": f"{existing + 1:.0f}"}, workloads)
    assert _validate(service, exact, hourly)["allowed"] is True
    # A CronJob whose run time is unknown is not counted, and says so.
    unknown = _validate(service, roomy, _cronjob("@hourly", name="unknown"))
    assert unknown["allowed"] is True
    assert unknown["warnings"] == ["energetiscope: CronJob batch/unknown: not in quota-joules-per-day: no run time; "
                                   "set activeDeadlineSeconds"]


def test_the_inventory_reads_per_run_and_per_day_annotations(service: PredictionService) -> None:
    inventory = WorkloadInventory()
    hourly = _mutated(service, _cronjob("@hourly", deadline=300))[0]
    inventory.apply("CronJob", "ADDED", hourly)
    notes = hourly["metadata"]["annotations"]
    point = inventory.namespace_joules_per_day("batch", "point")
    p90 = inventory.namespace_joules_per_day("batch", "p90")
    assert point == pytest.approx(24 * float(notes[keys.ENERGY_JOULES_PER_RUN]))
    assert p90 == pytest.approx(24 * float(notes[keys.ENERGY_JOULES_PER_RUN_P90]))
    assert inventory.namespace_joules_per_day("batch", "point", excluding=("batch", "CronJob", "nightly")) == 0


class _ReloadedWhilePredicting:
    """A trained model with a run model that, as it predicts, is replaced by a reload (the
    server's file watcher swapping `PredictionService`'s predictor between two reads of it)."""

    def __init__(self, service: PredictionService, replacement: PriorPredictor) -> None:
        self.model_id, self.run_pipeline = "trained-with-runs", object()
        self._service, self._replacement = service, replacement

    def predict(self, requests: list[InferenceRequest]) -> list[Any]:
        self._service._predictor = self._replacement
        return self._replacement.predict(requests)

    def predict_run_seconds(self, request: InferenceRequest) -> Spread:
        return Spread(600.0, 600.0, 600.0)


def test_a_reload_during_a_prediction_does_not_mix_two_models(service: PredictionService) -> None:
    # The pod's watts and the run's seconds come from the model the prediction started with.
    service._predictor = _ReloadedWhilePredicting(service, service.prior)
    request = to_inference_request(_job(deadline=3600))
    prediction = service.predict(request)
    assert prediction.runs.run is not None
    assert prediction.runs.run.source == "trained-with-runs" and prediction.runs.run.seconds.p50 == 600.0
    assert service.predictor is service.prior  # the reload happened
