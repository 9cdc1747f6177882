"""A small client for the Prometheus HTTP API (v1), built on `requests`.

It does only what the trainer needs: instant queries, range queries (also split into chunks so a
week of a large cluster is never one giant query), stored samples of a selector (range vectors
read in chunks), series lookups and label-value lookups.

Every failure is raised as a `PrometheusError` whose message names the endpoint, the query and
what went wrong (HTTP status and Prometheus' own `errorType`/`error`, or the connection problem),
so a failed training run says which query broke and why. A request that covers a time range
(a chunk of a range query, a raw-sample read) also names that range, so a user knows which chunk.

A `RetryPolicy` makes a request that got no answer (connection refused or reset, timeout) or a
gateway's 502/503/504 try again after a backoff that doubles up to a ceiling, a bounded number
of times, each retry logged as a warning on the `trainer.prometheus` logger. Only the failed
request is repeated: chunks already read are kept by their callers, so a run resumes with the
remaining chunks once Prometheus is back. The client's default is no retry (a library call fails
at once); `train labels` and `train runs` retry by default (`--retries`, `--retry-backoff`).
`close()` ends a wait between retries at once (from any thread): the request then fails as it
would have after its last retry, so a run stopped by Ctrl-C or an error does not sit out a
backoff on a thread that asked ahead.

`range_query_arrays` is the lean form of `range_query` for large answers (the labels step's
chunks): msgspec decodes the body with each series' values left as raw JSON, which numpy parses
into two float arrays. A point then costs ~19 bytes in Python besides the body's own ~31, where
`json` and (time, value) tuples cost ~300 (`RangeSeries`); a 500,000-point answer decoded in
0.31 s against 3.6 s for `json.loads` alone (measured on this machine).

Times are Unix seconds (float) throughout; durations are seconds.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import numpy as np
import requests

DEFAULT_TIMEOUT_SECONDS = 30.0
# Prometheus refuses range queries of more than 11,000 points per series; stay well below it so a
# chunk is also a reasonable amount of work for the server.
PROMETHEUS_MAX_POINTS_PER_SERIES = 11_000
DEFAULT_MAX_POINTS_PER_CHUNK = 720
# Longest range vector of one raw-sample read: 6 h of 15 s scrapes is 1,440 samples per series.
DEFAULT_RAW_CHUNK_SECONDS = 21_600.0
_BODY_EXCERPT_CHARS = 300
DEFAULT_RETRIES = 5
DEFAULT_RETRY_BACKOFF_SECONDS = 1.0
DEFAULT_RETRY_MAX_BACKOFF_SECONDS = 30.0
# A proxy or load balancer in front of a restarting Prometheus answers with these; any other
# HTTP error is Prometheus' own verdict on the query and would only repeat.
_RETRIED_HTTP_STATUSES = frozenset({502, 503, 504})

_log = logging.getLogger(__name__)


class PrometheusError(RuntimeError):
    """A Prometheus API call failed. The message names the endpoint, the query and the cause."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        query: str | None = None,
        http_status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.query = query
        self.http_status = http_status
        self.error_type = error_type


class PrometheusUnreachableError(PrometheusError):
    """No HTTP answer at all: connection refused, DNS failure, timeout."""


class PrometheusQueryError(PrometheusError):
    """Prometheus (or whatever sits at that URL) answered, but not with a successful result."""


@dataclass(frozen=True)
class RetryPolicy:
    """After a request that got no answer: `retries` more attempts, waiting `backoff_seconds`,
    then twice that, and so on, never more than `max_backoff_seconds` at a time. The longest a
    request can wait in all is `total_wait_seconds`."""

    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = DEFAULT_RETRY_BACKOFF_SECONDS
    max_backoff_seconds: float = DEFAULT_RETRY_MAX_BACKOFF_SECONDS

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not (self.backoff_seconds >= 0 and math.isfinite(self.backoff_seconds)):
            raise ValueError(f"the retry backoff must be >= 0 seconds, got {self.backoff_seconds!r}")
        if not self.max_backoff_seconds >= self.backoff_seconds:
            raise ValueError(
                f"the longest retry backoff ({self.max_backoff_seconds!r} s) is below the first ({self.backoff_seconds!r} s)"
            )

    def delays(self) -> list[float]:
        """The waits before retry 1, 2, ..., `retries`."""
        return [min(self.backoff_seconds * 2.0**index, self.max_backoff_seconds) for index in range(self.retries)]

    @property
    def total_wait_seconds(self) -> float:
        return float(sum(self.delays()))


