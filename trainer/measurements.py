"""The trainer's `dataset` step from a measurement table instead of Kepler labels.

Teams often have measured power before Kepler has any history: from a lab, a benchmark, another
exporter. This module reads such a table (CSV or Parquet), checks every row, joins the rows to
workload specs (manifests read with `webhook.model.manifests.read_manifests`, or `collect`'s
NDJSON) and writes the same dataset the Kepler path writes (`trainer.dataset`), so `train fit`
and `train evaluate` take it unchanged.

Columns (a header row for CSV):

    namespace, workload_kind, workload_name   required: the workload's key, kind one of
                                              webhook.model.schema.WORKLOAD_KINDS
    power_watts                               mean power of one pod (W), > 0
    energy_joules + duration_seconds          instead of power_watts: power = energy / duration
    group        optional  cross-validation group (e.g. a model family): `train fit` never puts
                           one group in both the training and the test side of a fold
    pods         optional  pods the mean was measured over (integer >= 1; default 1)
    windows      optional  measurement windows behind the mean (integer >= 1), see below
    source       optional  where the row comes from (default: the table's file name)

Other columns are ignored and listed in the summary. An optional column, once present, must be
filled in every row.

How a row becomes a dataset row. The dataset holds pod-windows: energy over a window of one pod.
A row of power P W becomes one dataset row: pod `<Kind>/<name>`, a window of 1 s starting at the
Unix epoch (a table carries no time) holding P x 1 s = P J, with `pod_count` = pods and
`window_count` = windows. `trainer.targets.build_targets` divides the energy by the window's
seconds (P J / 1 s, exact in floating point, as splitting P over several windows would not be)
and counts `pod_count` pods and `window_count` windows, so the target is `power_watts = P`
exactly. A table's duration is not kept: the target is a mean power, whatever the measurement
lasted. `window_count` is what `train fit`'s `--min-active-windows` gate (default 5, a guard
against noisy means of Kepler's 1-minute windows) counts: without a `windows` column a row is a
mean the table vouches for and stands for that default, 5 windows, so the default fit keeps it;
with one, the gate judges each row by it (the summary counts the rows it will leave out). The
dataset's `group` and `source` columns carry the row's group and source.

Bad input is an error, never a dropped row: a missing required column, a missing, negative,
zero, NaN, infinite or non-numeric power (or energy or duration), a non-integer or < 1 pods or
windows, an empty key field or group, a kind the webhook does not predict for, a key that
repeats an earlier row's. The error (`MeasurementError`) names the file, the row (a 1-based data
row, the header not counted, and for CSV also the 1-based line of the file) and the column. Rows
without a spec are not errors: they are counted by reason in the summary, as in the Kepler join.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from trainer.collect import read_requests
from trainer.dataset import EXAMPLES_PER_REASON, JoinSummary, build_dataset, write_dataset, write_summary
from trainer.labels import LABEL_COLUMNS
from trainer.targets import DEFAULT_MIN_ACTIVE_WINDOWS
from webhook.files import NotUtf8Error, utf8_text
from webhook.model.manifests import ManifestError, manifest_texts, read_manifests
from webhook.model.schema import WORKLOAD_KINDS, InferenceRequest

KEY_COLUMNS: tuple[str, ...] = ("namespace", "workload_kind", "workload_name")
POWER_COLUMN = "power_watts"
ENERGY_COLUMN = "energy_joules"
DURATION_COLUMN = "duration_seconds"
GROUP_COLUMN = "group"
# More than any one machine draws (eight 1,200 W GPUs and their host are ~12 kW): a pod's mean power
# above it is a unit slip (mW, J for W) or a duration of next to nothing, not a measurement.
MAX_POD_WATTS = 100_000.0
# A number as a measurement file writes it: ASCII digits, a point, an exponent. float() also takes
# "1_000" and other scripts' digits, which no exporter writes and a typo can.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)",
                           re.IGNORECASE)
PODS_COLUMN = "pods"
WINDOWS_COLUMN = "windows"
SOURCE_COLUMN = "source"
OPTIONAL_COLUMNS: tuple[str, ...] = (GROUP_COLUMN, PODS_COLUMN, WINDOWS_COLUMN, SOURCE_COLUMN)
MEASUREMENT_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, POWER_COLUMN, ENERGY_COLUMN, DURATION_COLUMN, *OPTIONAL_COLUMNS)

MEASUREMENT_WINDOW_START = pd.Timestamp(0, tz="UTC")  # a table carries no time
MEASUREMENT_WINDOW_SECONDS = 1
DEFAULT_WINDOW_COUNT = DEFAULT_MIN_ACTIVE_WINDOWS
PARQUET_MAGIC = b"PAR1"


class MeasurementError(ValueError):
    """A measurement table that cannot be used; the message names file, row and column."""

    def __init__(self, file: str, problem: str, *, row: int | None = None, line: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.line, self.column, self.problem = file, row, line, column, problem
        where = [file]
        if row is not None:
            where.append(f"data row {row} (1-based, header not counted" + (f"; line {line} of the file)" if line else ")"))
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{': '.join(where)}: {problem}")


class ManifestReadError(ValueError):
    """Manifests that cannot be read, or workload objects in them that cannot be extracted."""


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawTable:
    """A measurement table as read: its header and, per data row, its cells (text for CSV,
    Python values for Parquet, None where empty), its 1-based data row number and the file line
    it starts on (CSV only). A blank CSV line holds no row but keeps its number, as in a
    spreadsheet."""

    file: str
    file_format: str  # "csv" or "parquet"
    columns: list[str]
    rows: list[dict[str, object]]
    row_numbers: list[int]
    lines: list[int | None]


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC


def _read_csv(path: Path, file: str) -> RawTable:
    try:
        text = utf8_text(path.read_bytes(), file)
    except NotUtf8Error as exc:
        raise MeasurementError(file, str(exc).removeprefix(f"{file}: ")) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise MeasurementError(file, "the file is empty: a header row is needed")
        columns = [name.strip() for name in header]
        rows: list[dict[str, object]] = []
        row_numbers: list[int] = []
        lines: list[int | None] = []
        line = reader.line_num + 1
        for row_number, cells in enumerate(reader, start=1):
            if any(cell.strip() for cell in cells):  # a blank line holds no measurement
                if len(cells) != len(columns):
                    raise MeasurementError(file, f"{len(cells)} cells where the header has {len(columns)} columns",
                                           row=row_number, line=line)
                rows.append({c: (v.strip() or None) for c, v in zip(columns, cells)})
                row_numbers.append(row_number)
                lines.append(line)
            line = reader.line_num + 1
    return RawTable(file, "csv", columns, rows, row_numbers, lines)


def _read_parquet(path: Path, file: str) -> RawTable:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for unreadable files
        raise MeasurementError(file, f"not a readable Parquet file: {exc}") from None
    columns = [name.strip() for name in table.column_names]
    values = table.to_pydict()  # nulls as None, NaN as NaN: both reach the checks as they are
    rows = [{c: values[name][i] for c, name in zip(columns, table.column_names)} for i in range(table.num_rows)]
    return RawTable(file, "parquet", columns, rows, list(range(1, len(rows) + 1)), [None] * len(rows))


def read_measurement_table(path: str | os.PathLike[str]) -> RawTable:
    """A CSV or Parquet table (Parquet recognised by its magic bytes, whatever the extension)."""
    file, source = str(path), Path(path)
    if not source.is_file():
        raise MeasurementError(file, "no such file")
    table = _read_parquet(source, file) if _is_parquet(source) else _read_csv(source, file)
    duplicated = sorted({c for c in table.columns if table.columns.count(c) > 1})
    if duplicated:
        raise MeasurementError(file, f"columns {duplicated} appear more than once in the header")
    return table


# -- checking rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One checked row: a workload's measured mean power per pod."""

    namespace: str
    workload_kind: str
    workload_name: str
    power_watts: float
    pod_count: int
    window_count: int
    source: str
    group: str | None
    row: int  # 1-based data row

    @property
    def key(self) -> tuple[str, str, str]:
        return self.namespace, self.workload_kind, self.workload_name

    @property
    def pod(self) -> str:
        """The pod name standing for the row: `<Kind>/<name>` (a Kubernetes name never holds a
        `/`, so no real pod, nor another kind's workload of the same name, shares it)."""
        return f"{self.workload_kind}/{self.workload_name}"


