"""Prometheus going away in the middle of `train labels` and `train runs`, against a real server.

The test's own Prometheus (Debian's, backfilled with promtool like the other trainer tests) holds
the synthetic Kepler 0.10 pods and a Job-runs scenario. An `Outage` stops the real process right
after the first chunk of the run has been answered (a hook on the client's single request method,
so the run is certainly between two chunks) and, when asked, starts it again from a thread on
the same port after a delay, as a restarted Prometheus pod behind its Service would be.

- Back again: the run retries with backoff, resumes with the chunk that failed, and its output
  equals an uninterrupted run's; every request succeeds exactly once, so no chunk is read twice
  and the run did not start over.
- Gone for good: the command exits 1 with an error naming the URL and the chunk, and there is
  no output file (and no temporary file) at all.

The measured numbers (outage, retries, the run's time against an uninterrupted one) are printed
with `-s`; docs/operations.md quotes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.prometheus import PrometheusHarness
from tests.trainer.conftest import locate_binaries_or_fail
from tests.trainer.kepler_datasets import BackfillDataset, synthetic_pod_dataset
from tests.trainer.run_datasets import SCRAPE_SECONDS, RunScenario, run_scenario
from trainer.cli import train
from trainer.labels import run_labels
from trainer.prometheus import PrometheusClient, RetryPolicy, split_evaluation_range
from trainer.runs import run_runs

# Patient enough for a Prometheus restart on a busy 2-core machine (seconds), short enough that
# the test does not crawl: 0.25 + 0.5 + 1 + 2 + 2 ... s.
RESUMING_RETRY = RetryPolicy(retries=30, backoff_seconds=0.25, max_backoff_seconds=2.0)
RESTART_AFTER_SECONDS = 2.0
LABELS_CHUNK = "20m"  # 120 one-minute windows -> 6 range queries
RUNS_CHUNK = "10m"  # raw-sample reads of at most 10 minutes


@dataclass
class FaultPrometheus:
    harness: PrometheusHarness
    port: int
    url: str
    pods: BackfillDataset
    runs: RunScenario


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultPrometheus]:
    binaries = locate_binaries_or_fail()
    now = int(time.time()) // SCRAPE_SECONDS * SCRAPE_SECONDS
    pods = synthetic_pod_dataset(last_sample_before_seconds=now - 10 * 3600)
    runs = run_scenario("kepler-0.10", now - 9 * 3600)  # after the pods' range: the two never overlap
    with PrometheusHarness(tmp_path_factory.mktemp("fault-prometheus"), binaries) as harness:
        harness.backfill(pods.openmetrics, name=pods.name)
        harness.backfill(runs.openmetrics, name="runs")
        url = harness.start()
        yield FaultPrometheus(harness, int(url.rsplit(":", 1)[1]), url, pods, runs)


@pytest.fixture
def server(fault_server: FaultPrometheus) -> Iterator[FaultPrometheus]:
    """The module's server, running at its one URL before and after each test."""
    if fault_server.harness.pid is None:
        fault_server.harness.start(port=fault_server.port)
    yield fault_server
    if fault_server.harness.pid is None:
        fault_server.harness.start(port=fault_server.port)


RequestFilter = Callable[[str, "str | None"], bool]  # (API path, the request's time span) -> is a chunk


def _is_range_chunk(path: str, span: str | None) -> bool:
    return path == "/api/v1/query_range"


def _is_raw_chunk(path: str, span: str | None) -> bool:
    return path == "/api/v1/query" and span is not None and span.startswith("the chunk")


