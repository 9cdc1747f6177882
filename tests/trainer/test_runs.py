"""The runs step and the run dataset against a real Prometheus: kube-state-metrics job and pod
series and Kepler counters (both lines) backfilled with promtool (`tests/trainer/run_datasets.py`),
each run's wall time, pod-seconds and joules checked against what was written."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.trainer.conftest import PrometheusHarness, locate_binaries_or_fail
from tests.trainer.run_datasets import NAMESPACE, SCRAPE_SECONDS, RunScenario, run_scenario
from trainer.cli import train
from trainer.collect import request_of
from trainer.run_dataset import build_run_dataset
from trainer.runs import collect_runs, lifetime_joules, read_runs
from webhook.model.extract import to_inference_request

LINES = ("kepler-0.10", "kepler-0.7")


@dataclass(frozen=True)
class RunsPrometheus:
    url: str
    scenarios: dict[str, RunScenario]


@pytest.fixture(scope="module")
def runs_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunsPrometheus]:
    binaries = locate_binaries_or_fail()
    now = int(time.time()) // SCRAPE_SECONDS * SCRAPE_SECONDS
    scenarios = {"kepler-0.10": run_scenario("kepler-0.10", now - 9 * 3600),
                 "kepler-0.7": run_scenario("kepler-0.7", now - 5 * 3600)}
    with PrometheusHarness(tmp_path_factory.mktemp("runs-prometheus"), binaries) as harness:
        for line, scenario in scenarios.items():
            harness.backfill(scenario.openmetrics, name=f"runs-{line}")
        yield RunsPrometheus(harness.start(), scenarios)


@pytest.fixture(scope="module")
def runs_by_line(runs_prometheus: RunsPrometheus) -> dict[str, pd.DataFrame]:
    return {line: collect_runs(runs_prometheus.url, s.start_seconds, s.end_seconds).frame.set_index("job_name")
            for line, s in runs_prometheus.scenarios.items()}


@pytest.mark.parametrize("line", LINES)
def test_every_run_has_its_seconds_joules_and_outcome(runs_by_line: dict[str, pd.DataFrame],
                                                      runs_prometheus: RunsPrometheus, line: str) -> None:
    got = runs_by_line[line]
    expected = runs_prometheus.scenarios[line].expected
    assert sorted(got.index) == sorted(expected)
    for job, want in expected.items():
        row = got.loc[job]
        assert row["outcome"] == want.outcome, job
        assert row["cronjob_name"] == want.cronjob_name, job
        assert math.isclose(row["run_seconds"], want.run_seconds, rel_tol=1e-12), job
        assert math.isclose(row["pod_seconds"], want.pod_seconds, rel_tol=1e-12), job
        assert math.isclose(row["energy_joules"], want.energy_joules, rel_tol=1e-9, abs_tol=1e-9), job
        assert math.isclose(row["gpu_energy_joules"], want.gpu_energy_joules, rel_tol=1e-9, abs_tol=1e-9), job
        assert (row["pods"], row["pods_failed"]) == (want.pods, want.pods_failed), job
        assert row["pods_without_energy"] == want.pods_without_energy, job
        assert row["pods_without_final_energy"] == want.pods_without_final_energy, job
        assert row["energy_complete"] == (not want.pods_without_energy and not want.pods_without_final_energy), job
        assert row["kepler_line"] == line


def test_cronjob_runs_name_the_cronjob(runs_by_line: dict[str, pd.DataFrame]) -> None:
    got = runs_by_line["kepler-0.10"]
    cron = got[got["cronjob_name"] == "nightly-report"]
    assert len(cron) == 3
    assert set(cron["workload_kind"]) == {"CronJob"} and set(cron["workload_name"]) == {"nightly-report"}
    assert got.loc["migrate", "workload_kind"] == "Job" and got.loc["migrate", "workload_name"] == "migrate"


def test_pods_kepler_does_not_have_are_named_not_zero(runs_by_line: dict[str, pd.DataFrame]) -> None:
    got = runs_by_line["kepler-0.10"]
    assert got.loc["tiny", "missing_energy_pods"] == "tiny-r2d2x"
    assert got.loc["tiny", "pods_with_energy"] == 0 and not got.loc["tiny", "energy_complete"]
    assert got.loc["etl", "missing_energy_pods"] == "etl-j8k9l"
    assert got.loc["train", "outcome"] == "running" and pd.isna(got.loc["train", "end_time"])
    assert got.loc["render", "end_time"] == pd.Timestamp(got.loc["render", "start_time"]) + pd.Timedelta(seconds=707)


def test_lifetime_joules_counts_the_first_sample_and_resets() -> None:
    assert lifetime_joules([5.0, 7.0, 10.0]) == 10.0
    assert lifetime_joules([5.0, 7.0, 2.0, 4.0]) == 11.0  # reset after 7: 2 counts from 0
    assert lifetime_joules([]) == 0.0


def _requests(path: Path) -> Path:
    template = {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": "registry.example.com/batch/report:1.2",
         "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}
    manifests = [
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly-report", "namespace": NAMESPACE},
         "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": template}}}},
        *({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"completions": n, "parallelism": n, "template": template}}
          for name, n in (("migrate", 1), ("render", 3), ("etl", 1), ("train", 1))),
    ]
    path.write_text("".join(to_inference_request(m).model_dump_json() + "\n" for m in manifests), encoding="utf-8")
    return path


def test_runs_and_run_dataset_commands(runs_prometheus: RunsPrometheus, tmp_path: Path) -> None:
    scenario = runs_prometheus.scenarios["kepler-0.10"]
    runs_path, dataset_path = tmp_path / "runs.parquet", tmp_path / "run-dataset.parquet"
    cli = CliRunner()
    result = cli.invoke(train, ["runs", "--prometheus", runs_prometheus.url, "--start", str(scenario.start_seconds),
                                "--end", str(scenario.end_seconds), "--out", str(runs_path)])
    assert result.exit_code == 0, result.output
    assert "runs: 8 (6 succeeded, 1 failed, 1 running)" in result.output
    assert "2 without energy" not in result.output and "1 without energy, 1 without their final sample" in result.output
    assert json.loads((tmp_path / "runs.parquet.summary.json").read_text())["gpu_source"] == "kepler"
    assert len(read_runs(runs_path)) == 8

    result = cli.invoke(train, ["dataset", "--runs", str(runs_path), "--requests", str(_requests(tmp_path / "r.ndjson")),
                                "--out", str(dataset_path)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(dataset_path).set_index("job_name")
    summary = json.loads((tmp_path / "run-dataset.parquet.summary.json").read_text())
    assert summary["unjoined"]["not-finished"]["rows"] == 1  # train, still running
    assert summary["unjoined"]["no-spec"]["rows"] == 1  # tiny: no spec collected
    assert summary["joined"]["rows"] == 6 and summary["energy_incomplete"]["rows"] == 1  # etl
    cron = frame[frame["workload_kind"] == "CronJob"]
    assert len(cron) == 3 and cron["group"].nunique() == 1 and set(cron["workload_name"]) == {"nightly-report"}
    # migrate, render and etl share one pod template here: one Job template, one group.
    assert frame["group"].nunique() == 2 and frame.loc[["migrate", "render", "etl"], "group"].nunique() == 1
    for job, row in frame.iterrows():
        want = scenario.expected[str(job)]
        assert math.isclose(row["run_seconds"], want.run_seconds, rel_tol=1e-12)
        if job == "etl":
            assert math.isnan(row["energy_joules_per_run"])  # a pod without its final sample: never a guess
        else:
            assert math.isclose(row["energy_joules_per_run"], want.energy_joules, rel_tol=1e-9)


def test_run_dataset_joins_a_collected_job_to_its_cronjob() -> None:
    runs = pd.DataFrame([{"namespace": NAMESPACE, "job_name": "nightly-report-1", "cronjob_name": "",
                          "workload_kind": "Job", "workload_name": "nightly-report-1", "outcome": "succeeded",
                          "start_time": pd.Timestamp("2026-01-01", tz="UTC"), "run_seconds": 60.0, "pod_seconds": 60.0,
                          "pods": 1, "pods_failed": 0, "energy_joules": 600.0, "energy_complete": True,
                          "missing_energy_pods": ""}])
    template = {"spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], "restartPolicy": "Never"}}
    cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly-report", "namespace": NAMESPACE},
               "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "nightly-report-1", "namespace": NAMESPACE,
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly-report",
                                             "uid": "0b4c2a7e-5f0d-4c61-9a43-2f7d3c1e8a90", "controller": True}]},
           "spec": {"template": template}}
    frame, summary = build_run_dataset(runs, [request_of(cronjob), request_of(job)])
    assert list(frame["workload_kind"]) == ["CronJob"] and list(frame["join_rule"]) == ["controller"]
    assert summary.by_rule["controller"].rows == 1