@dataclass(frozen=True)
class _Cell:
    table: RawTable
    index: int  # position in RawTable.rows
    column: str

    def fail(self, problem: str) -> MeasurementError:
        return MeasurementError(self.table.file, problem, row=self.table.row_numbers[self.index], line=self.table.lines[self.index],
                                column=self.column)

    @property
    def value(self) -> object:
        return self.table.rows[self.index].get(self.column)

    def text(self) -> str:
        value = self.value
        if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
            raise self.fail("empty")
        return str(value).strip()

    def _finite(self, wanted: str) -> float:
        """A finite number, whatever its sign."""
        value = self.value
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.fail(f"empty: {wanted} is needed")
        if isinstance(value, bool) or (isinstance(value, str) and not _PLAIN_NUMBER.fullmatch(value.strip())):
            raise self.fail(f"{value!r} is not a number")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise self.fail(f"{value!r} is not a number") from None
        if math.isnan(number):
            raise self.fail(f"{value!r} is NaN: {wanted} is needed")
        if math.isinf(number):
            raise self.fail(f"{value!r} is infinite")
        return number

    def number(self, unit: str) -> float:
        """A positive finite number."""
        number, value = self._finite(f"a value in {unit}"), self.value
        if number < 0:
            raise self.fail(f"{value!r} is negative: it must be > 0 {unit}")
        if number == 0:
            raise self.fail(f"{value!r} is zero: it must be > 0 {unit} (train fit reads 0 J as a pod not "
                            f"running, and the model learns log power)")
        return number

    def count(self) -> int:
        """A whole number >= 1 (written as 3 or 3.0)."""
        number = self._finite("a whole number >= 1")
        if number != int(number) or number < 1:
            raise self.fail(f"{self.value!r} is not a whole number >= 1")
        return int(number)