class Outage:
    """Counts the client's successful requests; after the first chunk request is answered, stops
    the real Prometheus and, with `restart_after_seconds`, starts it again from a thread."""

    def __init__(self, server: FaultPrometheus, is_chunk: RequestFilter, restart_after_seconds: float | None) -> None:
        self.server = server
        self.is_chunk = is_chunk
        self.restart_after_seconds = restart_after_seconds
        self.successes = 0
        self.stopped_at: float | None = None
        self.back_at: float | None = None
        self.first_success_after_restart_at: float | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = PrometheusClient._call_once

        def call_once(client: PrometheusClient, method: str, path: str, **kwargs: Any) -> Any:
            answer = original(client, method, path, **kwargs)
            # `train labels` asks for chunks from worker threads, two at a time: one stop, counted once.
            with self._lock:
                self.successes += 1
                if self.back_at is not None and self.first_success_after_restart_at is None:
                    self.first_success_after_restart_at = time.monotonic()
                if self.stopped_at is None and self.is_chunk(path, kwargs.get("span")):
                    self._stop()
            return answer

        monkeypatch.setattr(PrometheusClient, "_call_once", call_once)

    def _stop(self) -> None:
        self.server.harness.stop()  # terminate, as a deleted pod is: the port refuses from here on
        self.stopped_at = time.monotonic()
        if self.restart_after_seconds is not None:
            self._thread = threading.Thread(target=self._restart, name="prometheus-restart", daemon=True)
            self._thread.start()

    def _restart(self) -> None:
        time.sleep(self.restart_after_seconds or 0.0)
        self.server.harness.start(port=self.server.port)
        self.back_at = time.monotonic()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=180)


