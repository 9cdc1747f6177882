"""The trainer's `labels` step: measured energy and power per pod per time window, from Kepler
metrics in Prometheus plus the pod's GPU energy (dcgm-exporter or Kepler's GPU series, see
`trainer.dcgm`), with each pod's owning workload.

Windows are [start + i*W, start + (i+1)*W) for the window length W (the step), as many as fit
before `end`. For each window and pod the table holds the energy Kepler attributed to the pod in
that window (joules, from `increase()` at the window's end, see `trainer.kepler`) and the average
power over it (watts = joules / W). Columns, one row per (window, pod):

    window_start    datetime64[ns, UTC]  start of the window (tz-aware UTC timestamp)
    window_seconds  int64                W
    namespace       str                  the pod's namespace (from Kepler's labels)
    pod             str                  the pod's name (from Kepler's labels)
    workload_kind   str                  Deployment, StatefulSet, DaemonSet, CronJob, Job, Node, Pod...
    workload_name   str                  the workload's name
    energy_joules   float64              energy in the window, CPU side and GPU
    power_watts     float64              energy_joules / window_seconds
    kepler_line     str                  "kepler-0.7" (Kepler <= 0.9) or "kepler-0.10" (>= 0.10)
    gpu_energy_joules float64            the GPU part of energy_joules (0 without GPU energy)

`gpu_energy_joules` is written after the other columns and is not part of `LABEL_COLUMNS`, so
tables from before it still read. A pod appears in a window only if one of its counters has two
samples inside it, so its first partial window (and its last, after its final scrape) is not in
the table. A pod with GPU series and no Kepler CPU series has rows too (its CPU energy is 0).

Streaming: `train labels` never holds the table. `LabelsReader` reads Prometheus one chunk of
windows at a time and yields that chunk's rows; `run_labels` writes each as one row group of the
output's temporary file, which replaces the output only when every chunk was read (the same
atomic write as before: an interrupted run leaves no file, or the old one). Between chunks only
the pods (integer codes, their names and owners) are kept. A chunk's windows are chosen so that
one range query returns at most `max_points_per_chunk` points (series x windows): on a large
cluster a chunk is shorter, so the memory of one chunk stays the same from 200 to 20,000
workloads. Chunks are consecutive in time and each is sorted, so the file is in
(window_start, namespace, pod) order as the in-memory table (`collect_labels`) is.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from webhook.files import write_atomically
from trainer.dcgm import GpuChoice, GpuSource, choose_gpu_source, read_dcgm_energy
from trainer.kepler import (
    ContainerEnergySelection,
    EnergyQuery,
    KeplerLine,
    PodEnergySelection,
    build_energy_query,
    build_gpu_energy_query,
    detect_kepler_line,
    selection_counts_gpu,
)
from trainer.owners import OwnerFallback, OwnerResolver, WorkloadRef, load_owner_index
from trainer.prometheus import (
    DEFAULT_MAX_POINTS_PER_CHUNK,
    DEFAULT_TIMEOUT_SECONDS,
    NO_RETRY,
    EvaluationChunk,
    PrometheusClient,
    RangeArrays,
    RetryPolicy,
    split_evaluation_range,
)

LABEL_COLUMNS: tuple[str, ...] = (
    "window_start",
    "window_seconds",
    "namespace",
    "pod",
    "workload_kind",
    "workload_name",
    "energy_joules",
    "power_watts",
    "kepler_line",
)
GPU_ENERGY_COLUMN = "gpu_energy_joules"
OUTPUT_COLUMNS: tuple[str, ...] = (*LABEL_COLUMNS, GPU_ENERGY_COLUMN)
DEFAULT_WINDOW_SECONDS = 60
# Points (series x windows) one range query may return. Python holds a parsed answer at ~300 bytes
# a point (the JSON text, its lists and strings, the (time, value) tuples), so 500,000 points keep
# a chunk near 150 MB whatever the cluster's size; at 2,000 workloads (~1,650 pods a window) that
# is ~300 windows a query. See bench/README.md (trainer_scale) for the measured peaks.
DEFAULT_MAX_POINTS_PER_CHUNK_REQUEST = 500_000
# Chunks whose range queries are sent before the oldest is read. Prometheus evaluates one query
# on one core, and `labels` waited for it, then parsed, then asked again: at 20,000 workloads x 1
# day, of 287 s wall the Prometheus process spent 192 s of CPU and this one 91 s, one after the
# other. With two chunks asked for, Prometheus evaluates the next while this process reads the
# last, and the two cores share the work.
DEFAULT_QUERIES_IN_FLIGHT = 2
# A chunk may send two queries (CPU and GPU energy); requests' connection pool keeps 10 per host.
MAX_QUERIES_IN_FLIGHT = 4


@dataclass(frozen=True)
class LabelsRunSummary:
    """What `run_labels` wrote."""

    path: Path
    row_count: int
    pod_count: int
    window_count: int
    kepler_line: str | None
    total_energy_joules: float
    gpu_source: str | None  # "dcgm-exporter", "kepler", or None (off, or no GPU series)
    gpu_energy_joules: float  # the GPU part of total_energy_joules
    gpu_power_gauge_joules: float  # the part of it integrated from dcgm's power gauge

    def gpu_text(self) -> str:
        """One line for the run's output: which GPU source and how many joules."""
        if self.gpu_source is None:
            return "GPU: none (off, or no GPU series in the range)"
        gauge = f", {self.gpu_power_gauge_joules:.1f} J of it from the power gauge" if self.gpu_power_gauge_joules else ""
        return f"GPU: {self.gpu_source}, {self.gpu_energy_joules:.1f} J attributed{gauge}"