@dataclass(frozen=True)
class CheckedTable:
    measurements: list[Measurement]
    power_from: str  # which columns gave the power
    ignored_columns: list[str]


def _power_columns(table: RawTable) -> tuple[str, ...]:
    has_power = POWER_COLUMN in table.columns
    energy_columns = [c for c in (ENERGY_COLUMN, DURATION_COLUMN) if c in table.columns]
    if has_power and energy_columns:
        raise MeasurementError(table.file, f"both {POWER_COLUMN} and {', '.join(energy_columns)}: give "
                               f"{POWER_COLUMN}, or {ENERGY_COLUMN} and {DURATION_COLUMN}, not both",
                               column=POWER_COLUMN)
    if has_power:
        return (POWER_COLUMN,)
    if not energy_columns:
        raise MeasurementError(table.file, f"missing column: {POWER_COLUMN} (or {ENERGY_COLUMN} and "
                               f"{DURATION_COLUMN}) is needed", column=POWER_COLUMN)
    for needed in (ENERGY_COLUMN, DURATION_COLUMN):
        if needed not in table.columns:
            raise MeasurementError(table.file, f"missing column: {ENERGY_COLUMN} needs {DURATION_COLUMN} beside it",
                                   column=needed)
    return ENERGY_COLUMN, DURATION_COLUMN