def _count_successes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the successful requests of an uninterrupted run (a one-element list, mutated)."""
    count = [0]
    lock = threading.Lock()
    original = PrometheusClient._call_once

    def call_once(client: PrometheusClient, method: str, path: str, **kwargs: Any) -> Any:
        answer = original(client, method, path, **kwargs)
        with lock:
            count[0] += 1
        return answer

    monkeypatch.setattr(PrometheusClient, "_call_once", call_once)
    return count


def _retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trainer.prometheus" and "retry" in r.getMessage()]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Resumed:
    """An uninterrupted run's output and an interrupted one's, with what the interruption cost."""

    whole: pd.DataFrame
    resumed: pd.DataFrame
    retries: list[logging.LogRecord]


def _run_twice(what: str, server: FaultPrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               caplog: pytest.LogCaptureFixture, is_chunk: RequestFilter, run: Callable[[Path], object]) -> Resumed:
    """`run(out)` once undisturbed, then once with Prometheus stopped after its first chunk and
    started again; checks that the second retried, then answered every request exactly once."""
    caplog.set_level(logging.WARNING, logger="trainer.prometheus")
    with monkeypatch.context() as patch:
        baseline_requests = _count_successes(patch)
        began = time.monotonic()
        run(tmp_path / "whole.parquet")
        baseline_seconds = time.monotonic() - began
    assert not _retry_records(caplog)

    outage = Outage(server, is_chunk, RESTART_AFTER_SECONDS)
    outage.install(monkeypatch)
    began = time.monotonic()
    run(tmp_path / "resumed.parquet")
    seconds = time.monotonic() - began
    outage.join()

    retries = _retry_records(caplog)
    assert retries, "Prometheus was stopped but nothing was retried"
    first = retries[0].getMessage()
    # A query in flight as Prometheus stops (labels asks for two chunks at once) is answered 503 by
    # its shutdown; one sent after it finds the port closed.
    assert "cannot reach" in first or "HTTP 503 Service Unavailable" in first
    assert server.url in first and "the chunk" in first and "retry 1 of 30" in first
    # Every request answered once, as in the uninterrupted run: only the failed one was repeated.
    assert outage.successes == baseline_requests[0]
    assert outage.stopped_at is not None and outage.back_at is not None
    assert outage.first_success_after_restart_at is not None
    print(f"\n{what}: Prometheus down {outage.back_at - outage.stopped_at:.1f} s ({RESTART_AFTER_SECONDS:g} s + its "
          f"start), {len(retries)} retries, first answer {outage.first_success_after_restart_at - outage.back_at:.2f} s "
          f"after it was ready; run {seconds:.1f} s against {baseline_seconds:.1f} s uninterrupted")
    return Resumed(pd.read_parquet(tmp_path / "whole.parquet"), pd.read_parquet(tmp_path / "resumed.parquet"), retries)


@pytest.mark.prometheus
def test_labels_resume_after_prometheus_restarts_and_equal_an_uninterrupted_run(
    server: FaultPrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pods = server.pods

    def labels(out: Path) -> object:
        return run_labels(server.url, pods.start_seconds, pods.end_seconds, "60s", out, chunk=LABELS_CHUNK,
                          progress=False, retry=RESUMING_RETRY)

    outcome = _run_twice("labels", server, tmp_path, monkeypatch, caplog, _is_range_chunk, labels)
    pd.testing.assert_frame_equal(outcome.resumed, outcome.whole)
    assert len(outcome.whole) == int((~pods.expected["terminated"]).sum()) > 0  # running series, the default states


@pytest.mark.prometheus
def test_labels_with_prometheus_gone_for_good_write_nothing_and_name_url_and_chunk(
    server: FaultPrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pods = server.pods
    out = tmp_path / "labels.parquet"
    outage = Outage(server, _is_range_chunk, restart_after_seconds=None)
    outage.install(monkeypatch)
    began = time.monotonic()
    result = CliRunner().invoke(train, [
        "labels", "--prometheus", server.url, "--start", str(pods.start_seconds), "--end", str(pods.end_seconds),
        "--step", "60s", "--chunk", LABELS_CHUNK, "--out", str(out), "--no-progress",
        "--retries", "3", "--retry-backoff", "0.2s",
        # One chunk asked at a time, so that the chunk after the outage is the second: with more in
        # flight the second may have been answered before Prometheus stopped.
        "--queries-in-flight", "1",
    ])
    seconds = time.monotonic() - began

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    second = split_evaluation_range(pods.start_seconds + 60, pods.end_seconds, 60, 20)[1]
    assert server.url in result.output
    assert f"the chunk {_iso(second.start_seconds)}..{_iso(second.end_seconds)}" in result.output
    assert "gave up after 4 attempts" in result.output and f"nothing written to {out}" in result.output
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file
    assert [r.getMessage().rsplit("; ", 1)[1] for r in _retry_records(caplog)] == [
        "retry 1 of 3 in 0.2 s", "retry 2 of 3 in 0.4 s", "retry 3 of 3 in 0.8 s"]
    print(f"\nlabels, Prometheus gone: exit {result.exit_code} after {seconds:.1f} s (0.2 + 0.4 + 0.8 s of backoff)")


@pytest.mark.prometheus
def test_runs_resume_after_prometheus_restarts_and_equal_an_uninterrupted_run(
    server: FaultPrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runs = server.runs

    def job_runs(out: Path) -> object:
        return run_runs(server.url, runs.start_seconds, runs.end_seconds, out, chunk=RUNS_CHUNK, retry=RESUMING_RETRY)

    outcome = _run_twice("runs", server, tmp_path, monkeypatch, caplog, _is_raw_chunk, job_runs)
    pd.testing.assert_frame_equal(outcome.resumed, outcome.whole)
    assert len(outcome.whole) == len(runs.expected) == 8
    whole_summary = (tmp_path / "whole.parquet.summary.json").read_text()
    assert (tmp_path / "resumed.parquet.summary.json").read_text() == whole_summary.replace("whole.parquet", "resumed.parquet")


@pytest.mark.prometheus
def test_runs_with_prometheus_gone_for_good_write_nothing_and_name_url_and_chunk(
    server: FaultPrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = server.runs
    out = tmp_path / "runs.parquet"
    outage = Outage(server, _is_raw_chunk, restart_after_seconds=None)
    outage.install(monkeypatch)
    result = CliRunner().invoke(train, [
        "runs", "--prometheus", server.url, "--start", str(runs.start_seconds), "--end", str(runs.end_seconds),
        "--chunk", RUNS_CHUNK, "--out", str(out), "--retries", "2", "--retry-backoff", "0.1s",
    ])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert server.url in result.output and "the chunk" in result.output
    assert "gave up after 3 attempts" in result.output and f"nothing written to {out}" in result.output
    assert list(tmp_path.iterdir()) == []  # neither the table nor its summary, nor a temporary file
