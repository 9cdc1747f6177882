"""Runs of Jobs and CronJobs through a real kube-apiserver: per-day annotations and max-run-joules.

The apiserver calls the webhooks as deployed (deploy/ rendered for loopback); what is asserted is
what a user reads back with kubectl: the stored annotations, and the denial message.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_budgets_e2e import DENIAL_PREFIX, POD_CPU, POD_MEMORY, POD_WATTS, denied_by_budget, until
from tests.e2e.webhook_fixtures import WiredWebhook, create_namespace
from tests.e2e.workloads import WORKLOADS, energetiscope_annotations, workload

pytestmark = pytest.mark.e2e


def _with_deadline(manifest: dict[str, Any], seconds: int) -> dict[str, Any]:
    job_spec = manifest["spec"]["jobTemplate"]["spec"] if manifest["kind"] == "CronJob" else manifest["spec"]
    job_spec["activeDeadlineSeconds"] = seconds
    return manifest


def test_a_cronjob_carries_runs_per_day_and_energy_per_day(wired_webhook: WiredWebhook) -> None:
    kube = wired_webhook.kube
    namespace = create_namespace(kube, "e2e-cron")
    cronjob = _with_deadline(workload("CronJob", "often", replicas=2, cpu=POD_CPU, memory=POD_MEMORY), 120)
    cronjob["spec"].update(schedule="*/15 * * * *", timeZone="Europe/Berlin")
    created = kube.create(WORKLOADS["CronJob"].collection(namespace), cronjob).expect_ok()
    notes = energetiscope_annotations(created)
    run_joules = 2 * POD_WATTS * 120
    assert notes["energetiscope.io/runs-per-day"] == "96.000"
    assert notes["energetiscope.io/run-seconds"] == "120.000"
    assert notes["energetiscope.io/run-bound"] == "upper"
    assert float(notes["energetiscope.io/energy-joules-per-run"]) == pytest.approx(run_joules, abs=0.01)
    assert float(notes["energetiscope.io/energy-joules-per-day"]) == pytest.approx(96 * run_joules, abs=0.5)
    stored = kube.get(WORKLOADS["CronJob"].item(namespace, "often")).expect_ok()
    assert energetiscope_annotations(stored) == notes
    # Suspending it is an UPDATE the webhook re-predicts: 0 runs, 0 J a day.
    stored["spec"]["suspend"] = True
    updated = kube.replace(WORKLOADS["CronJob"].item(namespace, "often"), stored).expect_ok()
    assert energetiscope_annotations(updated)["energetiscope.io/runs-per-day"] == "0.000"
    assert energetiscope_annotations(updated)["energetiscope.io/energy-joules-per-day"] == "0.000"


def test_enforce_denies_a_job_over_max_run_joules(wired_webhook: WiredWebhook) -> None:
    kube = wired_webhook.kube
    namespace = create_namespace(kube, "e2e-run", annotations={"energetiscope.io/budget-mode": "enforce",
                                                               "energetiscope.io/max-run-joules": "5000"})
    jobs = WORKLOADS["Job"]
    too_long = _with_deadline(workload("Job", "too-long", replicas=2, cpu=POD_CPU, memory=POD_MEMORY), 3600)
    run_joules = 2 * POD_WATTS * 3600  # 15.0 kJ
    # Denial needs the namespace's annotations in the webhook's inventory: nothing else denies.
    until(lambda: kube.create(jobs.collection(namespace), too_long, dry_run=True), denied_by_budget,
          "the inventory seeing the namespace's max-run-joules")
    denial = kube.create(jobs.collection(namespace), too_long)
    assert denial.status == 403 and denial.body["reason"] == "Forbidden"
    assert denial.message.startswith(
        f"{DENIAL_PREFIX}energetiscope: Job {namespace}/too-long is predicted at {run_joules:.0f} J per run "
        f"(2 pods x {POD_WATTS:.2f} W x 3600 s, an upper bound: activeDeadlineSeconds)"
    ), denial.message
    assert f"above max-run-joules 5000 J set by namespace {namespace}" in denial.message
    assert f"kubectl annotate ns {namespace} energetiscope.io/max-run-joules=<J> --overwrite" in denial.message
    assert kube.get(jobs.item(namespace, "too-long")).status == 404

    fits = kube.create(jobs.collection(namespace), _with_deadline(
        workload("Job", "fits", replicas=2, cpu=POD_CPU, memory=POD_MEMORY), 600))  # 2.5 kJ
    assert fits.status == 201 and fits.warnings == []
    # No deadline: the prior cannot tell the run's length, so it is admitted with a warning.
    unbounded = kube.create(jobs.collection(namespace), workload("Job", "unbounded", cpu=POD_CPU, memory=POD_MEMORY))
    assert unbounded.status == 201
    assert unbounded.warnings == [f"energetiscope: Job {namespace}/unbounded: max-run-joules not checked: no run "
                                  "time; set activeDeadlineSeconds"]