def _measurement(table: RawTable, index: int, power_columns: Sequence[str]) -> Measurement:
    def cell(column: str) -> _Cell:
        return _Cell(table, index, column)

    namespace, kind, name = (cell(c).text() for c in KEY_COLUMNS)
    if kind not in WORKLOAD_KINDS:
        raise cell("workload_kind").fail(f"{kind!r} is not a workload kind EnergetiScope predicts for "
                                         f"({', '.join(WORKLOAD_KINDS)}; the spelling is the API's)")
    if tuple(power_columns) == (POWER_COLUMN,):
        power_watts = cell(POWER_COLUMN).number("W")
        if power_watts > MAX_POD_WATTS:
            raise cell(POWER_COLUMN).fail(f"{power_watts:g} W is more than any one machine draws ({MAX_POD_WATTS:,.0f} W): "
                                          f"the mean power of one pod, in W, is needed")
    else:
        power_watts = cell(ENERGY_COLUMN).number("J") / cell(DURATION_COLUMN).number("s")
        if not math.isfinite(power_watts) or power_watts <= 0:
            raise cell(ENERGY_COLUMN).fail(f"energy / duration is {power_watts!r} W, not a positive finite power")
        if power_watts > MAX_POD_WATTS:
            raise cell(DURATION_COLUMN).fail(f"energy / duration is {power_watts:g} W, more than any one machine draws "
                                             f"({MAX_POD_WATTS:,.0f} W): one pod's joules over the seconds they took")
    present = set(table.columns)
    return Measurement(
        namespace=namespace, workload_kind=kind, workload_name=name, power_watts=power_watts,
        pod_count=cell(PODS_COLUMN).count() if PODS_COLUMN in present else 1,
        window_count=cell(WINDOWS_COLUMN).count() if WINDOWS_COLUMN in present else DEFAULT_WINDOW_COUNT,
        source=cell(SOURCE_COLUMN).text() if SOURCE_COLUMN in present else Path(table.file).name,
        group=cell(GROUP_COLUMN).text() if GROUP_COLUMN in present else None,
        row=table.row_numbers[index],
    )


def check_measurements(table: RawTable) -> CheckedTable:
    """Every row checked (see the module docstring); the first problem raises MeasurementError."""
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        separator = next((name for mark, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars"))
                          if any(mark in column for column in table.columns)), None)
        hint = f"; the header looks separated by {separator}: write the file with commas" if separator else ""
        raise MeasurementError(table.file, f"missing column: {', '.join(missing)} (the columns are "
                               f"{', '.join(table.columns) or 'none'}{hint})", column=missing[0])
    power_columns = _power_columns(table)
    if not table.rows:
        raise MeasurementError(table.file, "no data rows")
    measurements: list[Measurement] = []
    first_row_of: dict[tuple[str, str, str], int] = {}
    for index in range(len(table.rows)):
        measurement = _measurement(table, index, power_columns)
        earlier = first_row_of.setdefault(measurement.key, measurement.row)
        if earlier != measurement.row:
            raise _Cell(table, index, "workload_name").fail(
                f"the key {'/'.join(measurement.key)} (namespace, workload_kind, workload_name) repeats data row "
                f"{earlier}: one row per workload (average repeated measurements, or tell them apart by name)")
        measurements.append(measurement)
    ignored = [c for c in table.columns if c not in MEASUREMENT_COLUMNS]
    power_from = POWER_COLUMN if tuple(power_columns) == (POWER_COLUMN,) else f"{ENERGY_COLUMN} / {DURATION_COLUMN}"
    return CheckedTable(measurements, power_from, ignored)


# -- specs --------------------------------------------------------------------------------------


@dataclass
class SpecSources:
    """The workload specs read from manifests and NDJSON, with what was not a workload."""

    requests: list[InferenceRequest] = field(default_factory=list)
    manifest_files: int = 0
    requests_files: int = 0
    skipped_documents: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    # Those of `requests` read from objects without metadata.namespace (helm template's output,
    # say): read into "default", as kubectl applies them without -n, and joinable in any namespace
    # (`in_measured_namespaces`).
    without_namespace: list[InferenceRequest] = field(default_factory=list)


def _read_manifest_text(text: str, file: str, specs: SpecSources) -> None:
    try:
        report = read_manifests(text, max_documents=None)  # a file of any size, unlike a request
    except ManifestError as exc:
        raise ManifestReadError(f"{file}: {exc}") from None
    if report.errors:
        problems = [f"{file}: document {e['document']}" + (f", items[{e['item']}]" if e.get("item") is not None else "")
                    + f" ({e.get('kind')}/{e.get('name')}): {e['field']}: {e['problem']}" for e in report.errors]
        more = f" (and {len(problems) - EXAMPLES_PER_REASON} more)" if len(problems) > EXAMPLES_PER_REASON else ""
        raise ManifestReadError("workload objects that cannot be read:\n" + "\n".join(problems[:EXAMPLES_PER_REASON]) + more)
    specs.requests.extend(request for _, request in report.requests)
    specs.without_namespace.extend(request for (_, request), obj in zip(report.requests, report.objects, strict=True)
                                   if not (obj.get("metadata") or {}).get("namespace"))
    specs.manifest_files += 1
    specs.skipped_documents += len(report.skipped)
    for skipped in report.skipped:
        if len(specs.skipped_examples) < EXAMPLES_PER_REASON:
            specs.skipped_examples.append(f"{file}: document {skipped['document']}: {skipped['reason']}")