NO_RETRY = RetryPolicy(retries=0)


@dataclass(frozen=True)
class InstantSample:
    """One element of an instant vector."""

    labels: Mapping[str, str]
    timestamp_seconds: float
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range-query matrix: (timestamp_seconds, value) points in time order."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class RangeArrays:
    """One series of a range-query matrix as arrays: evaluation times (Unix seconds) and values."""

    labels: Mapping[str, str]
    times_seconds: np.ndarray
    values: np.ndarray


class _MatrixSeries(msgspec.Struct):
    metric: dict[str, str] = {}
    values: msgspec.Raw = msgspec.Raw(b"[]")


class _MatrixData(msgspec.Struct):
    resultType: str
    result: list[_MatrixSeries]


class _MatrixAnswer(msgspec.Struct):
    status: str
    data: _MatrixData | None = None


class _NotDecoded(Exception):
    """The lean decoder does not take this body: the generic path reads it (and its error)."""


def _decode_matrix(body: bytes) -> list[RangeArrays]:
    """A successful range-query answer, each series' values parsed by numpy from its raw JSON
    (`[[t,"v"],...]` -> `t,v,...`; Prometheus writes NaN and infinities as "NaN", "+Inf", "-Inf",
    which numpy reads)."""
    try:
        answer = msgspec.json.decode(body, type=_MatrixAnswer)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _NotDecoded(str(exc)) from None
    if answer.status != "success" or answer.data is None or answer.data.resultType != "matrix":
        raise _NotDecoded(answer.status)
    series: list[RangeArrays] = []
    for item in answer.data.result:
        text = bytes(item.values).translate(None, b'[]" ')
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)  # numpy's word for a text it stopped reading
                flat = np.fromstring(text, sep=",") if text else np.zeros(0)
        except (ValueError, DeprecationWarning):
            raise _NotDecoded(f"values of {item.metric!r} are not numbers numpy reads") from None
        if flat.size != (text.count(b",") + 1 if text else 0) or flat.size % 2:
            raise _NotDecoded(f"values of {item.metric!r} are not [time, \"value\"] pairs")
        pairs = flat.reshape(-1, 2)
        series.append(RangeArrays(labels=item.metric, times_seconds=pairs[:, 0].copy(), values=pairs[:, 1].copy()))
    return series


@dataclass(frozen=True)
class EvaluationChunk:
    """A slice of a range query: evaluation times start, start+step, ..., end (both inclusive)."""

    start_seconds: float
    end_seconds: float
    step_seconds: float

    @property
    def point_count(self) -> int:
        return int(round((self.end_seconds - self.start_seconds) / self.step_seconds)) + 1


def split_evaluation_range(
    start_seconds: float,
    end_seconds: float,
    step_seconds: float,
    max_points_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK,
) -> list[EvaluationChunk]:
    """Split the evaluation times start, start+step, ... (<= end) into consecutive chunks.

    Every chunk stays on the same grid (its start is start + k*step), chunks neither overlap nor
    leave gaps, and each holds at most `max_points_per_chunk` evaluation times. Evaluation times
    are computed as start + k*step (never by repeated addition) so long ranges do not drift.
    """
    if not step_seconds > 0 or not math.isfinite(step_seconds):
        raise ValueError(f"step_seconds must be a positive number, got {step_seconds!r}")
    if max_points_per_chunk < 1:
        raise ValueError(f"max_points_per_chunk must be >= 1, got {max_points_per_chunk}")
    if end_seconds < start_seconds:
        raise ValueError(f"end ({end_seconds}) is before start ({start_seconds})")
    # A tiny tolerance so that end == start + n*step computed in floating point still counts n.
    total_points = int(math.floor((end_seconds - start_seconds) / step_seconds + 1e-9)) + 1
    chunks: list[EvaluationChunk] = []
    for first in range(0, total_points, max_points_per_chunk):
        last = min(first + max_points_per_chunk, total_points) - 1
        chunks.append(
            EvaluationChunk(
                start_seconds=start_seconds + first * step_seconds,
                end_seconds=start_seconds + last * step_seconds,
                step_seconds=step_seconds,
            )
        )
    return chunks


def format_duration(seconds: float) -> str:
    """A PromQL duration literal: whole seconds as `60s`, sub-second amounts as `1500ms`."""
    if not seconds > 0:
        raise ValueError(f"a PromQL duration must be positive, got {seconds!r}")
    milliseconds = round(seconds * 1000)
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    return f"{milliseconds}ms"