@dataclass(frozen=True)
class LabelsCollection:
    """The labels table and what its GPU part came from."""

    frame: pd.DataFrame
    gpu_source: GpuSource | None
    gpu_power_gauge_joules: float


# -- collecting ------------------------------------------------------------------------------


def collect_labels(
    prom_url: str | PrometheusClient,
    start: datetime | float | str,
    end: datetime | float | str,
    step_seconds: float = DEFAULT_WINDOW_SECONDS,
    **options: Any,
) -> pd.DataFrame:
    """The labels table alone; the options are those of `collect_labels_report`."""
    return collect_labels_report(prom_url, start, end, step_seconds, **options).frame


def collect_labels_report(
    prom_url: str | PrometheusClient,
    start: datetime | float | str,
    end: datetime | float | str,
    step_seconds: float = DEFAULT_WINDOW_SECONDS,
    **options: Any,
) -> LabelsCollection:
    """The whole labels table in memory, with what its GPU part came from: the chunks of
    `LabelsReader` (whose options these are) put together. For tests and small ranges;
    `run_labels` streams the same chunks to its file instead."""
    reader = LabelsReader(prom_url, start, end, step_seconds, **options)
    frames = [frame for frame in reader.chunks() if len(frame)]
    frame = pd.concat(frames, ignore_index=True) if frames else empty_labels_frame(reader.window_seconds)
    return LabelsCollection(frame, reader.gpu_source, reader.gpu_power_gauge_joules)


