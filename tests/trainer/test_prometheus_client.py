"""The Prometheus client: chunking, the API calls against a real server, and its errors."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.trainer.conftest import KeplerPrometheus
from harness.ports import free_loopback_port
from trainer.prometheus import (
    PROMETHEUS_MAX_POINTS_PER_SERIES,
    PrometheusClient,
    PrometheusQueryError,
    PrometheusUnreachableError,
    RetryPolicy,
    format_duration,
    split_evaluation_range,
)

# -- chunking --------------------------------------------------------------------------------


def test_a_day_of_minutes_splits_into_full_chunks_and_a_remainder() -> None:
    chunks = split_evaluation_range(0, 86_400, 60, max_points_per_chunk=500)
    assert [c.point_count for c in chunks] == [500, 500, 441]
    assert chunks[0].start_seconds == 0 and chunks[0].end_seconds == 499 * 60
    assert chunks[1].start_seconds == 500 * 60
    assert chunks[-1].end_seconds == 86_400


def test_an_end_off_the_grid_stops_at_the_last_grid_point() -> None:
    chunks = split_evaluation_range(100, 400, 60, max_points_per_chunk=10)
    assert len(chunks) == 1
    assert (chunks[0].start_seconds, chunks[0].end_seconds, chunks[0].point_count) == (100, 400, 6)
    assert split_evaluation_range(100, 399, 60)[0].end_seconds == 340


def test_a_single_point_range_is_one_chunk() -> None:
    assert [c.point_count for c in split_evaluation_range(60, 60, 60)] == [1]


@pytest.mark.parametrize(
    ("start", "end", "step", "limit"), [(0, -1, 60, 10), (0, 60, 0, 10), (0, 60, -60, 10), (0, 60, 60, 0)]
)
def test_chunking_rejects_bad_arguments(start: float, end: float, step: float, limit: int) -> None:
    with pytest.raises(ValueError):
        split_evaluation_range(start, end, step, limit)


@given(
    start=st.integers(min_value=1_600_000_000, max_value=1_900_000_000),
    step=st.sampled_from([1, 15, 30, 60, 300, 3600]),
    point_count=st.integers(min_value=1, max_value=20_000),
    limit=st.integers(min_value=1, max_value=2_000),
)
def test_chunks_cover_every_grid_point_once_and_in_order(start: int, step: int, point_count: int, limit: int) -> None:
    end = start + (point_count - 1) * step
    chunks = split_evaluation_range(start, end, step, limit)
    assert all(1 <= c.point_count <= limit for c in chunks)
    assert sum(c.point_count for c in chunks) == point_count
    assert chunks[0].start_seconds == start and chunks[-1].end_seconds == end
    for previous, following in zip(chunks, chunks[1:]):
        assert following.start_seconds == previous.end_seconds + step  # contiguous, no overlap
    assert all((c.start_seconds - start) % step == 0 for c in chunks)  # all on the same grid


def test_format_duration() -> None:
    assert format_duration(60) == "60s"
    assert format_duration(1.5) == "1500ms"
    with pytest.raises(ValueError):
        format_duration(0)


def test_a_range_query_over_the_point_limit_must_be_chunked() -> None:
    client = PrometheusClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="range_query_chunked"):
        client.range_query("up", 0, PROMETHEUS_MAX_POINTS_PER_SERIES * 60, 60)


def test_the_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        PrometheusClient("prometheus:9090")


# -- against the real server -------------------------------------------------------------------


@pytest.mark.prometheus
def test_instant_range_series_and_label_queries(kepler_prometheus: KeplerPrometheus) -> None:
    client = PrometheusClient(kepler_prometheus.url)
    pods = kepler_prometheus.pods
    end = pods.end_seconds

    samples = client.instant_query('count(kepler_pod_cpu_joules_total{state="running"})', at_seconds=end)
    assert len(samples) == 1 and samples[0].timestamp_seconds == end
    assert samples[0].value == 3 + 2  # web (3 zones) + debug-shell (2 zones) at the last sample

    scalar = client.instant_query("scalar(vector(2.5))", at_seconds=end)
    assert scalar[0].value == 2.5 and scalar[0].labels == {}

    series = client.range_query(
        'sum by (pod_name) (kepler_pod_cpu_joules_total{pod_name="debug-shell", zone="package"})',
        end - 600, end, 60,
    )
    assert len(series) == 1 and len(series[0].points) == 11
    assert [t for t, _ in series[0].points] == [end - 600 + 60 * i for i in range(11)]

    chunks = list(client.range_query_chunked("vector(1)", end - 600, end, 60, max_points_per_chunk=4))
    assert [len(result[0].points) for _, result in chunks] == [4, 4, 3]

    found = client.series(["kube_job_owner"], pods.start_seconds, end)
    assert [s["job_name"] for s in found] == ["nightly-report-28930000"]

    names = client.label_values("__name__", ['{__name__=~"kube_.*_owner"}'], pods.start_seconds, end)
    assert names == ["kube_job_owner", "kube_pod_owner", "kube_replicaset_owner"]

    assert client.build_info()["version"].startswith("2.")


@pytest.mark.prometheus
def test_a_bad_query_names_the_query_the_status_and_the_prometheus_error(kepler_prometheus: KeplerPrometheus) -> None:
    client = PrometheusClient(kepler_prometheus.url)
    with pytest.raises(PrometheusQueryError) as caught:
        client.range_query("sum(rate(kepler_pod_cpu_joules_total[1m])", 0, 600, 60)
    message = str(caught.value)
    assert "sum(rate(kepler_pod_cpu_joules_total[1m])" in message
    assert "HTTP 400" in message
    assert "bad_data" in message and "parse error" in message
    assert caught.value.http_status == 400 and caught.value.error_type == "bad_data"
    assert caught.value.endpoint == "/api/v1/query_range"


# -- errors from servers that are not (well-behaved) Prometheus ----------------------------------

Responder = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def fake_server(respond: Responder) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            respond(self)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            respond(self)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_a_prometheus_error_answer_is_reported_with_its_type() -> None:
    body = json.dumps({"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"})

    with fake_server(lambda h: _reply(h, 503, body.encode(), "application/json")) as url:
        with pytest.raises(PrometheusQueryError) as caught:
            PrometheusClient(url).instant_query("sum(kepler_pod_cpu_joules_total)")
    message = str(caught.value)
    assert "sum(kepler_pod_cpu_joules_total)" in message
    assert "HTTP 503" in message and "timeout" in message and "query timed out" in message


def test_a_non_prometheus_answer_is_reported_with_an_excerpt() -> None:
    page = b"<html><body>502 Bad Gateway: upstream prometheus unavailable</body></html>"
    with fake_server(lambda h: _reply(h, 502, page, "text/html")) as url:
        with pytest.raises(PrometheusQueryError) as caught:
            PrometheusClient(url).range_query("up", 0, 60, 60)
    message = str(caught.value)
    assert "'up'" in message and "HTTP 502" in message and "upstream prometheus unavailable" in message


def test_an_unreachable_url_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there any more
    with pytest.raises(PrometheusUnreachableError) as caught:
        PrometheusClient(url, timeout_seconds=5).instant_query("up")
    message = str(caught.value)
    assert "cannot reach" in message and url in message and "'up'" in message


def test_a_slow_server_times_out_with_a_clear_error() -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1.0)
        _reply(handler, 200, b'{"status":"success","data":{"resultType":"vector","result":[]}}', "application/json")

    with fake_server(slow) as url:
        with pytest.raises(PrometheusUnreachableError, match=r"timed out after 0\.2 s"):
            PrometheusClient(url, timeout_seconds=0.2).instant_query("up")


def test_an_unexpected_result_type_is_an_error() -> None:
    body = b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
    with fake_server(lambda h: _reply(h, 200, body, "application/json")) as url:
        with pytest.raises(PrometheusQueryError, match="expected an instant vector"):
            PrometheusClient(url).instant_query("up[5m]")


# -- retries -----------------------------------------------------------------------------------


def test_the_retry_policy_doubles_its_backoff_up_to_the_ceiling() -> None:
    policy = RetryPolicy(retries=6, backoff_seconds=1.0, max_backoff_seconds=10.0)
    assert policy.delays() == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.total_wait_seconds == 35.0
    assert RetryPolicy().total_wait_seconds == 31.0  # the commands' default: 1 + 2 + 4 + 8 + 16 s
    assert RetryPolicy(retries=0).delays() == []
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_seconds=5.0, max_backoff_seconds=1.0)


def test_a_gateway_error_is_retried_until_prometheus_answers() -> None:
    answers = [502, 503, 200]
    body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
    slept: list[float] = []

    def handler(h: BaseHTTPRequestHandler) -> None:
        status = answers.pop(0)
        _reply(h, status, body if status == 200 else b"<html>upstream down</html>", "application/json")

    with fake_server(handler) as url:
        client = PrometheusClient(url, retry=RetryPolicy(retries=3, backoff_seconds=0.5), sleep=slept.append)
        assert client.instant_query("up") == []
    assert slept == [0.5, 1.0] and client.retries_done == 2 and answers == []


def test_a_query_error_is_not_retried() -> None:
    calls: list[int] = []
    body = b'{"status":"error","errorType":"bad_data","error":"parse error"}'

    def handler(h: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        _reply(h, 400, body, "application/json")

    with fake_server(handler) as url:
        with pytest.raises(PrometheusQueryError, match="bad_data"):
            PrometheusClient(url, retry=RetryPolicy(retries=3), sleep=lambda _: None).instant_query("up{")
    assert len(calls) == 1  # Prometheus' verdict on the query would only repeat


def test_spent_retries_say_how_many_attempts_and_name_the_chunk() -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    slept: list[float] = []
    client = PrometheusClient(url, retry=RetryPolicy(retries=2, backoff_seconds=0.1), sleep=slept.append)
    with pytest.raises(PrometheusUnreachableError) as caught:
        client.range_query("up", 1_800_000_000, 1_800_000_600, 60)
    message = str(caught.value)
    assert url in message and "Connection refused" in message and "gave up after 3 attempts" in message
    assert "over the chunk 2027-01-15T08:00:00Z..2027-01-15T08:10:00Z" in message
    assert slept == [0.1, 0.2]


def test_closing_the_client_ends_a_backoff_at_once_and_the_request_fails() -> None:
    """A thread waiting out a backoff (here one of an hour) is let go by `close()` from another
    thread, as `train labels` does with the queries it asked ahead when a run stops."""
    url = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    client = PrometheusClient(url, retry=RetryPolicy(retries=5, backoff_seconds=3600, max_backoff_seconds=3600))
    raised: list[BaseException] = []
    asking = threading.Thread(target=lambda: _record_failure(raised, client.instant_query, "up"))
    asking.start()
    deadline = time.monotonic() + 30
    while client.retries_done == 0 and time.monotonic() < deadline:  # the first attempt was refused
        time.sleep(0.01)
    assert client.retries_done == 1
    client.close()
    asking.join(timeout=30)
    assert not asking.is_alive(), "close() did not end the backoff"
    assert len(raised) == 1 and isinstance(raised[0], PrometheusUnreachableError)
    assert "gave up after 1 attempts" in str(raised[0]) and "the client was closed" in str(raised[0])
    assert client.retries_done == 1  # no attempt after the wait


def test_a_closed_client_sends_nothing_and_counts_no_retry() -> None:
    """A query asked ahead that starts after its run stopped is not sent to Prometheus: a server
    that counts what reaches it sees nothing, and the run's report counts no retry."""
    reached: list[str] = []

    def count_and_refuse(handler: BaseHTTPRequestHandler) -> None:
        reached.append(handler.path)
        _reply(handler, 503, b"", "text/plain")

    with fake_server(count_and_refuse) as url:
        client = PrometheusClient(url, retry=RetryPolicy(retries=3, backoff_seconds=3600, max_backoff_seconds=3600))
        client.close()
        with pytest.raises(PrometheusUnreachableError, match="not sent, the client was closed"):
            client.instant_query("up")
    assert reached == [] and client.retries_done == 0