def _connection_problem(exc: requests.RequestException) -> str:
    """The operating system's words (`[Errno 111] Connection refused`) when urllib3 wrapped them
    in its pool and retry layers, whose text repeats the URL and the whole query string."""
    found = re.search(r"\[Errno -?\d+\][^\"')]*", str(exc))
    return found.group(0).strip() if found else str(exc)


def _span(start_seconds: float, end_seconds: float) -> str:
    """A request's time range in words, to name the chunk that failed."""
    def iso(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    if start_seconds == end_seconds:
        return f"the time {iso(start_seconds)}"
    return f"the chunk {iso(start_seconds)}..{iso(end_seconds)}"


def _format_time(seconds: float) -> str:
    # Prometheus accepts float Unix seconds and keeps milliseconds: print exactly those.
    return f"{seconds:.3f}"


def _gave_up(exc: PrometheusError, attempts: int, waited_seconds: float, why: str) -> PrometheusError:
    return type(exc)(f"{exc} (gave up after {attempts} attempts over {waited_seconds:.1f} s; {why})",
                     endpoint=exc.endpoint, query=exc.query, http_status=exc.http_status, error_type=exc.error_type)


class PrometheusClient:
    """Talks to one Prometheus server, e.g. `PrometheusClient("http://prometheus:9090")`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy = NO_RETRY,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """`retry`: what to do when Prometheus does not answer (default: fail at once); `sleep`
        waits between attempts (a seam for tests; by default a wait that `close()` ends)."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._session = session or requests.Session()
        self.retry = retry
        self._closed = threading.Event()
        self._sleep = sleep if sleep is not None else self._closed.wait
        self.retries_done = 0  # retries over the client's life, for the run's report
        self._retries_lock = threading.Lock()  # `train labels` asks from two threads
        if headers:
            self._session.headers.update(headers)

    # -- public API -------------------------------------------------------------------------

    def close(self) -> None:
        """No more requests: a wait between attempts ends now and its request fails, a later
        request is not sent, and one that fails is not tried again. Safe from another thread; a
        request on the wire is not cut (its answer or the timeout ends it)."""
        self._closed.set()
        self._session.close()

    def instant_query(self, promql: str, at_seconds: float | None = None) -> list[InstantSample]:
        """Evaluate `promql` at one time (default: the server's now). Scalars come back as one
        sample with no labels."""
        form = {"query": promql}
        if at_seconds is not None:
            form["time"] = _format_time(at_seconds)
        span = None if at_seconds is None else _span(at_seconds, at_seconds)
        data = self._call("POST", "/api/v1/query", form=form, query=promql, span=span)
        result_type = data.get("resultType")
        result = data.get("result")
        if result_type == "vector":
            return [
                InstantSample(
                    labels=dict(item.get("metric", {})),
                    timestamp_seconds=float(item["value"][0]),
                    value=float(item["value"][1]),
                )
                for item in result
            ]
        if result_type == "scalar":
            return [InstantSample(labels={}, timestamp_seconds=float(result[0]), value=float(result[1]))]
        raise PrometheusQueryError(
            f"Prometheus query {promql!r} at {self.base_url}/api/v1/query returned a "
            f"{result_type!r} result; expected an instant vector or a scalar",
            endpoint="/api/v1/query",
            query=promql,
        )

    def range_query(
        self, promql: str, start_seconds: float, end_seconds: float, step_seconds: float
    ) -> list[RangeSeries]:
        """Evaluate `promql` at start, start+step, ..., end in one request."""
        chunks = split_evaluation_range(start_seconds, end_seconds, step_seconds, PROMETHEUS_MAX_POINTS_PER_SERIES)
        if len(chunks) > 1:
            raise ValueError(
                f"range query {promql!r} spans more than {PROMETHEUS_MAX_POINTS_PER_SERIES} points: "
                "use range_query_chunked"
            )
        form = {
            "query": promql,
            "start": _format_time(start_seconds),
            "end": _format_time(end_seconds),
            "step": format_duration(step_seconds),
        }
        data = self._call("POST", "/api/v1/query_range", form=form, query=promql,
                          span=_span(start_seconds, end_seconds))
        if data.get("resultType") != "matrix":
            raise PrometheusQueryError(
                f"Prometheus range query {promql!r} returned a {data.get('resultType')!r} result; "
                "expected a matrix",
                endpoint="/api/v1/query_range",
                query=promql,
            )
        return [
            RangeSeries(
                labels=dict(item.get("metric", {})),
                points=tuple((float(t), float(v)) for t, v in item.get("values", [])),
            )
            for item in data.get("result", [])
        ]

    def range_query_arrays(
        self, promql: str, start_seconds: float, end_seconds: float, step_seconds: float
    ) -> list[RangeArrays]:
        """`range_query` with each series as arrays (see the module docstring): for answers of
        hundreds of thousands of points."""
        chunks = split_evaluation_range(start_seconds, end_seconds, step_seconds, PROMETHEUS_MAX_POINTS_PER_SERIES)
        if len(chunks) > 1:
            raise ValueError(
                f"range query {promql!r} spans more than {PROMETHEUS_MAX_POINTS_PER_SERIES} points: split it"
            )
        form = {
            "query": promql,
            "start": _format_time(start_seconds),
            "end": _format_time(end_seconds),
            "step": format_duration(step_seconds),
        }
        data = self._call("POST", "/api/v1/query_range", form=form, query=promql,
                          span=_span(start_seconds, end_seconds), decode=_decode_matrix)
        if isinstance(data, list):
            return data
        if data.get("resultType") == "matrix":  # values the lean path could not read: read them one by one
            return [RangeArrays(labels=dict(item.get("metric", {})),
                                times_seconds=np.array([float(t) for t, _ in item.get("values", [])], dtype=np.float64),
                                values=np.array([float(v) for _, v in item.get("values", [])], dtype=np.float64))
                    for item in data.get("result", [])]
        raise PrometheusQueryError(
            f"Prometheus range query {promql!r} returned a {data.get('resultType')!r} result; expected a matrix",
            endpoint="/api/v1/query_range",
            query=promql,
        )

    def range_query_chunked(
        self,
        promql: str,
        start_seconds: float,
        end_seconds: float,
        step_seconds: float,
        max_points_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK,
    ) -> Iterator[tuple[EvaluationChunk, list[RangeSeries]]]:
        """Like `range_query`, but one request per chunk of at most `max_points_per_chunk`
        evaluation times, yielded as they arrive so callers can stream and show progress."""
        for chunk in split_evaluation_range(start_seconds, end_seconds, step_seconds, max_points_per_chunk):
            yield chunk, self.range_query(promql, chunk.start_seconds, chunk.end_seconds, step_seconds)

    def raw_samples(
        self, selector: str, start_seconds: float, end_seconds: float, chunk_seconds: float = DEFAULT_RAW_CHUNK_SECONDS
    ) -> list[RangeSeries]:
        """The stored samples of the series `selector` matches, between start and end: the range
        vector `selector[d]` read at consecutive chunk ends (no evaluation, no extrapolation), each
        series' chunks joined in time order. A sample on a chunk edge (Prometheus 2.x includes the
        left edge) is kept once."""
        merged: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
        chunk_start = start_seconds
        while True:
            chunk_end = min(chunk_start + chunk_seconds, end_seconds)
            promql = f"{selector}[{format_duration(max(chunk_end - chunk_start, 0.001))}]"
            data = self._call("POST", "/api/v1/query", form={"query": promql, "time": _format_time(chunk_end)},
                              query=promql, span=_span(chunk_start, chunk_end))
            if data.get("resultType") != "matrix":
                raise PrometheusQueryError(
                    f"Prometheus query {promql!r} returned a {data.get('resultType')!r} result; expected a matrix",
                    endpoint="/api/v1/query",
                    query=promql,
                )
            for item in data.get("result", []):
                key = tuple(sorted(dict(item.get("metric", {})).items()))
                points = merged.setdefault(key, {})
                points.update((float(t), float(v)) for t, v in item.get("values", []))
            if chunk_end >= end_seconds:
                break
            chunk_start = chunk_end
        return [RangeSeries(labels=dict(key), points=tuple(sorted(points.items()))) for key, points in merged.items()]

    def series(
        self, matchers: Sequence[str], start_seconds: float, end_seconds: float
    ) -> list[dict[str, str]]:
        """Label sets of the series matching any of `matchers` that have samples in [start, end].
        An index lookup: no sample is decoded, so it is cheap even over long ranges."""
        form: list[tuple[str, str]] = [("match[]", m) for m in matchers]
        form += [("start", _format_time(start_seconds)), ("end", _format_time(end_seconds))]
        data = self._call("POST", "/api/v1/series", form=form, query=" or ".join(matchers))
        return [dict(labels) for labels in data]

    def label_values(
        self,
        label: str,
        matchers: Sequence[str],
        start_seconds: float,
        end_seconds: float,
    ) -> list[str]:
        """Values of `label` among series matching `matchers` with samples in [start, end].
        With label `__name__` it tells which metrics exist in a time range."""
        params: list[tuple[str, str]] = [("match[]", m) for m in matchers]
        params += [("start", _format_time(start_seconds)), ("end", _format_time(end_seconds))]
        # This endpoint accepts GET only on older servers (2.x answers POST with 405).
        data = self._call("GET", f"/api/v1/label/{label}/values", params=params, query=" or ".join(matchers))
        return [str(v) for v in data]

    def build_info(self) -> dict[str, str]:
        """The server's version information (`version`, `revision`, ...)."""
        return dict(self._call("GET", "/api/v1/status/buildinfo", query=None))

    # -- plumbing ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: str | None,
        form: Mapping[str, str] | list[tuple[str, str]] | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        span: str | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """One API call, tried again by the retry policy while Prometheus does not answer.
        `decode` reads a successful body instead of the generic JSON path, when it takes it."""
        delays = self.retry.delays()
        started = time.monotonic()
        if self._closed.is_set():  # a query asked ahead that starts after the run stopped: not sent
            raise PrometheusUnreachableError(f"{path}: not sent, the client was closed", endpoint=path, query=query)
        for attempt in range(len(delays) + 1):
            try:
                return self._call_once(method, path, query=query, form=form, params=params, span=span,
                                       **({"decode": decode} if decode is not None else {}))
            except PrometheusError as exc:
                retriable = isinstance(exc, PrometheusUnreachableError) or exc.http_status in _RETRIED_HTTP_STATUSES
                if not retriable or not delays:
                    raise
                if self._closed.is_set():
                    raise _gave_up(exc, attempt + 1, time.monotonic() - started, "the client was closed") from exc
                if attempt == len(delays):
                    raise _gave_up(exc, attempt + 1, time.monotonic() - started,
                                   "more with --retries and --retry-backoff") from exc
                _log.warning("%s; retry %d of %d in %g s", exc, attempt + 1, len(delays), delays[attempt])
                with self._retries_lock:
                    self.retries_done += 1
                self._sleep(delays[attempt])
                if self._closed.is_set():
                    raise _gave_up(exc, attempt + 1, time.monotonic() - started, "the client was closed") from exc
        raise AssertionError("unreachable: the loop returns or raises")

    def _call_once(
        self,
        method: str,
        path: str,
        *,
        query: str | None,
        form: Mapping[str, str] | list[tuple[str, str]] | None,
        params: Sequence[tuple[str, str]] | None,
        span: str | None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        url = self.base_url + path
        what = f"Prometheus {path}" + (f" for query {query!r}" if query is not None else "")
        if span is not None:
            what += f" over {span}"
        try:
            response = self._session.request(
                method, url, data=form, params=params, timeout=self.timeout_seconds
            )
        except requests.Timeout as exc:
            raise PrometheusUnreachableError(
                f"{what} at {url} timed out after {self.timeout_seconds:g} s: {exc}",
                endpoint=path,
                query=query,
            ) from exc
        except requests.RequestException as exc:
            raise PrometheusUnreachableError(
                f"{what}: cannot reach {url}: {_connection_problem(exc)}", endpoint=path, query=query
            ) from exc

        if decode is not None and response.status_code == 200:
            try:
                return decode(response.content)
            except _NotDecoded:
                pass  # an error body, or not the expected shape: read as any answer below
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            excerpt = response.text[:_BODY_EXCERPT_CHARS].strip()
            raise PrometheusQueryError(
                f"{what} at {url} failed: HTTP {response.status_code} {response.reason}, "
                f"not a Prometheus API answer: {excerpt!r}",
                endpoint=path,
                query=query,
                http_status=response.status_code,
            )
        if body.get("status") != "success" or response.status_code >= 400:
            error_type = body.get("errorType")
            error = body.get("error", "no error message")
            raise PrometheusQueryError(
                f"{what} at {url} failed: HTTP {response.status_code} {response.reason}, "
                f"Prometheus error {error_type}: {error}",
                endpoint=path,
                query=query,
                http_status=response.status_code,
                error_type=error_type,
            )
        return body.get("data")
