"""Runs of Jobs and CronJobs through the real server over real TLS: annotations, warnings, /predict, budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from webhook.admission import annotations as keys

from harness.webhook_process import WebhookProcess, create_certs
from .reviews import apply, patch_of, review
from .test_runs import _cronjob, _job

MAX_RUN_JOULES = 1000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    work = tmp_path_factory.mktemp("runs-server")
    policy = work / "policy.yaml"
    policy.write_text(f"defaultMode: enforce\ndefaults: {{maxRunJoules: {MAX_RUN_JOULES}}}\n")
    with WebhookProcess(create_certs(work / "certs"), work / "webhook.log", "--policy-file", str(policy),
                        "--kube-access", "off") as server:
        with server.client() as client:
            yield client


def _response(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["response"]["uid"] == body["request"]["uid"]
    return answer


def test_a_cronjob_gets_runs_and_energy_per_day_and_a_reapply_is_an_empty_patch(client: httpx.Client) -> None:
    cronjob = _cronjob("*/15 * * * *", time_zone="Europe/Berlin", deadline=60)
    answer = _response(client, "/mutate", review(cronjob))
    assert "warnings" not in answer["response"]
    notes = apply(cronjob, answer)["metadata"]["annotations"]
    assert notes[keys.RUNS_PER_DAY] == "96.000" and notes[keys.RUN_BOUND] == "upper"
    assert notes[keys.RUN_SECONDS] == "60.000"
    assert float(notes[keys.ENERGY_JOULES_PER_DAY]) == pytest.approx(96 * float(notes[keys.ENERGY_JOULES_PER_RUN]), abs=0.1)
    annotated = apply(cronjob, answer)
    again = _response(client, "/mutate", review(annotated, operation="UPDATE", old=annotated))
    assert patch_of(again) is None


@pytest.mark.parametrize(("field", "value"), [("schedule", "at nine"), ("timeZone", "Mars/Olympus")])
def test_an_invalid_schedule_is_a_warning_not_a_500_nor_a_denial(client: httpx.Client, field: str, value: str) -> None:
    cronjob = _cronjob(deadline=1)  # a run of about 6 J, within max-run-joules
    cronjob["spec"][field] = value
    answer = _response(client, "/mutate", review(cronjob))["response"]
    assert answer["allowed"] is True
    assert [w for w in answer["warnings"] if f"spec.{field}: " in w], answer["warnings"]
    notes = apply(cronjob, {"response": answer})["metadata"]["annotations"]
    assert keys.POD_POWER_WATTS in notes and keys.ENERGY_JOULES_PER_RUN in notes and keys.RUNS_PER_DAY not in notes
    # The budget webhook admits it too: the schedule is the apiserver's to refuse, not ours.
    validated = _response(client, "/validate", review(cronjob))["response"]
    assert validated["allowed"] is True and "status" not in validated


def test_a_job_over_max_run_joules_is_denied_with_predicted_and_allowed_joules(client: httpx.Client) -> None:
    job = _job(deadline=3600, parallelism=2)
    denied = _response(client, "/validate", review(job))["response"]
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    message = denied["status"]["message"]
    assert message.startswith("energetiscope: Job batch/train is predicted at ") and " J per run (2 pods x " in message
    assert f"above max-run-joules {MAX_RUN_JOULES} J set by policy file" in message
    # Without a deadline the prior knows no run time: a warning, not a denial.
    unknown = _response(client, "/validate", review(_job(parallelism=2)))["response"]
    assert unknown["allowed"] is True
    assert unknown["warnings"] == ["energetiscope: Job batch/train: max-run-joules not checked: no run time; "
                                   "set activeDeadlineSeconds"]


def test_predict_endpoints_show_per_run_and_per_day_figures(client: httpx.Client) -> None:
    documents = [_cronjob("0 9 * * MON-FRI", deadline=3600, parallelism=2), _job(), _cronjob("0 0 * * 7", name="bad")]
    reply = client.post("/predict/from-yaml", content=yaml.safe_dump_all(documents))
    assert reply.status_code == 200, reply.text
    cron, job, bad = reply.json()["predictions"]
    assert cron["runs_per_day"] == pytest.approx(5 / 7) and cron["run_bound"] == "upper"
    assert cron["run_seconds"] == 3600 and cron["run_source"] == "activeDeadlineSeconds"
    assert cron["energy_joules_per_run"] == pytest.approx(cron["workload_power_watts"] * 3600)
    assert cron["energy_joules_per_day"] == pytest.approx(cron["energy_joules_per_run"] * 5 / 7)
    assert cron["energy_joules_per_run_p10"] < cron["energy_joules_per_run"] < cron["energy_joules_per_run_p90"]
    assert job["run_seconds"] is None and job["energy_joules_per_run"] is None and job["runs_per_day"] is None
    assert bad["runs_per_day"] is None and bad["run_problem"].startswith("spec.schedule: ")
    request = client.post("/infer/from-yaml", content=yaml.safe_dump(documents[0])).json()["requests"][0]["request"]
    predicted = client.post("/predict", json=request)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["energy_joules_per_day"] == pytest.approx(cron["energy_joules_per_day"])