def _record_failure(raised: list[BaseException], call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except BaseException as exc:
        raised.append(exc)


# -- the lean range query (range_query_arrays) ---------------------------------------------------


@pytest.mark.prometheus
def test_the_lean_range_query_equals_the_plain_one_on_the_real_server(kepler_prometheus: KeplerPrometheus) -> None:
    client = PrometheusClient(kepler_prometheus.url)
    pods = kepler_prometheus.pods
    promql = "sum by (pod_namespace, pod_name) (increase(kepler_pod_cpu_joules_total[60s]))"
    plain = client.range_query(promql, pods.start_seconds + 60, pods.end_seconds, 60)
    lean = client.range_query_arrays(promql, pods.start_seconds + 60, pods.end_seconds, 60)
    assert [s.labels for s in lean] == [s.labels for s in plain] and len(lean) >= 4
    for got, want in zip(lean, plain):
        assert got.times_seconds.tolist() == [t for t, _ in want.points]
        assert got.values.tolist() == [v for _, v in want.points]  # the same floats, bit for bit


def test_the_lean_range_query_reads_nan_infinities_and_exponents() -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"pod": "a"}, "values": [[1700000000, "NaN"], [1700000060.5, "+Inf"], [1700000120, "-Inf"],
                                              [1700000180, "1.5e-07"], [1700000240, "123456789.125"]]},
        {"metric": {}, "values": []},
    ]}}).encode()
    with fake_server(lambda h: _reply(h, 200, body, "application/json")) as url:
        series = PrometheusClient(url).range_query_arrays("x", 0, 240, 60)
    assert series[0].labels == {"pod": "a"} and series[1].labels == {} and len(series[1].values) == 0
    assert series[0].times_seconds.tolist() == [1700000000, 1700000060.5, 1700000120, 1700000180, 1700000240]
    values = series[0].values.tolist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 1.5e-07, 123456789.125]


def test_the_lean_range_query_reports_errors_and_odd_answers_as_the_plain_one_does() -> None:
    error = json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode()
    with fake_server(lambda h: _reply(h, 400, error, "application/json")) as url:
        with pytest.raises(PrometheusQueryError, match="HTTP 400.*bad_data.*parse error"):
            PrometheusClient(url).range_query_arrays("sum(", 0, 60, 60)
    vector = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
    with fake_server(lambda h: _reply(h, 200, vector, "application/json")) as url:
        with pytest.raises(PrometheusQueryError, match="'vector' result; expected a matrix"):
            PrometheusClient(url).range_query_arrays("up", 0, 60, 60)
    # Values numpy cannot read as pairs: read one by one, as range_query would.
    odd = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[60, "1"], [120, "1_000"]]}]}}).encode()
    with fake_server(lambda h: _reply(h, 200, odd, "application/json")) as url:
        [series] = PrometheusClient(url).range_query_arrays("up", 0, 120, 60)
    assert series.values.tolist() == [1.0, 1000.0]
