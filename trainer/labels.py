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
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
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
from trainer.owners import OwnerFallback, OwnerResolver, load_owner_index
from trainer.prometheus import (
    DEFAULT_MAX_POINTS_PER_CHUNK,
    DEFAULT_TIMEOUT_SECONDS,
    NO_RETRY,
    EvaluationChunk,
    PrometheusClient,
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
    *,
    kepler_line: KeplerLine | str | None = None,
    container_selection: ContainerEnergySelection | None = None,
    pod_selection: PodEnergySelection | None = None,
    owner_fallback: OwnerFallback | None = None,
    gpu: GpuChoice | str = GpuChoice.AUTO,
    max_windows_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    retry: RetryPolicy = NO_RETRY,
    progress: bool = False,
) -> LabelsCollection:
    """Per-pod energy and power per window between start and end (see the module docstring).

    prom_url: the Prometheus base URL, or a ready `PrometheusClient`.
    start, end: datetimes (naive ones are taken as UTC), Unix seconds, or strings accepted by
        `parse_time_seconds`.
    step_seconds: the window length W; windows start at start, start+W, ...
    kepler_line: force a Kepler line; by default it is detected from the metrics present.
    container_selection / pod_selection: which Kepler components/modes or zones/states to sum.
    owner_fallback: called for pods unknown to kube-state-metrics (the Kubernetes API seam).
    gpu: where GPU energy comes from: auto (dcgm-exporter, else Kepler's GPU series), dcgm,
        kepler, or off (see `trainer.dcgm`).
    max_windows_per_chunk: windows per range query; long ranges become several queries.
    retry: when Prometheus does not answer, how often to try a request again (with a URL; a ready
        client brings its own). Chunks already read are kept: the run resumes where it stopped.
    progress: show a progress bar over the chunks (on stderr).
    """
    client = prom_url if isinstance(prom_url, PrometheusClient) else PrometheusClient(
        prom_url, timeout_seconds=timeout_seconds, retry=retry
    )
    start_seconds = parse_time_seconds(start)
    end_seconds = parse_time_seconds(end)
    if not step_seconds >= 1 or not float(step_seconds).is_integer():
        raise ValueError(f"the window (step) must be a whole number of seconds >= 1, got {step_seconds!r}")
    window_seconds = int(step_seconds)
    window_count = int(math.floor((end_seconds - start_seconds) / window_seconds + 1e-9))
    if window_count < 1:
        raise ValueError(
            f"the range {start_seconds:.0f}..{end_seconds:.0f} is shorter than one {window_seconds:g} s window"
        )
    last_window_end = start_seconds + window_count * window_seconds

    line = KeplerLine(kepler_line) if kepler_line is not None else detect_kepler_line(
        client, start_seconds, last_window_end
    )
    query = build_energy_query(line, window_seconds, container_selection, pod_selection)

    # Evaluation times are the window ends: start+W, start+2W, ..., start+n*W.
    chunks = split_evaluation_range(
        start_seconds + window_seconds, last_window_end, window_seconds, max_windows_per_chunk
    )
    # Rows are gathered as arrays per series; pods are small integer codes into `pod_keys` so a
    # week of a large cluster does not become tens of millions of Python strings.
    pod_codes: dict[tuple[str, str], int] = {}
    with tqdm(total=len(chunks), desc="kepler energy", unit="chunk", disable=not progress) as bar:
        cpu = _read_pod_energy(client, query, chunks, window_seconds, pod_codes, bar.update)

    gpu_source = choose_gpu_source(client, gpu, line, start_seconds, last_window_end)
    gpu_rows = _PodRows.empty()
    kepler_gpu_inside = _PodRows.empty()  # Kepler's GPU energy inside the CPU-side query
    power_gauge_joules = 0.0
    if gpu_source is not None:
        if gpu_source is GpuSource.KEPLER or selection_counts_gpu(line, container_selection):
            kepler_gpu_query = build_gpu_energy_query(line, window_seconds, container_selection, pod_selection)
            kepler_gpu = _read_pod_energy(client, kepler_gpu_query, chunks, window_seconds, pod_codes)
            gpu_rows = kepler_gpu if gpu_source is GpuSource.KEPLER else gpu_rows
            kepler_gpu_inside = kepler_gpu if selection_counts_gpu(line, container_selection) else kepler_gpu_inside
        if gpu_source is GpuSource.DCGM:
            dcgm = read_dcgm_energy(client, chunks, window_seconds)
            codes = [pod_codes.setdefault(key, len(pod_codes)) for key in zip(dcgm.namespaces, dcgm.pods)]
            gpu_rows = _PodRows(np.asarray(codes, dtype=np.int64), dcgm.window_end_seconds, dcgm.energy_joules)
            power_gauge_joules = dcgm.power_gauge_joules

    rows = _combine(cpu, kepler_gpu_inside, gpu_rows)
    if not len(rows.codes):
        return LabelsCollection(empty_labels_frame(window_seconds), gpu_source, power_gauge_joules)

    resolver = OwnerResolver(load_owner_index(client, start_seconds, last_window_end), owner_fallback)
    pod_keys = list(pod_codes)
    workloads = [resolver.resolve(namespace, pod) for namespace, pod in pod_keys]
    frame = _labels_frame(
        window_ends=rows.window_end_seconds,
        window_seconds=window_seconds,
        codes=rows.codes,
        namespaces=[namespace for namespace, _ in pod_keys],
        pods=[pod for _, pod in pod_keys],
        workload_kinds=[w.kind for w in workloads],
        workload_names=[w.name for w in workloads],
        energy_joules=rows.energy_joules,
        gpu_energy_joules=rows.gpu_energy_joules,
        kepler_line=line.value,
    )
    frame = frame[np.isfinite(frame["energy_joules"].to_numpy())]
    frame = frame.sort_values(["window_start", "namespace", "pod"], kind="stable").reset_index(drop=True)
    return LabelsCollection(frame, gpu_source, power_gauge_joules)


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


