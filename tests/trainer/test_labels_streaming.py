"""`train labels` streams: each chunk's rows go to the output as they arrive, and nothing per
window stays in memory between chunks.

- Against the real Prometheus of the other labels tests: a run cut into many short chunks (a small
  budget of points per query) writes one row group per chunk, and the file equals the table read
  in one query (`collect_labels`), row for row.
- An interrupted run (Prometheus gone for good after two chunks, or Ctrl-C) leaves no output and
  no temporary file, or the previous output unchanged.
- The next chunks' queries are sent while one is read (`queries_in_flight`), and the file is the
  same as one chunk at a time.
- Memory follows the chunk: with a synthetic Prometheus of 600 pods x 2,000 windows (1.2M rows),
  the Python heap's peak during `run_labels` stays near one chunk's worth (6 MiB measured).
  Holding the rows (as the labels step did before it streamed) costs at least 40 bytes a row in
  numpy columns alone, ~46 MiB here.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.trainer.conftest import KeplerPrometheus
from trainer.kepler import KeplerLine
from trainer.labels import collect_labels, empty_labels_frame, run_labels, write_labels
from trainer.prometheus import InstantSample, PrometheusClient, PrometheusUnreachableError, RangeArrays


@pytest.mark.prometheus
@pytest.mark.parametrize("dataset", ["seed", "pods"])
def test_a_streamed_run_in_short_chunks_equals_the_table_read_at_once(
    kepler_prometheus: KeplerPrometheus, tmp_path: Path, dataset: str
) -> None:
    data = getattr(kepler_prometheus, dataset)
    at_once = collect_labels(kepler_prometheus.url, data.start_seconds, data.end_seconds, data.window_seconds,
                             max_windows_per_chunk=10_000, max_points_per_chunk=10**9)
    pods = at_once[["namespace", "pod"]].drop_duplicates().shape[0]
    budget = pods * 17  # 17 windows a query
    out = tmp_path / "labels.parquet"
    summary = run_labels(kepler_prometheus.url, data.start_seconds, data.end_seconds, "60s", out, chunk="6h",
                         progress=False, max_points_per_chunk=budget)
    streamed = pd.read_parquet(out)
    pd.testing.assert_frame_equal(streamed, at_once, check_exact=True)
    # One row group per chunk, each near the budget: pods come and go, so a chunk is sized from
    # the points per window of the one before it and may overshoot a little.
    metadata = pq.ParquetFile(out).metadata
    rows_per_group = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
    assert len(rows_per_group) > 3 and max(rows_per_group) <= 2 * budget, rows_per_group
    assert (summary.row_count, summary.pod_count, summary.window_count) == (
        len(at_once), pods, at_once["window_start"].nunique())
    assert summary.total_energy_joules == pytest.approx(at_once["energy_joules"].sum(), rel=1e-12)
    assert os.listdir(tmp_path) == ["labels.parquet"]


# -- a synthetic Prometheus, for interruptions and memory ------------------------------------------


class SyntheticKepler(PrometheusClient):
    """Answers the labels step's requests for `pods` pods that each drew `pod_watts` W in every
    window, without a server: range queries return Kepler 0.10 per-pod series, owner lookups
    nothing (every pod is its own workload). `fail_after_chunks` makes the range query after that
    many raise `failure`."""

    def __init__(self, pods: int, pod_watts: float = 12.0, fail_after_chunks: int | None = None,
                 failure: BaseException | None = None) -> None:
        super().__init__("http://synthetic.invalid:9090")
        self.pods = pods
        self.pod_watts = pod_watts
        self.fail_after_chunks = fail_after_chunks
        self.failure = failure
        self.range_queries = 0

    def instant_query(self, promql: str, at_seconds: float | None = None) -> list[InstantSample]:
        return [InstantSample({}, at_seconds or 0.0, float(self.pods))]

    def series(self, matchers: object, start_seconds: float, end_seconds: float) -> list[dict[str, str]]:
        return []

    def range_query_arrays(self, promql: str, start_seconds: float, end_seconds: float,
                           step_seconds: float) -> list[RangeArrays]:
        if self.fail_after_chunks is not None and self.range_queries >= self.fail_after_chunks:
            assert self.failure is not None
            raise self.failure
        self.range_queries += 1
        times = np.arange(start_seconds, end_seconds + step_seconds / 2, step_seconds)
        joules = np.full(len(times), self.pod_watts * step_seconds)
        return [RangeArrays({"pod_namespace": f"ns-{p % 7}", "pod_name": f"pod-{p:05d}"}, times, joules)
                for p in range(self.pods)]


START_SECONDS = 1_800_000_000.0


def _run(client: PrometheusClient, out: Path, windows: int, budget: int = 100_000) -> object:
    return run_labels(client, START_SECONDS, START_SECONDS + windows * 60, "60s", out, kepler_line=KeplerLine.POD_COUNTERS.value,
                      gpu="off", progress=False, max_points_per_chunk=budget)


@pytest.mark.parametrize("failure", [PrometheusUnreachableError("gone for good", endpoint="/api/v1/query_range"),
                                     KeyboardInterrupt()])
def test_an_interrupted_run_leaves_no_output_and_the_old_file_unchanged(tmp_path: Path, failure: BaseException) -> None:
    fresh = tmp_path / "fresh" / "labels.parquet"
    with pytest.raises(type(failure)):
        _run(SyntheticKepler(50, fail_after_chunks=2, failure=failure), fresh, windows=600, budget=5_000)
    assert os.listdir(fresh.parent) == []  # two chunks were written to a temporary file, now gone

    kept = tmp_path / "kept" / "labels.parquet"
    _run(SyntheticKepler(3), kept, windows=30)
    before = kept.read_bytes()
    with pytest.raises(type(failure)):
        _run(SyntheticKepler(50, fail_after_chunks=2, failure=failure), kept, windows=600, budget=5_000)
    assert kept.read_bytes() == before and os.listdir(kept.parent) == ["labels.parquet"]


def test_a_run_with_no_rows_writes_the_empty_table(tmp_path: Path) -> None:
    out = tmp_path / "labels.parquet"
    summary = _run(SyntheticKepler(0), out, windows=30)
    empty = tmp_path / "empty.parquet"
    write_labels(empty_labels_frame(), empty)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(empty))
    assert summary.row_count == 0 and summary.kepler_line is None  # type: ignore[attr-defined]


def test_memory_follows_the_chunk_not_the_run(tmp_path: Path) -> None:
    pods, windows, budget = 600, 2_000, 30_000  # 1.2M rows in chunks of 50 windows
    client = SyntheticKepler(pods)
    out = tmp_path / "labels.parquet"
    tracemalloc.start()
    try:
        summary = _run(client, out, windows=windows, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.row_count == pods * windows and summary.pod_count == pods  # type: ignore[attr-defined]
    assert client.range_queries == windows // (budget // pods) == pq.ParquetFile(out).metadata.num_row_groups
    written = pd.read_parquet(out, columns=["energy_joules"])["energy_joules"]
    assert len(written) == pods * windows and (written == 12.0 * 60).all()
    rows_held = 40 * pods * windows  # window_start, window_seconds, energy, power, GPU: 8 bytes each
    assert peak < 12 * 2**20 < rows_held / 3, f"Python heap peaked at {peak / 2**20:.1f} MiB"


class SlowKepler(SyntheticKepler):
    """A synthetic Prometheus that takes a while over each range query, as a real one evaluating
    it does, and counts how many it is asked at once."""

    def __init__(self, pods: int) -> None:
        super().__init__(pods)
        self._lock = threading.Lock()
        self.asked_at_once = 0
        self.most_at_once = 0

    def range_query_arrays(self, promql: str, start_seconds: float, end_seconds: float,
                           step_seconds: float) -> list[RangeArrays]:
        with self._lock:
            self.asked_at_once += 1
            self.most_at_once = max(self.most_at_once, self.asked_at_once)
        try:
            time.sleep(0.02)
            return super().range_query_arrays(promql, start_seconds, end_seconds, step_seconds)
        finally:
            with self._lock:
                self.asked_at_once -= 1


@pytest.mark.parametrize("queries_in_flight", [1, 2, 3])
def test_the_next_chunks_are_asked_for_while_one_is_read_and_the_file_is_the_same(
        tmp_path: Path, queries_in_flight: int) -> None:
    pods, windows, budget = 40, 600, 2_000  # 12 chunks of 50 windows
    one_at_a_time = tmp_path / "one.parquet"
    _run(SyntheticKepler(pods), one_at_a_time, windows=windows, budget=budget)
    client = SlowKepler(pods)
    out = tmp_path / "ahead.parquet"
    summary = run_labels(client, START_SECONDS, START_SECONDS + windows * 60, "60s", out,
                         kepler_line=KeplerLine.POD_COUNTERS.value, gpu="off", progress=False,
                         max_points_per_chunk=budget, queries_in_flight=queries_in_flight)
    assert client.most_at_once == queries_in_flight
    assert client.range_queries == 12 and summary.row_count == pods * windows
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(one_at_a_time), check_exact=True)
    assert pq.ParquetFile(out).metadata.num_row_groups == pq.ParquetFile(one_at_a_time).metadata.num_row_groups


class StuckAhead(SyntheticKepler):
    """Chunk 1's range query fails with `failure`; chunk 2's, asked ahead, hangs as a Prometheus
    still evaluating it would, until the test lets it go (or a minute passes)."""

    def __init__(self, pods: int, windows_per_chunk: int, failure: BaseException) -> None:
        super().__init__(pods)
        self.windows_per_chunk = windows_per_chunk
        self.failure = failure
        self.first_start: float | None = None
        self.stuck = threading.Event()
        self.let_go = threading.Event()
        self.answered_stuck_query = False

    def range_query_arrays(self, promql: str, start_seconds: float, end_seconds: float,
                           step_seconds: float) -> list[RangeArrays]:
        if self.first_start is None:
            self.first_start = start_seconds
        chunk = round((start_seconds - self.first_start) / step_seconds) // self.windows_per_chunk
        if chunk == 1:
            raise self.failure
        if chunk == 2:
            self.stuck.set()
            self.let_go.wait(timeout=60)
            self.answered_stuck_query = True
        return super().range_query_arrays(promql, start_seconds, end_seconds, step_seconds)


@pytest.mark.parametrize("failure", [PrometheusUnreachableError("gone for good", endpoint="/api/v1/query_range"),
                                     KeyboardInterrupt()])
def test_a_stopped_run_does_not_wait_for_the_queries_it_asked_ahead(tmp_path: Path, failure: BaseException) -> None:
    pods, budget = 50, 5_000  # 100 windows a chunk
    client = StuckAhead(pods, budget // pods, failure)
    out = tmp_path / "labels.parquet"
    try:
        with pytest.raises(type(failure)):
            run_labels(client, START_SECONDS, START_SECONDS + 600 * 60, "60s", out,
                       kepler_line=KeplerLine.POD_COUNTERS.value, gpu="off", progress=False,
                       max_points_per_chunk=budget, queries_in_flight=2)
        assert client.stuck.wait(timeout=30), "chunk 2 was never asked ahead"
        # run_labels has returned while chunk 2's query is still out: it did not wait for it.
        assert not client.answered_stuck_query
        assert os.listdir(tmp_path) == []
    finally:
        client.let_go.set()


@pytest.mark.parametrize("writing_fails", [False, True])
def test_a_run_closes_the_client_it_made_when_it_ends_or_writing_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writing_fails: bool) -> None:
    import trainer.labels as labels

    made: list[SyntheticKepler] = []

    class MadeFromTheUrl(SyntheticKepler):  # what run_labels builds from a URL, recorded
        def __init__(self, base_url: str, **_: object) -> None:
            super().__init__(50)
            made.append(self)

    monkeypatch.setattr(labels, "PrometheusClient", MadeFromTheUrl)
    if writing_fails:
        def write_one_then_fail(frames: object, out: object, window_seconds: int) -> object:
            for _ in frames:  # type: ignore[attr-defined]
                raise OSError("No space left on device")
            raise AssertionError("no chunk was read")
        monkeypatch.setattr(labels, "write_label_chunks", write_one_then_fail)
    out = tmp_path / "labels.parquet"
    run = lambda: run_labels("http://prometheus.invalid:9090", START_SECONDS, START_SECONDS + 600 * 60,  # noqa: E731
                             "60s", out, kepler_line=KeplerLine.POD_COUNTERS.value, gpu="off", progress=False,
                             max_points_per_chunk=5_000, queries_in_flight=2)
    if writing_fails:
        with pytest.raises(OSError) as failure:
            run()
        # Closed while the caller still holds the error (and so the generator's frame), not at its cleanup.
        assert failure.value is not None and made[0]._closed.is_set()
    else:
        run()
        assert made[0]._closed.is_set() and made[0].range_queries == 6
    assert len(made) == 1


def test_queries_in_flight_outside_1_to_4_is_refused() -> None:
    for wrong in (0, 5):
        with pytest.raises(ValueError, match=f"queries_in_flight must be between 1 and 4, got {wrong}"):
            _run_with(SyntheticKepler(3), queries_in_flight=wrong)


def _run_with(client: PrometheusClient, **options: object) -> object:
    return run_labels(client, START_SECONDS, START_SECONDS + 30 * 60, "60s", "unused.parquet",
                      kepler_line=KeplerLine.POD_COUNTERS.value, gpu="off", progress=False, **options)  # type: ignore[arg-type]
