"""The trainer's `labels` step: measured energy and power per pod per time window, from Kepler
metrics in Prometheus, with each pod's owning workload.

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
    energy_joules   float64              energy in the window
    power_watts     float64              energy_joules / window_seconds
    kepler_line     str                  "kepler-0.7" (Kepler <= 0.9) or "kepler-0.10" (>= 0.10)

A pod appears in a window only if one of its counters has two samples inside it, so its first
partial window (and its last, after its final scrape) is not in the table.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from trainer.atomic import write_atomically
from trainer.kepler import (
    ContainerEnergySelection,
    EnergyQuery,
    KeplerLine,
    PodEnergySelection,
    build_energy_query,
    detect_kepler_line,
)
from trainer.owners import OwnerFallback, OwnerResolver, load_owner_index
from trainer.prometheus import (
    DEFAULT_MAX_POINTS_PER_CHUNK,
    DEFAULT_TIMEOUT_SECONDS,
    PrometheusClient,
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


# -- collecting ------------------------------------------------------------------------------


def collect_labels(
    prom_url: str | PrometheusClient,
    start: datetime | float | str,
    end: datetime | float | str,
    step_seconds: float = DEFAULT_WINDOW_SECONDS,
    *,
    kepler_line: KeplerLine | str | None = None,
    container_selection: ContainerEnergySelection | None = None,
    pod_selection: PodEnergySelection | None = None,
    owner_fallback: OwnerFallback | None = None,
    max_windows_per_chunk: int = DEFAULT_MAX_POINTS_PER_CHUNK,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-pod energy and power per window between start and end (see the module docstring).

    prom_url: the Prometheus base URL, or a ready `PrometheusClient`.
    start, end: datetimes (naive ones are taken as UTC), Unix seconds, or strings accepted by
        `parse_time_seconds`.
    step_seconds: the window length W; windows start at start, start+W, ...
    kepler_line: force a Kepler line; by default it is detected from the metrics present.
    container_selection / pod_selection: which Kepler components/modes or zones/states to sum.
    owner_fallback: called for pods unknown to kube-state-metrics (the Kubernetes API seam).
    max_windows_per_chunk: windows per range query; long ranges become several queries.
    progress: show a progress bar over the chunks (on stderr).
    """
    client = prom_url if isinstance(prom_url, PrometheusClient) else PrometheusClient(
        prom_url, timeout_seconds=timeout_seconds
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
    code_parts: list[np.ndarray] = []
    window_end_parts: list[np.ndarray] = []
    energy_parts: list[np.ndarray] = []
    with tqdm(total=len(chunks), desc="kepler energy", unit="chunk", disable=not progress) as bar:
        for chunk in chunks:
            for series in client.range_query(query.promql, chunk.start_seconds, chunk.end_seconds, window_seconds):
                if not series.points:
                    continue
                code = pod_codes.setdefault(_pod_identity(query, series.labels), len(pod_codes))
                points = np.asarray(series.points, dtype=np.float64)
                code_parts.append(np.full(len(points), code, dtype=np.int64))
                window_end_parts.append(points[:, 0])
                energy_parts.append(points[:, 1])
            bar.update(1)

    if not energy_parts:
        return empty_labels_frame(window_seconds)

    resolver = OwnerResolver(load_owner_index(client, start_seconds, last_window_end), owner_fallback)
    pod_keys = list(pod_codes)
    workloads = [resolver.resolve(namespace, pod) for namespace, pod in pod_keys]
    codes = np.concatenate(code_parts)
    frame = _labels_frame(
        window_ends=np.concatenate(window_end_parts),
        window_seconds=window_seconds,
        codes=codes,
        namespaces=[namespace for namespace, _ in pod_keys],
        pods=[pod for _, pod in pod_keys],
        workload_kinds=[w.kind for w in workloads],
        workload_names=[w.name for w in workloads],
        energy_joules=np.concatenate(energy_parts),
        kepler_line=line.value,
    )
    frame = frame[np.isfinite(frame["energy_joules"].to_numpy())]
    return frame.sort_values(["window_start", "namespace", "pod"], kind="stable").reset_index(drop=True)


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
        },
        columns=list(LABEL_COLUMNS),
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
        kepler_line="",
    )


# -- writing ---------------------------------------------------------------------------------


def write_labels(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the labels table to Parquet atomically: a reader sees the old file or the whole
    new one, never a half-written file (temporary file in the same directory, then rename)."""
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"labels table lacks columns {missing}")
    columns = list(LABEL_COLUMNS)
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
) -> LabelsRunSummary:
    """`energetiscope train labels`: collect the labels table and write it to `out`.

    Plain strings in, so a click command can pass its options straight through: times as ISO 8601
    or Unix seconds, durations as `60s`, `5m`, `1h30m` or plain seconds. `modes`/`components`
    apply to Kepler <= 0.9, `zones`/`states` to Kepler >= 0.10 (`states=("all",)` reads every state).
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
    frame = collect_labels(
        prom_url,
        start,
        end,
        step_seconds,
        kepler_line=kepler_line,
        container_selection=container_selection,
        pod_selection=pod_selection,
        owner_fallback=owner_fallback,
        max_windows_per_chunk=max(1, int(chunk_seconds // step_seconds)),
        timeout_seconds=parse_duration_seconds(timeout),
        progress=progress,
    )
    path = write_labels(frame, out)
    return LabelsRunSummary(
        path=path,
        row_count=len(frame),
        pod_count=int(frame[["namespace", "pod"]].drop_duplicates().shape[0]),
        window_count=int(frame["window_start"].nunique()),
        kepler_line=str(frame["kepler_line"].iloc[0]) if len(frame) else None,
        total_energy_joules=float(frame["energy_joules"].sum()),
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