class LabelsReader:
    """Per-pod energy and power per window between start and end (see the module docstring), read
    from Prometheus one chunk of windows at a time: `chunks()` yields each chunk's rows as a
    labels frame, sorted by (window_start, namespace, pod), and keeps nothing per window between
    chunks. The chunks are consecutive in time, so the frames put end to end are the whole table
    in that order.

    prom_url: the Prometheus base URL, or a ready `PrometheusClient`.
    start, end: datetimes (naive ones are taken as UTC), Unix seconds, or strings accepted by
        `parse_time_seconds`.
    step_seconds: the window length W; windows start at start, start+W, ...
    kepler_line: force a Kepler line; by default it is detected from the metrics present.
    container_selection / pod_selection: which Kepler components/modes or zones/states to sum.
    owner_fallback: called for pods unknown to kube-state-metrics (the Kubernetes API seam).
    gpu: where GPU energy comes from: auto (dcgm-exporter, else Kepler's GPU series), dcgm,
        kepler, or off (see `trainer.dcgm`).
    max_windows_per_chunk: the most windows in one range query (`--chunk` / W).
    max_points_per_chunk: the most points (series x windows) one range query should return. A
        chunk's answer is parsed into Python objects (~300 bytes a point, `DEFAULT_MAX_POINTS_PER_CHUNK`),
        so the windows of the next chunk are chosen from the points per window seen so far (the
        first from the pods present at the first window): memory follows this budget, not the
        cluster. The rows do not depend on where chunks are cut.
    queries_in_flight: chunks whose range queries are sent before the oldest is read
        (`DEFAULT_QUERIES_IN_FLIGHT`, at most `MAX_QUERIES_IN_FLIGHT`; 1 asks for one chunk at a
        time), from the second chunk on, so that every chunk asked ahead is sized by one already
        read. They share the client's connection pool; memory holds up to this many chunks'
        answers more.
    retry: when Prometheus does not answer, how often to try a request again (with a URL; a ready
        client brings its own). Chunks already read are kept: the run resumes where it stopped.
    progress: show a progress bar over the chunks (on stderr).
    """

    def __init__(
        self,
        prom_url: str | PrometheusClient,
        start: datetime | float | str,
        end: datetime | float | str,
        step_seconds: float = DEFAULT_WINDOW_SECONDS,
        *,
        kepler_line: KeplerLine | str | None = None,
        container_selection: ContainerEnergySelection | None = None,
        pod_selection: PodEnergySelection | None = None,
        owner_fallback: OwnerFallback | None = None,
        gpu: GpuChoice | str = GpuChoice.AUTO,
        max_windows_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK,
        max_points_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK_REQUEST,
        queries_in_flight: int = DEFAULT_QUERIES_IN_FLIGHT,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy = NO_RETRY,
        progress: bool = False,
    ) -> None:
        self._owns_client = not isinstance(prom_url, PrometheusClient)  # closed when the chunks end
        self.client = prom_url if isinstance(prom_url, PrometheusClient) else PrometheusClient(
            prom_url, timeout_seconds=timeout_seconds, retry=retry
        )
        self.start_seconds = parse_time_seconds(start)
        end_seconds = parse_time_seconds(end)
        if not step_seconds >= 1 or not float(step_seconds).is_integer():
            raise ValueError(f"the window (step) must be a whole number of seconds >= 1, got {step_seconds!r}")
        if max_windows_per_chunk < 1 or max_points_per_chunk < 1:
            raise ValueError("a chunk holds at least one window and one point")
        if not 1 <= queries_in_flight <= MAX_QUERIES_IN_FLIGHT:
            raise ValueError(f"queries_in_flight must be between 1 and {MAX_QUERIES_IN_FLIGHT}, got {queries_in_flight}")
        self.window_seconds = int(step_seconds)
        self.window_count = int(math.floor((end_seconds - self.start_seconds) / self.window_seconds + 1e-9))
        if self.window_count < 1:
            raise ValueError(
                f"the range {self.start_seconds:.0f}..{end_seconds:.0f} is shorter than one {self.window_seconds:g} s window"
            )
        self.last_window_end = self.start_seconds + self.window_count * self.window_seconds
        self.line = KeplerLine(kepler_line) if kepler_line is not None else detect_kepler_line(
            self.client, self.start_seconds, self.last_window_end
        )
        self.container_selection = container_selection
        self.pod_selection = pod_selection
        self.query = build_energy_query(self.line, self.window_seconds, container_selection, pod_selection)
        self.owner_fallback = owner_fallback
        self.gpu = gpu
        self.max_windows_per_chunk = max_windows_per_chunk
        self.max_points_per_chunk = max_points_per_chunk
        self.queries_in_flight = queries_in_flight
        self.progress = progress
        self.gpu_source: GpuSource | None = None
        self.gpu_power_gauge_joules = 0.0

    def chunks(self) -> Iterator[pd.DataFrame]:
        """Each chunk's rows (finite energy only), sorted by (window_start, namespace, pod). A
        reader given a URL closes the client it made when its chunks end: it is read once."""
        client, window_seconds = self.client, self.window_seconds
        # Evaluation times are the window ends: start+W, start+2W, ..., start+n*W.
        first_end = self.start_seconds + window_seconds
        self.gpu_source = choose_gpu_source(client, self.gpu, self.line, self.start_seconds, self.last_window_end)
        read_kepler_gpu = self.gpu_source is not None and (
            self.gpu_source is GpuSource.KEPLER or selection_counts_gpu(self.line, self.container_selection))
        kepler_gpu_query = build_gpu_energy_query(
            self.line, window_seconds, self.container_selection, self.pod_selection) if read_kepler_gpu else None
        # Pods are small integer codes into `pods` (namespace, pod) and `workloads`, so rows carry
        # integers until a chunk's frame is built.
        pod_codes = _PodCodes()
        workloads: list[WorkloadRef] = []
        dcgm_rows = _PodRows.empty()
        if self.gpu_source is GpuSource.DCGM:
            # dcgm-exporter's per-device choice of counter or gauge and its exporter pods span the
            # whole range: read at once (GPU pods only), then cut per chunk below.
            dcgm = read_dcgm_energy(client, split_evaluation_range(
                first_end, self.last_window_end, window_seconds, self.max_windows_per_chunk), window_seconds)
            codes = [pod_codes.code(key) for key in zip(dcgm.namespaces, dcgm.pods)]
            dcgm_rows = _PodRows(np.asarray(codes, dtype=np.int64), dcgm.window_end_seconds, dcgm.energy_joules)
            self.gpu_power_gauge_joules = dcgm.power_gauge_joules
        # Owners are read before the first chunk (an index lookup over the range), so that from
        # then on every request is a chunk's and a failure names the chunk it stopped at.
        resolver = OwnerResolver(load_owner_index(client, self.start_seconds, self.last_window_end), self.owner_fallback)

        windows = min(self.max_windows_per_chunk, self._first_chunk_windows(first_end))
        in_flight: deque[_ChunkQueries] = deque()
        windows_planned = windows_done = 0

        def plan_ahead() -> None:
            """Send the next chunks' queries until `queries_in_flight` chunks are asked for."""
            nonlocal windows_planned
            # One chunk until one has been read: only then is a chunk sized by what it returned.
            limit = self.queries_in_flight if windows_done else 1
            while len(in_flight) < limit and windows_planned < self.window_count:
                count = min(windows, self.window_count - windows_planned)
                chunk = EvaluationChunk(start_seconds=first_end + windows_planned * window_seconds,
                                        end_seconds=first_end + (windows_planned + count - 1) * window_seconds,
                                        step_seconds=window_seconds)
                ask = functools.partial(_ask_in_background, client.range_query_arrays, start_seconds=chunk.start_seconds,
                                        end_seconds=chunk.end_seconds, step_seconds=window_seconds)
                in_flight.append(_ChunkQueries(chunk, count, ask(self.query.promql),
                                               ask(kepler_gpu_query.promql) if kepler_gpu_query is not None else None))
                windows_planned += count

        try:
            with tqdm(total=math.ceil(self.window_count / windows), desc="kepler energy", unit="chunk",
                      disable=not self.progress) as bar:
                plan_ahead()
                while in_flight:
                    asked = in_flight.popleft()
                    chunk = asked.chunk
                    # In chunk order, so pods are numbered and a failure is named as without the queries ahead.
                    cpu = _pod_rows(asked.cpu.result(), self.query, pod_codes)
                    kepler_gpu = (_pod_rows(asked.kepler_gpu.result(), kepler_gpu_query, pod_codes)
                                  if asked.kepler_gpu is not None and kepler_gpu_query is not None else _PodRows.empty())
                    windows_read = asked.windows
                    del asked  # the answers, now rows: not held while the chunk is written
                    # The next chunks' windows: as many as the budget of points allows at the points
                    # per window this chunk returned (the chunks already asked for keep theirs).
                    points_per_window = max(len(cpu.codes), len(kepler_gpu.codes)) / windows_read
                    if points_per_window > 0:
                        windows = max(1, min(self.max_windows_per_chunk, int(self.max_points_per_chunk // points_per_window)))
                    windows_done += windows_read
                    plan_ahead()  # Prometheus evaluates them while this chunk is built and written
                    gpu_rows = kepler_gpu if self.gpu_source is GpuSource.KEPLER else dcgm_rows.between(
                        chunk.start_seconds, chunk.end_seconds)
                    kepler_gpu_inside = kepler_gpu if selection_counts_gpu(self.line, self.container_selection) and \
                        self.gpu_source is not None else _PodRows.empty()
                    rows = _combine(cpu, kepler_gpu_inside, gpu_rows)
                    bar.total = bar.n + 1 + len(in_flight) + math.ceil((self.window_count - windows_planned) / windows)
                    bar.update(1)
                    if windows_done >= self.window_count:
                        bar.total = bar.n
                        bar.refresh()
                    if len(rows.codes):
                        keys = pod_codes.keys
                        workloads.extend(resolver.resolve(namespace, pod) for namespace, pod in keys[len(workloads):])
                        yield self._frame(rows, keys, workloads)
        finally:
            # Stopped early (an error, Ctrl-C, or the consumer closed the generator): nothing more
            # is asked, and the queries still in flight are left to their daemon threads, not
            # waited for (one may be a minute of Prometheus evaluation, or a backoff between
            # retries, which closing our own client ends).
            if self._owns_client:
                self.client.close()

    def _first_chunk_windows(self, first_end: float) -> int:
        """Windows in the first chunk: the budget of points over the pods present at the first
        window (one instant query of the energy query's series count)."""
        found = self.client.instant_query(f"count({self.query.promql})", first_end)
        pods = int(found[0].value) if found and math.isfinite(found[0].value) else 0
        return max(1, self.max_points_per_chunk // pods) if pods else self.max_windows_per_chunk

    def _frame(self, rows: _PodRows, keys: Sequence[tuple[str, str]], workloads: Sequence[WorkloadRef]) -> pd.DataFrame:
        """One chunk's rows as a labels frame: pods looked up by code, finite rows only, in
        (window_start, namespace, pod) order (sorted on integers: a pod's rank among the chunk's)."""
        finite = np.isfinite(rows.energy_joules)
        present, local = np.unique(rows.codes[finite], return_inverse=True)
        by_name = sorted(range(len(present)), key=lambda i: keys[present[i]])
        rank = np.empty(len(present), dtype=np.int64)
        rank[by_name] = np.arange(len(present))
        window_ends = rows.window_end_seconds[finite]
        order = np.lexsort((rank[local], window_ends))
        gpu = rows.gpu_energy_joules
        return _labels_frame(
            window_ends=window_ends[order],
            window_seconds=self.window_seconds,
            codes=local[order],
            namespaces=[keys[code][0] for code in present],
            pods=[keys[code][1] for code in present],
            workload_kinds=[workloads[code].kind for code in present],
            workload_names=[workloads[code].name for code in present],
            energy_joules=rows.energy_joules[finite][order],
            gpu_energy_joules=None if gpu is None else gpu[finite][order],
            kepler_line=self.line.value,
        )


def _ask_in_background(call: Callable[..., list[RangeArrays]], *args: Any, **kwargs: Any) -> Future[list[RangeArrays]]:
    """`call(*args, **kwargs)` on a daemon thread of its own, its answer or error in the future. Not a
    ThreadPoolExecutor: the interpreter joins an executor's threads at exit, so a run stopped by
    Ctrl-C would still wait for every query Prometheus was evaluating. At most
    `MAX_QUERIES_IN_FLIGHT` chunks are asked at once, each a few seconds of work: one thread each
    costs nothing that matters."""
    future: Future[list[RangeArrays]] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(call(*args, **kwargs))
        except BaseException as exc:  # handed to the reader, which raises it in chunk order
            future.set_exception(exc)

    threading.Thread(target=run, name="labels-query", daemon=True).start()
    return future


class _PodCodes:
    """(namespace, pod) -> a small integer, numbered in order of first sight; `keys[code]` is the pod."""

    def __init__(self) -> None:
        self._codes: dict[tuple[str, str], int] = {}
        self.keys: list[tuple[str, str]] = []

    def code(self, key: tuple[str, str]) -> int:
        found = self._codes.get(key)
        if found is None:
            found = self._codes[key] = len(self.keys)
            self.keys.append(key)
        return found


@dataclass(frozen=True)
class _PodRows:
    """Energy rows with pods as codes: one per (series or pod, window end)."""

    codes: np.ndarray
    window_end_seconds: np.ndarray
    energy_joules: np.ndarray
    gpu_energy_joules: np.ndarray | None = None

    @classmethod
    def empty(cls) -> _PodRows:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))

    def between(self, first_end_seconds: float, last_end_seconds: float) -> _PodRows:
        """The rows whose window ends in [first_end, last_end]: one chunk's."""
        if not len(self.codes):
            return self
        inside = (self.window_end_seconds >= first_end_seconds) & (self.window_end_seconds <= last_end_seconds)
        return _PodRows(self.codes[inside], self.window_end_seconds[inside], self.energy_joules[inside],
                        None if self.gpu_energy_joules is None else self.gpu_energy_joules[inside])


def _pod_rows(answer: Sequence[RangeArrays], query: EnergyQuery, pod_codes: _PodCodes) -> _PodRows:
    """One range query's per-pod energy series as rows; new pods get the next codes in `pod_codes`."""
    code_parts: list[np.ndarray] = []
    window_end_parts: list[np.ndarray] = []
    energy_parts: list[np.ndarray] = []
    for series in answer:
        if not len(series.values):
            continue
        code = pod_codes.code(_pod_identity(query, series.labels))
        code_parts.append(np.full(len(series.values), code, dtype=np.int64))
        window_end_parts.append(series.times_seconds)
        energy_parts.append(series.values)
    if not energy_parts:
        return _PodRows.empty()
    return _PodRows(np.concatenate(code_parts), np.concatenate(window_end_parts), np.concatenate(energy_parts))


@dataclass(frozen=True)
class _ChunkQueries:
    """One chunk's range queries, sent and not yet read."""

    chunk: EvaluationChunk
    windows: int
    cpu: Future[list[RangeArrays]]
    kepler_gpu: Future[list[RangeArrays]] | None


def _combine(cpu: _PodRows, kepler_gpu_inside: _PodRows, gpu: _PodRows) -> _PodRows:
    """One row per (pod, window): the CPU side, less the GPU energy Kepler counted inside it,
    plus the GPU energy of the chosen source. Without GPU rows the CPU rows pass unchanged."""
    if not len(gpu.codes) and not len(kepler_gpu_inside.codes):
        return _PodRows(cpu.codes, cpu.window_end_seconds, cpu.energy_joules, np.zeros(len(cpu.codes)))
    parts = [
        (cpu, 1.0, 0.0),  # (rows, sign on the CPU side, share on the GPU side)
        (kepler_gpu_inside, -1.0, 0.0),
        (gpu, 0.0, 1.0),
    ]
    table = pd.concat(
        [
            pd.DataFrame(
                {
                    "code": rows.codes,
                    "window_end": rows.window_end_seconds,
                    "cpu": cpu_sign * rows.energy_joules,
                    "gpu": gpu_share * rows.energy_joules,
                }
            )
            for rows, cpu_sign, gpu_share in parts
        ],
        ignore_index=True,
    )
    table = table[np.isfinite(table["cpu"].to_numpy()) & np.isfinite(table["gpu"].to_numpy())]
    sums = table.groupby(["code", "window_end"], sort=False)[["cpu", "gpu"]].sum()
    # Kepler's total minus its own GPU part: exact up to rounding, never below zero.
    cpu_joules = np.maximum(sums["cpu"].to_numpy(), 0.0) if len(kepler_gpu_inside.codes) else sums["cpu"].to_numpy()
    gpu_joules = sums["gpu"].to_numpy()
    return _PodRows(
        codes=sums.index.get_level_values(0).to_numpy(dtype=np.int64),
        window_end_seconds=sums.index.get_level_values(1).to_numpy(dtype=np.float64),
        energy_joules=cpu_joules + gpu_joules,
        gpu_energy_joules=gpu_joules,
    )


def _labels_frame(
    *,
    window_ends: np.ndarray,
    window_seconds: int,
    codes: np.ndarray,
    namespaces: Sequence[str],
    pods: Sequence[str],
    workload_kinds: Sequence[str],
    workload_names: Sequence[str],
    energy_joules: np.ndarray,
    gpu_energy_joules: np.ndarray | None,
    kepler_line: str,
) -> pd.DataFrame:
    """Rows from per-row pod codes; the per-pod columns are looked up by code."""

    def per_row(values: Sequence[str]) -> pd.Series:
        # Each pod's text once, taken per row by Arrow: no Python string per row.
        return pd.Series(pd.array(list(values), dtype="str").take(codes) if len(codes) else [], dtype="str")

    # Window starts to the millisecond, Prometheus' own resolution.
    window_start_ms = np.round((window_ends - window_seconds) * 1000.0).astype("int64")
    energy = np.asarray(energy_joules, dtype="float64")
    return pd.DataFrame(
        {
            "window_start": pd.to_datetime(window_start_ms, unit="ms", utc=True).astype("datetime64[ns, UTC]"),
            "window_seconds": np.full(len(energy), window_seconds, dtype="int64"),
            "namespace": per_row(namespaces),
            "pod": per_row(pods),
            "workload_kind": per_row(workload_kinds),
            "workload_name": per_row(workload_names),
            "energy_joules": energy,
            "power_watts": energy / window_seconds,
            "kepler_line": pd.Series([kepler_line] * len(energy), dtype="str"),
            GPU_ENERGY_COLUMN: (
                np.zeros(len(energy)) if gpu_energy_joules is None else np.asarray(gpu_energy_joules, dtype="float64")
            ),
        },
        columns=list(OUTPUT_COLUMNS),
    )


def _pod_identity(query: EnergyQuery, labels: Mapping[str, str]) -> tuple[str, str]:
    try:
        return labels[query.namespace_label], labels[query.pod_label]
    except KeyError as exc:
        raise ValueError(
            f"Kepler series without {exc.args[0]!r} label in the result of {query.promql!r}: {dict(labels)!r}"
        ) from None


def empty_labels_frame(window_seconds: int = DEFAULT_WINDOW_SECONDS) -> pd.DataFrame:
    """A labels table with no row but the right columns and dtypes."""
    return _labels_frame(
        window_ends=np.zeros(0),
        window_seconds=window_seconds,
        codes=np.zeros(0, dtype=np.int64),
        namespaces=[],
        pods=[],
        workload_kinds=[],
        workload_names=[],
        energy_joules=np.zeros(0),
        gpu_energy_joules=None,
        kepler_line="",
    )


# -- writing ---------------------------------------------------------------------------------


def write_labels(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the labels table to Parquet atomically: a reader sees the old file or the whole
    new one, never a half-written file (temporary file in the same directory, then rename).
    `gpu_energy_joules` is written when the table has it."""
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"labels table lacks columns {missing}")
    columns = [c for c in OUTPUT_COLUMNS if c in frame.columns]
    return write_atomically(path, lambda temp: frame[columns].to_parquet(temp, index=False))


@dataclass
class _StreamTally:
    """What `run_labels` reports, added up chunk by chunk (chunks never share a window)."""

    rows: int = 0
    windows: int = 0
    energy_joules: float = 0.0
    gpu_energy_joules: float = 0.0
    pods: set[tuple[str, str]] | None = None

    def add(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        self.windows += int(frame["window_start"].nunique())
        self.energy_joules += float(frame["energy_joules"].sum())
        self.gpu_energy_joules += float(frame[GPU_ENERGY_COLUMN].sum())
        pods = self.pods if self.pods is not None else set()
        pods.update(frame[["namespace", "pod"]].drop_duplicates().itertuples(index=False, name=None))
        self.pods = pods


def write_label_chunks(frames: Iterable[pd.DataFrame], path: str | os.PathLike[str],
                       window_seconds: int = DEFAULT_WINDOW_SECONDS) -> _StreamTally:
    """Write labels frames, one Parquet row group each, to `path` atomically, as they arrive:
    only one chunk is in memory at a time. The file reads back as `write_labels` of the frames
    put together would (same columns, dtypes and pandas metadata). If the frames stop with an
    exception (Prometheus gone for good, Ctrl-C), the temporary file is removed and `path` keeps
    its old content, or stays absent."""
    tally = _StreamTally()

    def write(temp: Path) -> None:
        writer: pq.ParquetWriter | None = None
        try:
            for frame in frames:
                if not len(frame):
                    continue
                table = pa.Table.from_pandas(frame[list(OUTPUT_COLUMNS)], preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(temp, table.schema)
                writer.write_table(table.cast(writer.schema))
                tally.add(frame)
            if writer is None:  # no row at all: the empty table, as before
                empty_labels_frame(window_seconds).to_parquet(temp, index=False)
        finally:
            if writer is not None:
                writer.close()

    write_atomically(path, write)
    return tally


# -- command line ----------------------------------------------------------------------------


def run_labels(
    prom_url: str,
    start: str | float | datetime,
    end: str | float | datetime,
    step: str | float = "60s",
    out: str | os.PathLike[str] = "labels.parquet",
    *,
    kepler_line: str | None = None,
    modes: Sequence[str] | None = None,
    components: Sequence[str] | None = None,
    zones: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    chunk: str | float = "12h",
    timeout: str | float = "30s",
    progress: bool = True,
    owner_fallback: OwnerFallback | None = None,
    gpu: str = GpuChoice.AUTO.value,
    retry: RetryPolicy = RetryPolicy(),
    max_points_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK_REQUEST,
    queries_in_flight: int = DEFAULT_QUERIES_IN_FLIGHT,
) -> LabelsRunSummary:
    """`energetiscope train labels`: read the labels chunk by chunk and stream them to `out`.

    Plain strings in, so a click command can pass its options straight through: times as ISO 8601
    or Unix seconds, durations as `60s`, `5m`, `1h30m` or plain seconds. `modes`/`components`
    apply to Kepler <= 0.9, `zones`/`states` to Kepler >= 0.10 (`states=("all",)` reads every state).
    `gpu` is auto, dcgm, kepler or off (`trainer.dcgm`). A request Prometheus does not answer is
    tried again as `retry` says. Each chunk's rows go to the output's temporary file as one row
    group (`write_label_chunks`), so memory follows a chunk (`max_points_per_chunk`), not the
    cluster; the file replaces `out` only when every read succeeded.
    """
    step_seconds = parse_duration_seconds(step)
    chunk_seconds = parse_duration_seconds(chunk)
    container_defaults = ContainerEnergySelection()
    pod_defaults = PodEnergySelection()
    container_selection = ContainerEnergySelection(
        components=tuple(components) if components else container_defaults.components,
        modes=tuple(modes) if modes else container_defaults.modes,
    )
    pod_selection = PodEnergySelection(
        zones=tuple(zones) if zones else pod_defaults.zones,
        states=None if states and tuple(states) == ("all",) else (tuple(states) if states else pod_defaults.states),
    )
    reader = LabelsReader(
        prom_url,
        start,
        end,
        step_seconds,
        kepler_line=kepler_line,
        container_selection=container_selection,
        pod_selection=pod_selection,
        owner_fallback=owner_fallback,
        gpu=gpu,
        max_windows_per_chunk=max(1, int(chunk_seconds // step_seconds)),
        max_points_per_chunk=max_points_per_chunk,
        queries_in_flight=queries_in_flight,
        timeout_seconds=parse_duration_seconds(timeout),
        retry=retry,
        progress=progress,
    )
    # Closed as soon as writing stops, however it stops: a write that fails would otherwise leave
    # the generator suspended (and its client open) for as long as the caller keeps the traceback.
    with contextlib.closing(reader.chunks()) as frames:
        tally = write_label_chunks(frames, out, reader.window_seconds)
    return LabelsRunSummary(
        path=Path(out),
        row_count=tally.rows,
        pod_count=len(tally.pods or ()),
        window_count=tally.windows,
        kepler_line=reader.line.value if tally.rows else None,
        total_energy_joules=tally.energy_joules,
        gpu_source=reader.gpu_source.value if reader.gpu_source is not None else None,
        gpu_energy_joules=tally.gpu_energy_joules,
        gpu_power_gauge_joules=reader.gpu_power_gauge_joules,
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration_seconds(value: str | float) -> float:
    """`60s`, `5m`, `1h30m`, `1.5h`, `250ms` or a plain number of seconds -> seconds (> 0)."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (use e.g. 60s, 5m, 1h30m)") from None
            seconds = sum(float(n) * _DURATION_UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_time_seconds(value: str | float | datetime) -> float:
    """A datetime (naive = UTC), Unix seconds, or an ISO 8601 string (`2025-10-30T08:00:00Z`,
    naive = UTC) -> Unix seconds."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use ISO 8601 like 2025-10-30T08:00:00Z, or Unix seconds)") from None
    return parse_time_seconds(moment)