def read_specs(manifest_paths: Sequence[str | os.PathLike[str]] = (),
               requests_paths: Sequence[str | os.PathLike[str]] = ()) -> SpecSources:
    """Specs from manifests (files, directories, `-` for stdin) and from NDJSON InferenceRequests.
    A workload object that cannot be read is an error; other documents are counted as skipped."""
    specs = SpecSources()
    for path in manifest_paths:
        try:
            for file, text in manifest_texts(path):
                _read_manifest_text(text, file, specs)
        except ManifestError as exc:
            raise ManifestReadError(str(exc)) from None
    for path in requests_paths:
        specs.requests.extend(read_requests(path))
        specs.requests_files += 1
    return specs


# -- the dataset ----------------------------------------------------------------------------------


def _as_labels(measurements: Sequence[Measurement]) -> pd.DataFrame:
    """The rows in the labels table's shape (trainer.labels), one pod-window each (module docstring)."""
    energy_joules = [m.power_watts * MEASUREMENT_WINDOW_SECONDS for m in measurements]
    return pd.DataFrame({
        "window_start": pd.Series([MEASUREMENT_WINDOW_START] * len(measurements), dtype="datetime64[ns, UTC]"),
        "window_seconds": pd.Series([MEASUREMENT_WINDOW_SECONDS] * len(measurements), dtype="int64"),
        "namespace": pd.Series([m.namespace for m in measurements], dtype="str"),
        "pod": pd.Series([m.pod for m in measurements], dtype="str"),
        "workload_kind": pd.Series([m.workload_kind for m in measurements], dtype="str"),
        "workload_name": pd.Series([m.workload_name for m in measurements], dtype="str"),
        "energy_joules": pd.Series(energy_joules, dtype="float64"),
        "power_watts": pd.Series([m.power_watts for m in measurements], dtype="float64"),
        "kepler_line": pd.Series([""] * len(measurements), dtype="str"),
    }, columns=list(LABEL_COLUMNS))


def _with_measurement_columns(frame: pd.DataFrame, measurements: Sequence[Measurement]) -> pd.DataFrame:
    """The joined dataset rows with their row's source, counts and group (keyed by namespace and
    pod, one dataset row per measurement row)."""
    by_pod = {(m.namespace, m.pod): m for m in measurements}
    joined = [by_pod[(str(ns), str(pod))] for ns, pod in frame[["namespace", "pod"]].itertuples(index=False)]
    columns: dict[str, Any] = {
        "source": pd.array([m.source for m in joined], dtype="str"),
        "pod_count": pd.array([m.pod_count for m in joined], dtype="int64"),
        "window_count": pd.array([m.window_count for m in joined], dtype="int64"),
    }
    if any(m.group is not None for m in measurements):
        columns["group"] = pd.array([m.group for m in joined], dtype="str")
    return frame.assign(**columns)


@dataclass
class MeasurementSummary:
    """What `train dataset --measurements` read, joined and wrote."""

    measurements_file: str
    file_format: str
    rows: int
    power_from: str
    ignored_columns: list[str]
    groups: int | None
    rows_below_default_min_active_windows: int
    manifest_files: int
    requests_files: int
    specs: int
    skipped_documents: int
    skipped_examples: list[str]
    join: JoinSummary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lines = [
            f"measurements: {self.rows} rows from {self.measurements_file} ({self.file_format}), power from "
            f"{self.power_from}" + (f", {self.groups} groups" if self.groups is not None else ", no group column"),
            f"ignored columns: {', '.join(self.ignored_columns) or 'none'}",
            f"specs: {self.specs} from {self.manifest_files} manifest files and {self.requests_files} NDJSON files; "
            f"{self.skipped_documents} documents skipped (not workloads)",
        ]
        if self.rows_below_default_min_active_windows:
            lines.append(f"{self.rows_below_default_min_active_windows} rows have fewer than {DEFAULT_MIN_ACTIVE_WINDOWS} "
                         f"windows: train fit's default --min-active-windows leaves them out")
        return "\n".join([*lines, self.join.describe(rows_name="measurement rows")])