def _read_pod_energy(
    client: PrometheusClient,
    query: EnergyQuery,
    chunks: Sequence[EvaluationChunk],
    window_seconds: int,
    pod_codes: dict[tuple[str, str], int],
    chunk_done: Callable[[int], object] | None = None,
) -> _PodRows:
    """Run a per-pod energy query over the chunks; new pods get the next codes in `pod_codes`."""
    code_parts: list[np.ndarray] = []
    window_end_parts: list[np.ndarray] = []
    energy_parts: list[np.ndarray] = []
    for chunk in chunks:
        for series in client.range_query(query.promql, chunk.start_seconds, chunk.end_seconds, window_seconds):
            if not series.points:
                continue
            code = pod_codes.setdefault(_pod_identity(query, series.labels), len(pod_codes))
            points = np.asarray(series.points, dtype=np.float64)
            code_parts.append(np.full(len(points), code, dtype=np.int64))
            window_end_parts.append(points[:, 0])
            energy_parts.append(points[:, 1])
        if chunk_done is not None:
            chunk_done(1)
    if not energy_parts:
        return _PodRows.empty()
    return _PodRows(np.concatenate(code_parts), np.concatenate(window_end_parts), np.concatenate(energy_parts))


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
        return pd.Series(np.asarray(values, dtype=object)[codes] if len(codes) else [], dtype="str")

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
) -> LabelsRunSummary:
    """`energetiscope train labels`: collect the labels table and write it to `out`.

    Plain strings in, so a click command can pass its options straight through: times as ISO 8601
    or Unix seconds, durations as `60s`, `5m`, `1h30m` or plain seconds. `modes`/`components`
    apply to Kepler <= 0.9, `zones`/`states` to Kepler >= 0.10 (`states=("all",)` reads every state).
    `gpu` is auto, dcgm, kepler or off (`trainer.dcgm`). A request Prometheus does not answer is
    tried again as `retry` says; nothing is written unless every read succeeded.
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
    collection = collect_labels_report(
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
        timeout_seconds=parse_duration_seconds(timeout),
        retry=retry,
        progress=progress,
    )
    frame = collection.frame
    path = write_labels(frame, out)
    return LabelsRunSummary(
        path=path,
        row_count=len(frame),
        pod_count=int(frame[["namespace", "pod"]].drop_duplicates().shape[0]),
        window_count=int(frame["window_start"].nunique()),
        kepler_line=str(frame["kepler_line"].iloc[0]) if len(frame) else None,
        total_energy_joules=float(frame["energy_joules"].sum()),
        gpu_source=collection.gpu_source.value if collection.gpu_source is not None else None,
        gpu_energy_joules=float(frame[GPU_ENERGY_COLUMN].sum()),
        gpu_power_gauge_joules=collection.gpu_power_gauge_joules,
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