def in_measured_namespaces(measurements: Sequence[Measurement], requests: Sequence[InferenceRequest],
                           without_namespace: Sequence[InferenceRequest]) -> list[InferenceRequest]:
    """`requests`, and a copy of each spec whose manifest set no namespace in every namespace where a
    row measures its kind and name and no spec of its own names that namespace: the manifest as
    `kubectl apply -n NAMESPACE` would have created it there. (The same chart rendered once and
    measured in three namespaces joins all three.)"""
    placed = {(r.namespace, r.workload_kind, r.workload_name) for r in requests}
    unplaced: dict[tuple[str, str], list[InferenceRequest]] = {}
    for request in without_namespace:
        unplaced.setdefault((request.workload_kind, request.workload_name), []).append(request)
    copies: list[InferenceRequest] = []
    for measurement in measurements:
        specs = unplaced.get((measurement.workload_kind, measurement.workload_name), [])
        if specs and measurement.key not in placed:
            placed.add(measurement.key)
            # Every one of them: two different specs of one name join nothing ("ambiguous"), as in `default`.
            copies.extend(spec.model_copy(update={"namespace": measurement.namespace}) for spec in specs)
    return [*requests, *copies]


def build_measurement_dataset(checked: CheckedTable, requests: Sequence[InferenceRequest],
                              without_namespace: Sequence[InferenceRequest] = ()) -> tuple[pd.DataFrame, JoinSummary]:
    """The rows joined to the specs by `trainer.dataset.build_dataset` (same rules, same summary),
    with the columns `source`, `pod_count`, `window_count` and, where the table has groups, `group`.
    A spec from a manifest without a namespace joins in the rows' namespaces (`in_measured_namespaces`)."""
    requests = in_measured_namespaces(checked.measurements, requests, without_namespace)
    frame, join = build_dataset(_as_labels(checked.measurements), requests)
    return _with_measurement_columns(frame, checked.measurements), join


def run_measurement_dataset(measurements_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                            manifest_paths: Sequence[str | os.PathLike[str]] = (),
                            requests_paths: Sequence[str | os.PathLike[str]] = ()) -> MeasurementSummary:
    """`energetiscope train dataset --measurements FILE`: check the table, read the specs, join,
    write the dataset and its summary (`<out>.summary.json`)."""
    table = read_measurement_table(measurements_path)
    checked = check_measurements(table)
    specs = read_specs(manifest_paths, requests_paths)
    frame, join = build_measurement_dataset(checked, specs.requests, specs.without_namespace)
    if join.joined.rows == 0:
        raise ValueError(f"no measurement row joined a spec (by namespace, workload_kind and workload_name), so there "
                         f"is nothing to train on:\n{join.describe(rows_name='measurement rows')}")
    groups = {m.group for m in checked.measurements if m.group is not None}
    summary = MeasurementSummary(
        measurements_file=Path(table.file).name, file_format=table.file_format, rows=len(checked.measurements),
        power_from=checked.power_from, ignored_columns=checked.ignored_columns,
        groups=len(groups) if GROUP_COLUMN in table.columns else None,
        rows_below_default_min_active_windows=sum(m.window_count < DEFAULT_MIN_ACTIVE_WINDOWS for m in checked.measurements),
        manifest_files=specs.manifest_files, requests_files=specs.requests_files, specs=len(specs.requests),
        skipped_documents=specs.skipped_documents, skipped_examples=specs.skipped_examples, join=join,
    )
    write_dataset(frame, out)
    write_summary(summary.to_dict(), out)
    return summary
