"""The trainer's `dataset` step: measured pod-windows (labels) joined to workload specs.

Join rules, for each label row (namespace, workload_kind, workload_name, pod):

1. `workload`: the spec collected for the same namespace, kind and name. A label row of a pod
   joins to its owning workload's spec and to nothing else: a bare Pod named like a Deployment
   is another key (kind is part of it), so no row is ever joined twice.
2. `controller`: when that spec was collected from an object with a controller (the
   `energetiscope.io/controller` mark `collect` sets: a pod that kube-state-metrics did not tie
   to its ReplicaSet, a ReplicaSet whose Deployment it missed), the controller's spec instead,
   following at most three hops. The webhook annotates the owner, so the owner's spec is the one
   the model must learn from.
3. Where several different specs (spec hashes) were collected for the workload (say, a watch saw
   it change), a `spec_hash` column in the labels picks one; without it the rows are reported
   `ambiguous` rather than joined to a guess.
4. `pod-spec` (only when asked for, `pod_spec_fallback`): a pod whose workload has no spec joins
   to the pod's own collected spec, with the workload's kind and name put in, when the workload
   kind is one the webhook predicts for (a DaemonSet's pod stands for the DaemonSet's template),
   and kind Pod otherwise (a static pod of a Node). A stand-in, marked in `join_rule`.

Every label row that does not join is counted under one reason (`no-spec`, `owner-without-spec`,
`ambiguous`, `spec-hash-mismatch`, `duplicate-row`), with rows, pods, workloads and examples.

The dataset has one row per (window_start, namespace, pod). Columns: see DATASET_COLUMNS;
`request_json` is the joined InferenceRequest as JSON (`model_dump(mode="json")`), a categorical
holding each distinct spec once.

Out of core: millions of label rows (165M for 20,000 workloads over a week) name a few thousand
(workload, pod, spec hash) keys. DuckDB reads the labels (the Parquet file `train labels` writes,
or a registered frame) and lists the keys with their row counts; each workload is resolved once,
in Python, by the rules above, and its pods share that resolution by number (only the pod-spec
stand-in is resolved pod by pod). DuckDB then joins the rows to their key's integer id and sorts
them into the dataset's order (window_start, namespace, pod, then label order) under a memory
limit (`DEFAULT_MEMORY_LIMIT`), spilling to a temporary directory beside the output.

Segments: `train labels` writes one row group a chunk of consecutive windows. From the row
groups' window_start statistics the file is cut where every window before the cut is earlier than
every window after it, into segments of at most `SEGMENT_ROWS` rows; each segment is streamed to
DuckDB from pyarrow, joined and sorted alone, and the segments in file order are the dataset's
order. Memory then follows a segment, not the file: at 2,000 workloads x 7 days (16.5M rows) the
step's peak RSS went from 1,425 to 615 MiB, at 200 x 7 days (1.7M rows) it stays at 568 MiB
(`/usr/bin/time -v energetiscope train dataset` on the labels of `bench.trainer_scale --keep`).
A file without usable statistics, or whose row groups overlap in time beyond `SEGMENT_ROWS`, is
sorted all at once as before. The sorted rows come back in Arrow batches: a row whose
(window_start, namespace, pod) equals the one before it repeats an earlier pod-window
(`duplicate-row`), and the others are written, each batch one Parquet row group, with their key's
joined columns taken by id. No per-window row is ever in Python memory all at once, and no string
is built per row or per pod.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from webhook.files import write_atomically, write_text_atomically
from trainer.collect import controller_of, read_requests
from trainer.inputs import InputFileError, parquet_column_names, read_parquet_input, release_arrow_memory
from trainer.labels import LABEL_COLUMNS
from webhook.model.schema import WORKLOAD_KINDS, InferenceRequest, spec_hash

DATASET_COLUMNS: tuple[str, ...] = (
    "window_start",
    "window_seconds",
    "namespace",
    "pod",
    "workload_kind",
    "workload_name",
    "join_rule",
    "spec_hash",
    "request_json",
    "power_watts",
    "energy_joules",
)
# Written where present: a measurement table's dataset (trainer.measurements) has them, see trainer.targets.
DATASET_OPTIONAL_COLUMNS: tuple[str, ...] = ("group", "source", "pod_count", "window_count")
ROW_KEY = ["window_start", "namespace", "pod"]
_WORKLOAD = ["namespace", "workload_kind", "workload_name"]
_TEXT_COLUMNS = ("namespace", "pod", "workload_kind", "workload_name", "spec_hash")
_DATASET_TEXT_COLUMNS = (*_TEXT_COLUMNS, "join_rule")  # request_json is a categorical already
MAX_CONTROLLER_HOPS = 3
EXAMPLES_PER_REASON = 10
# DuckDB's memory limit for the join and sort (it spills beyond it). At 2,000 workloads x 7 days
# (16.5M rows) the whole step peaked at ~1.4 GiB RSS with this limit (bench/README.md).
DEFAULT_MEMORY_LIMIT = "1GB"
# Rows per Arrow batch from the sort, and per Parquet row group written: ~170 bytes a row in
# Python while a batch is turned into the dataset's columns, ~90 MB.
OUTPUT_BATCH_ROWS = 1 << 19
# Most label rows sorted at once when the labels file is in window order by row group (as `train
# labels` writes it: one row group a chunk, ~500,000 rows at most, so two chunks a segment): such
# a file is joined and sorted one segment of row groups at a time, so memory follows this, not
# the file (2,000 workloads x 7 days: 1,425 -> 615 MiB peak RSS, see the module docstring).
SEGMENT_ROWS = 1 << 20
# Rows a segment is read in, as DuckDB consumes them.
SEGMENT_READ_ROWS = 1 << 16
LABELS_WHAT = "a labels table (train labels' output)"

WorkloadKey = tuple[str, str, str]  # namespace, kind, name


def request_json(request: InferenceRequest) -> str:
    return json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class SpecIndex:
    """Collected specs by (namespace, kind, name), each with its distinct versions by spec hash."""

    def __init__(self, requests: Iterable[InferenceRequest]) -> None:
        self._versions: dict[WorkloadKey, dict[str, InferenceRequest]] = {}
        for request in requests:
            key = (request.namespace, request.workload_kind, request.workload_name)
            self._versions.setdefault(key, {}).setdefault(spec_hash(request), request)
        self.used: set[WorkloadKey] = set()

    def __len__(self) -> int:
        return len(self._versions)

    def versions(self, key: WorkloadKey) -> dict[str, InferenceRequest]:
        return self._versions.get(key, {})

    def controller(self, key: WorkloadKey) -> WorkloadKey | None:
        for request in self.versions(key).values():
            owner = controller_of(request)
            if owner is not None:
                return key[0], owner[0], owner[1]
        return None

    def keys(self) -> list[WorkloadKey]:
        return sorted(self._versions)


@dataclass(frozen=True)
class Resolution:
    """Where one (workload, pod) of the labels joins, or why it does not."""

    workload: WorkloadKey | None = None  # the joined spec's workload
    request: InferenceRequest | None = None
    spec_hash: str = ""
    rule: str = ""
    reason: str = ""  # set when it does not join
    detail: str = ""
    spec_key: WorkloadKey | None = None  # the SpecIndex key of the spec used (a stand-in's is the pod's)


def _pick_version(versions: Mapping[str, InferenceRequest], wanted_hash: str | None) -> tuple[InferenceRequest | None, str, str]:
    if wanted_hash:
        if wanted_hash in versions:
            return versions[wanted_hash], "", ""
        return None, "spec-hash-mismatch", f"labels say spec {wanted_hash}, collected {sorted(versions)}"
    if len(versions) == 1:
        return next(iter(versions.values())), "", ""
    return None, "ambiguous", f"{len(versions)} different specs collected ({', '.join(sorted(versions))})"


def resolve(index: SpecIndex, label_workload: WorkloadKey, pod: str, wanted_hash: str | None,
            pod_spec_fallback: bool) -> Resolution:
    key, rule = label_workload, "workload"
    for _ in range(MAX_CONTROLLER_HOPS):
        owner = index.controller(key) if index.versions(key) else None
        if owner is None:
            break
        key, rule = owner, "controller"
    versions = index.versions(key)
    if versions:
        request, reason, detail = _pick_version(versions, wanted_hash)
        if request is not None:
            index.used.add(key)
            return Resolution(workload=key, request=request, spec_hash=spec_hash(request), rule=rule, spec_key=key)
        return Resolution(reason=reason, detail=detail)
    reason = "owner-without-spec" if rule == "controller" else "no-spec"
    detail = f"no spec for {key[1]}/{key[2]}" + (f" (owner of {label_workload[1]}/{label_workload[2]})" if rule == "controller" else "")
    if pod_spec_fallback:
        pod_key = (label_workload[0], "Pod", pod)
        request, _, _ = _pick_version(index.versions(pod_key), None)
        if request is not None:
            index.used.add(pod_key)
            kind = label_workload[1] if label_workload[1] in WORKLOAD_KINDS else "Pod"
            stand_in = request.model_copy(update={"workload_kind": kind, "workload_name": label_workload[2]})
            return Resolution(workload=label_workload, request=stand_in, spec_hash=spec_hash(stand_in), rule="pod-spec",
                              spec_key=pod_key)
    return Resolution(reason=reason, detail=detail)


@dataclass
class Tally:
    rows: int = 0
    pods: int = 0
    workloads: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class JoinSummary:
    label_rows: int
    label_pods: int
    label_workloads: int
    joined: Tally
    by_rule: dict[str, Tally]
    unjoined: dict[str, Tally]
    specs: int
    specs_joined: int
    specs_unused_examples: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, rows_name: str = "labels") -> str:
        lines = [
            f"{rows_name}: {self.label_rows} rows, {self.label_pods} pods, {self.label_workloads} workloads",
            f"joined: {self.joined.rows} rows, {self.joined.pods} pods, {self.joined.workloads} workloads "
            f"({', '.join(f'{rule}: {t.pods} pods' for rule, t in sorted(self.by_rule.items()))})",
        ]
        for reason, tally in sorted(self.unjoined.items()):
            lines.append(f"not joined, {reason}: {tally.rows} rows, {tally.pods} pods, {tally.workloads} workloads,"
                         f" e.g. {'; '.join(tally.examples[:3])}")
        lines.append(f"specs: {self.specs} workloads collected, {self.specs_joined} joined")
        return "\n".join(lines)


def _check_label_columns(columns: Iterable[str], path: str | os.PathLike[str] | None = None) -> None:
    present = set(columns)
    missing = [c for c in LABEL_COLUMNS if c not in present and c != "kepler_line"]
    if missing:
        if path is not None:
            raise InputFileError(path, LABELS_WHAT, f"it lacks columns {missing}")
        raise ValueError(f"labels table lacks columns {missing}")


# -- the labels in DuckDB ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """Consecutive row groups of a labels file whose windows no other row group has: sorted on
    their own, they are a stretch of the dataset's order."""

    row_groups: tuple[int, ...]
    first_row: int  # the file row number of its first row
    rows: int


@dataclass(frozen=True)
class _LabelsSource:
    """The labels as DuckDB reads them: the view `labels` over a Parquet file or a registered
    Arrow table, with `rn`, each row's position in the labels (the order `duplicate-row` keeps
    the first of), and `wanted_hash`, the labels' spec hash or "" without one. `segments`: a
    file in window order by row group (as `train labels` writes it), cut into segments that are
    sorted one at a time; None: the rows are sorted all at once (out of core)."""

    window_type: pa.DataType  # window_start's type in the labels, which the dataset keeps
    path: Path | None  # the file, to name it in errors
    columns: tuple[str, ...] = ()  # the label columns the file has
    segments: tuple[_Segment, ...] | None = None


def _connect(memory_limit: str, spill_directory: Path) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(spill_directory)})
    except duckdb.Error as exc:
        raise ValueError(f"memory limit {memory_limit!r}: {str(exc).strip().splitlines()[0]}") from None


def _labels_view(con: duckdb.DuckDBPyConnection, relation: str, columns: Sequence[str], name: str = "labels") -> None:
    wanted = "coalesce(CAST(spec_hash AS VARCHAR), '')" if "spec_hash" in columns else "''"
    texts = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in ("namespace", "pod", "workload_kind", "workload_name"))
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW {name} AS SELECT
            window_start, CAST(window_seconds AS BIGINT) AS window_seconds, {texts},
            CAST(energy_joules AS DOUBLE) AS energy_joules, CAST(power_watts AS DOUBLE) AS power_watts,
            {wanted} AS wanted_hash, rn
        FROM {relation}""")


def _file_source(con: duckdb.DuckDBPyConnection, path: Path) -> _LabelsSource:
    columns = parquet_column_names(path, LABELS_WHAT)
    _check_label_columns(columns, path)
    quoted = str(path).replace("'", "''")
    _labels_view(con, f"(SELECT *, file_row_number AS rn FROM read_parquet('{quoted}', file_row_number = true))", columns)
    try:
        metadata = pq.ParquetFile(path).metadata
        window_type = metadata.schema.to_arrow_schema().field("window_start").type
        segments = _window_segments(metadata, SEGMENT_ROWS)
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        raise InputFileError(path, LABELS_WHAT, str(exc)) from None
    label_columns = tuple(c for c in (*LABEL_COLUMNS, "spec_hash") if c in columns and c != "kepler_line")
    return _LabelsSource(window_type=window_type, path=path, columns=label_columns,
                         segments=None if segments is None else tuple(segments))


def _window_segments(metadata: pq.FileMetaData, max_rows: int) -> list[_Segment] | None:
    """The file's row groups cut where every window before the cut is earlier than every window
    after it (from the row groups' window_start statistics), packed into segments of at most
    `max_rows` rows; None when that cannot be known (no statistics, empty windows, a type not
    stored as integers) or a stretch that cannot be cut is longer than `max_rows`."""
    column = metadata.schema.to_arrow_schema().get_field_index("window_start")
    groups: list[tuple[int, int, int, int, int]] = []  # (row group, first row, rows, min, max)
    first_row = 0
    for number in range(metadata.num_row_groups):
        group = metadata.row_group(number)
        if group.num_rows:
            stats = group.column(column).statistics
            if (stats is None or not stats.has_min_max or not stats.has_null_count or stats.null_count
                    or stats.physical_type not in ("INT64", "INT32")):
                return None
            groups.append((number, first_row, group.num_rows, int(stats.min_raw), int(stats.max_raw)))
        first_row += group.num_rows
    if not groups:
        return None
    later_min = [0] * len(groups)  # the earliest window of the groups after each
    earliest = None
    for position in range(len(groups) - 1, -1, -1):
        later_min[position] = earliest if earliest is not None else groups[position][4] + 1
        earliest = groups[position][3] if earliest is None else min(earliest, groups[position][3])
    # Stretches that can be sorted alone: cut after a group when all windows so far are earlier
    # than all windows after it (strictly: rows of one window must be sorted together).
    stretches: list[list[tuple[int, int, int, int, int]]] = [[]]
    latest = None
    for position, group in enumerate(groups):
        stretches[-1].append(group)
        latest = group[4] if latest is None else max(latest, group[4])
        if latest < later_min[position] and position < len(groups) - 1:
            stretches.append([])
    segments: list[_Segment] = []
    pending: list[tuple[int, int, int, int, int]] = []
    for stretch in stretches:
        rows = sum(g[2] for g in stretch)
        if rows > max_rows:
            return None
        if pending and sum(g[2] for g in pending) + rows > max_rows:
            segments.append(_segment(pending))
            pending = []
        pending.extend(stretch)
    segments.append(_segment(pending))
    return segments


def _segment_batches(path: Path, columns: Sequence[str], segment: _Segment,
                     failure: list[InputFileError]) -> pa.RecordBatchReader:
    """A segment's rows, with `rn`, as a stream of batches for DuckDB to join and sort: the
    segment is never a table in memory (a 500,000-row row group read whole added 113 MB of RSS
    at 2,000 workloads x 7 days). A read error is put in `failure`, naming the file and the row
    groups, for the caller to raise in place of DuckDB's report of it."""
    parquet = pq.ParquetFile(path)
    schema = pa.schema([parquet.schema_arrow.field(c) for c in columns] + [pa.field("rn", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        first_row = segment.first_row
        try:
            for batch in parquet.iter_batches(batch_size=SEGMENT_READ_ROWS, row_groups=list(segment.row_groups),
                                              columns=list(columns), use_pandas_metadata=False):
                numbers = pa.array(np.arange(first_row, first_row + batch.num_rows, dtype=np.int64))
                first_row += batch.num_rows
                yield pa.RecordBatch.from_arrays([*batch.columns, numbers], schema=schema)
        except (pa.ArrowException, OSError) as exc:
            groups = f"{segment.row_groups[0]}-{segment.row_groups[-1]}"
            failure.append(InputFileError(path, LABELS_WHAT, f"row groups {groups}: {str(exc).strip().splitlines()[0]}"))
            raise

    return pa.RecordBatchReader.from_batches(schema, batches())


def _segment(groups: Sequence[tuple[int, int, int, int, int]]) -> _Segment:
    return _Segment(row_groups=tuple(g[0] for g in groups), first_row=groups[0][1], rows=sum(g[2] for g in groups))


def _frame_source(con: duckdb.DuckDBPyConnection, labels: pd.DataFrame) -> _LabelsSource:
    _check_label_columns(labels.columns)
    columns = [c for c in (*LABEL_COLUMNS, "spec_hash") if c in labels.columns and c != "kepler_line"]
    table = pa.Table.from_pandas(labels[columns], preserve_index=False)
    table = table.append_column("rn", pa.array(np.arange(len(labels), dtype=np.int64)))
    con.register("labels_frame", table)
    _labels_view(con, "labels_frame", columns)
    return _LabelsSource(window_type=table.schema.field("window_start").type, path=None)


# -- one resolution per identity --------------------------------------------------------------


@dataclass
class _Identities:
    """The labels' distinct (namespace, workload_kind, workload_name, pod, wanted hash), sorted,
    each with its resolution; ids are positions in `table`. `pod_id` numbers (namespace, pod) in
    sorted order, so that sorting rows by it sorts them by namespace and pod.

    A resolution depends on the workload and the wanted hash, not on the pod (but for the pod-spec
    stand-in), so each workload is resolved once and its pods share its resolution by number
    (`resolution_id`); the per-pod columns are Arrow strings taken by that number. Resolving and
    holding one Python object per pod cost ~2.5 KB a pod (200,000 pods: +325 MB and 32 s)."""

    table: pd.DataFrame
    resolutions: list[Resolution]  # by resolution_id
    pod_namespaces: pa.Array  # by pod_id
    pod_names: pa.Array  # by pod_id
    texts: list[str]  # the sorted JSON of every spec some identity joins to: the dictionary written

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection, index: SpecIndex, pod_spec_fallback: bool) -> "_Identities":
        keys = [*_WORKLOAD, "pod", "wanted_hash"]
        # Sorted by DuckDB: VARCHAR compares by UTF-8 bytes, which is code point order, Python's.
        table = con.sql(f"""
            SELECT {', '.join(keys)}, label_rows,
                   CAST(dense_rank() OVER (ORDER BY namespace, pod) - 1 AS INTEGER) AS pod_id,
                   CAST(dense_rank() OVER (ORDER BY namespace, workload_kind, workload_name, wanted_hash) - 1
                        AS INTEGER) AS workload_id
            FROM (SELECT {', '.join(keys)}, count(*) AS label_rows FROM labels GROUP BY ALL)
            ORDER BY {', '.join(keys)}""").to_arrow_table()
        for column in [*_WORKLOAD, "pod"]:
            if table.column(column).null_count:
                raise ValueError(f"labels table has rows without {column}")
        workload_id = table.column("workload_id").to_numpy()
        pod_id = table.column("pod_id").to_numpy()
        # One resolution per workload (and wanted hash), numbered by workload_id (dense from 0):
        # the first identity of each names it.
        _, firsts = np.unique(workload_id, return_index=True)
        workload_rows = table.select([*_WORKLOAD, "pod", "wanted_hash"]).take(pa.array(firsts)).to_pylist()
        resolutions = [resolve(index, (w["namespace"], w["workload_kind"], w["workload_name"]), w["pod"],
                               w["wanted_hash"] or None, False) for w in workload_rows]
        resolution_id = workload_id.astype(np.int32)
        if pod_spec_fallback:
            # The pod's own spec for the pods of a workload without one: resolved pod by pod.
            no_spec = np.array([r.request is None and r.reason in ("no-spec", "owner-without-spec")
                                for r in resolutions], dtype=bool)
            for position in np.flatnonzero(no_spec[workload_id]).tolist():
                row = table.slice(position, 1).to_pylist()[0]
                found = resolve(index, (row["namespace"], row["workload_kind"], row["workload_name"]), row["pod"],
                                row["wanted_hash"] or None, True)
                if found.request is not None:
                    resolution_id[position] = len(resolutions)
                    resolutions.append(found)
        texts = _request_texts(resolutions)
        distinct = sorted({text for text in texts if text is not None})
        position_of = {text: number for number, text in enumerate(distinct)}
        request_code = np.array([position_of[t] if t is not None else -1 for t in texts], dtype=np.int64)
        taken = pa.array(resolution_id)

        def per_identity(values: list[str]) -> pd.Series:
            # Each resolution's text once, taken per identity by Arrow: no Python string per pod.
            return pd.Series(pd.array(pa.array(values, type=pa.large_string()).take(taken), dtype="str"))

        frame = table.select(keys).to_pandas()
        frame = frame.assign(
            label_rows=table.column("label_rows").to_numpy(),
            identity_id=np.arange(len(frame), dtype=np.int32),
            pod_id=pod_id.astype(np.int32),
            resolution_id=resolution_id,
            joinable=np.array([r.request is not None for r in resolutions], dtype=bool)[resolution_id],
            joined_kind=per_identity([r.workload[1] if r.workload else "" for r in resolutions]),
            joined_name=per_identity([r.workload[2] if r.workload else "" for r in resolutions]),
            join_rule=per_identity([r.rule for r in resolutions]),
            spec_hash=per_identity([r.spec_hash for r in resolutions]),
            # The code into `distinct` only, not each identity's text: a column of 21,000 spec
            # texts (~2.5 KB each, shared in Python, copied once each into the frame) cost 54 MB
            # at 2,000 workloads x 7 days.
            request_code=request_code[resolution_id],
            reason=per_identity([r.reason for r in resolutions]),
            detail=per_identity([r.detail for r in resolutions]),
        )
        _, firsts_of_pods = np.unique(pod_id, return_index=True)  # by pod_id, dense from 0
        by_pod = table.select(["namespace", "pod"]).take(pa.array(firsts_of_pods))
        return cls(table=frame, resolutions=resolutions, pod_namespaces=by_pod.column("namespace").combine_chunks(),
                   pod_names=by_pod.column("pod").combine_chunks(), texts=distinct)

    def pod(self, pod_id: int) -> tuple[str, str]:
        return self.pod_namespaces[pod_id].as_py(), self.pod_names[pod_id].as_py()

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        keys = self.table[[*_WORKLOAD, "pod", "wanted_hash", "identity_id", "pod_id"]]
        con.register("identities", pa.Table.from_pandas(keys, preserve_index=False))


def _request_texts(resolutions: Sequence[Resolution]) -> list[str | None]:
    """Each resolution's request as JSON (None where it does not join), dumped once per distinct
    request object: the identities of one workload share its spec."""
    by_request: dict[int, str] = {}
    texts: list[str | None] = []
    for resolution in resolutions:
        request = resolution.request
        if request is not None and id(request) not in by_request:
            by_request[id(request)] = request_json(request)
        texts.append(by_request[id(request)] if request is not None else None)
    return texts


# -- the dataset's rows -----------------------------------------------------------------------


# Every label row with its identity's id and pod's id; `{labels}` names the view.
_JOINED_ROWS = """
    SELECT l.window_start, l.window_seconds, i.identity_id, i.pod_id, l.power_watts, l.energy_joules, l.rn
    FROM {labels} AS l JOIN identities AS i
      ON l.namespace = i.namespace AND l.workload_kind = i.workload_kind
     AND l.workload_name = i.workload_name AND l.pod = i.pod AND l.wanted_hash = i.wanted_hash"""


def dataset_schema(window_type: pa.DataType, request_texts: Sequence[str]) -> pa.Schema:
    """The dataset's Arrow schema with its pandas metadata, as `write_dataset` of the same frame
    writes it: window_start as in the labels, text columns str, request_json a categorical of
    `request_texts`."""
    window_dtype = pd.Series(pa.array([], type=window_type).to_pandas()).dtype
    empty = pd.DataFrame({
        "window_start": pd.Series([], dtype=window_dtype),
        "window_seconds": pd.Series([], dtype="int64"),
        **{c: pd.Series([], dtype="str") for c in ("namespace", "pod", "workload_kind", "workload_name", "join_rule",
                                                    "spec_hash")},
        "request_json": pd.Categorical.from_codes([], categories=pd.Index(list(request_texts), dtype="str")),
        "power_watts": pd.Series([], dtype="float64"),
        "energy_joules": pd.Series([], dtype="float64"),
    }, columns=list(DATASET_COLUMNS))
    return pa.Schema.from_pandas(empty, preserve_index=False)


def _strings(values: Sequence[str], type_: pa.DataType) -> pa.Array:
    return pa.array(list(values), type=pa.large_string()).cast(type_)


@dataclass
class _JoinPass:
    """The sorted label rows, batch by batch, turned into dataset row groups; it counts each
    identity's kept and repeated rows as they pass."""

    identities: _Identities
    window_type: pa.DataType
    schema: pa.Schema = field(init=False)
    kept_rows: np.ndarray = field(init=False)
    duplicate_rows: np.ndarray = field(init=False)
    duplicates_first: list[tuple[int, int, int]] = field(default_factory=list)  # (rn, window_start, pod_id)

    def __post_init__(self) -> None:
        table = self.identities.table
        self.schema = dataset_schema(self.window_type, self.identities.texts)
        string_type = self.schema.field("namespace").type
        self.kept_rows = np.zeros(len(table), dtype=np.int64)
        self.duplicate_rows = np.zeros(len(table), dtype=np.int64)
        self._namespace = self.identities.pod_namespaces.cast(string_type)
        self._pod = self.identities.pod_names.cast(string_type)
        self._by_identity = {
            column: pa.array(table[source].array).cast(string_type)
            for column, source in [("workload_kind", "joined_kind"), ("workload_name", "joined_name"),
                                   ("join_rule", "join_rule"), ("spec_hash", "spec_hash")]
        }
        self._joinable = table["joinable"].to_numpy()
        self._request_code = table["request_code"].to_numpy()
        request_type = self.schema.field("request_json").type
        self._request_type = request_type
        self._dictionary = _strings(self.identities.texts, request_type.value_type)
        self._previous: tuple[int, int] | None = None

    def rows(self, con: duckdb.DuckDBPyConnection, source: _LabelsSource,
             batch_rows: int = OUTPUT_BATCH_ROWS) -> Iterable[pa.Table]:
        """Every label row joined to its identity and sorted, as dataset tables: segment by
        segment when the labels file has them (DuckDB joins, Arrow sorts the segment in memory),
        else all at once (DuckDB joins and sorts, out of core)."""
        if source.segments is None or source.path is None:
            reader = con.sql(f"{_JOINED_ROWS.format(labels='labels')} ORDER BY l.window_start, i.pod_id, l.rn")
            yield from self._tables(reader.to_arrow_reader(batch_rows))
            return
        # A stream has no row count, so DuckDB takes it for ~1 row and builds its hash table on
        # the segment (500,000 rows with their strings: +186 MB of RSS at 2,000 workloads x 7
        # days) instead of on the identities: keep the side written on the right (the
        # identities) as the build side. Only this connection's segment queries run from here on.
        con.execute("SET disabled_optimizers = 'build_side_probe_side'")
        for segment in source.segments:
            failure: list[InputFileError] = []
            # Registering the next segment under the same name replaces this one.
            con.register("segment_batches", _segment_batches(source.path, source.columns, segment, failure))
            _labels_view(con, "segment_batches", source.columns, name="segment")
            try:
                reader = con.sql(f"{_JOINED_ROWS.format(labels='segment')} ORDER BY l.window_start, i.pod_id, l.rn")
                yield from self._tables(reader.to_arrow_reader(batch_rows))
            except duckdb.Error:
                if failure:  # the file, not DuckDB: say which file and where
                    raise failure[0] from None
                raise

    def _tables(self, reader: pa.RecordBatchReader) -> Iterable[pa.Table]:
        for batch in reader:
            if batch.num_rows:
                table = self._batch(batch)
                if table.num_rows:
                    yield table

    def _batch(self, batch: pa.RecordBatch) -> pa.Table:
        window = batch.column("window_start")
        start = pc.cast(window, pa.int64()).to_numpy(zero_copy_only=False)
        pod = batch.column("pod_id").to_numpy(zero_copy_only=False)
        identity = batch.column("identity_id").to_numpy(zero_copy_only=False)
        # Sorted by (window_start, pod, label order): a row equal to the one before it on
        # (window_start, namespace, pod) repeats an earlier pod-window.
        repeat = np.empty(len(start), dtype=bool)
        repeat[0] = self._previous == (int(start[0]), int(pod[0]))
        repeat[1:] = (start[1:] == start[:-1]) & (pod[1:] == pod[:-1])
        self._previous = (int(start[-1]), int(pod[-1]))
        self.kept_rows += np.bincount(identity[~repeat], minlength=len(self.kept_rows))
        if repeat.any():
            self.duplicate_rows += np.bincount(identity[repeat], minlength=len(self.duplicate_rows))
            rn = batch.column("rn").to_numpy(zero_copy_only=False)
            found = list(zip(rn[repeat].tolist(), start[repeat].tolist(), pod[repeat].tolist()))
            self.duplicates_first = sorted(self.duplicates_first + found)[:EXAMPLES_PER_REASON]
        positions = pa.array(np.flatnonzero(~repeat & self._joinable[identity]))
        kept_identity = pa.array(identity).take(positions)
        kept_pod = pa.array(pod).take(positions)
        codes = pa.array(self._request_code[kept_identity.to_numpy()]).cast(self._request_type.index_type)
        columns = {
            "window_start": window.take(positions).cast(self.window_type),
            "window_seconds": batch.column("window_seconds").take(positions),
            "namespace": self._namespace.take(kept_pod),
            "pod": self._pod.take(kept_pod),
            **{column: values.take(kept_identity) for column, values in self._by_identity.items()},
            "request_json": pa.DictionaryArray.from_arrays(codes, self._dictionary),
            "power_watts": batch.column("power_watts").take(positions),
            "energy_joules": batch.column("energy_joules").take(positions),
        }
        return pa.Table.from_arrays([columns[c] for c in DATASET_COLUMNS], schema=self.schema)

    def duplicate_examples(self) -> list[str]:
        unit, zone = self.window_type.unit, getattr(self.window_type, "tz", None)
        return [f"{ns}/{pod} at {pd.Timestamp(start, unit=unit, tz=zone)}"
                for _, start, pod_id in self.duplicates_first for ns, pod in [self.identities.pod(pod_id)]]


# -- the join summary -------------------------------------------------------------------------


def _identity_tally(table: pd.DataFrame, row_counts: np.ndarray, workload: Sequence[str] = _WORKLOAD,
                    examples: Sequence[str] = ()) -> Tally:
    """Rows, pods and workloads of the identities with rows (`row_counts`, one per identity);
    `workload` names the columns of the workload an identity counts for (the labels' or the
    joined one)."""
    present = table.loc[row_counts > 0]
    return Tally(rows=int(row_counts.sum()), pods=int(present[["namespace", "pod"]].drop_duplicates().shape[0]),
                 workloads=int(present[list(workload)].drop_duplicates().shape[0]),
                 examples=list(examples)[:EXAMPLES_PER_REASON])


def _unjoined(table: pd.DataFrame, duplicate_examples: Sequence[str]) -> dict[str, Tally]:
    """Per reason, the label rows that do not join; repeated pod-windows first."""
    unjoined: dict[str, Tally] = {}
    duplicate_rows = table["duplicate_rows"].to_numpy()
    if duplicate_rows.any():
        unjoined["duplicate-row"] = _identity_tally(table, duplicate_rows, examples=duplicate_examples)
    failed = table.loc[(table["kept_rows"] > 0) & ~table["joined"]]
    for reason, identities in failed.groupby("reason", sort=True):
        details = sorted({f"{ns}/{kind}/{name}: {detail}"
                          for ns, kind, name, detail in identities[[*_WORKLOAD, "detail"]].itertuples(index=False)})
        unjoined[str(reason)] = _identity_tally(identities, identities["kept_rows"].to_numpy(), examples=details)
    return unjoined


def _summary(table: pd.DataFrame, duplicate_examples: Sequence[str], index: SpecIndex) -> JoinSummary:
    """`table`: one row per identity with its rows kept and repeated and whether it joined."""
    joined = table.loc[table["joined"]]
    joined_workload = ["namespace", "joined_kind", "joined_name"]  # the dataset's workload, not the label's
    by_rule = {str(rule): _identity_tally(identities, identities["kept_rows"].to_numpy(), joined_workload)
               for rule, identities in joined.groupby("join_rule", sort=True)}
    unused = [f"{ns}/{kind}/{name}" for ns, kind, name in index.keys() if (ns, kind, name) not in index.used]
    all_rows = (table["kept_rows"] + table["duplicate_rows"]).to_numpy()
    return JoinSummary(
        label_rows=int(all_rows.sum()),
        label_pods=int(table.loc[all_rows > 0, ["namespace", "pod"]].drop_duplicates().shape[0]),
        label_workloads=int(table.loc[all_rows > 0, _WORKLOAD].drop_duplicates().shape[0]),
        joined=_identity_tally(joined, joined["kept_rows"].to_numpy(), joined_workload),
        by_rule=by_rule,
        unjoined=_unjoined(table, duplicate_examples),
        specs=len(index),
        specs_joined=len(index.used),
        specs_unused_examples=unused[:EXAMPLES_PER_REASON],
    )


@dataclass(frozen=True)
class _JoinOutcome:
    summary: JoinSummary
    texts_written: list[str]  # the dictionary the row groups were written with
    texts_used: list[str]  # the specs the kept rows join to: the dataset's categories


def _finish(join: _JoinPass, index: SpecIndex) -> _JoinOutcome:
    """The summary once every row has passed. An identity whose rows all repeat earlier
    pod-windows joins nothing: it neither marks its spec used nor adds it to the categories."""
    identities = join.identities
    table = identities.table.assign(kept_rows=join.kept_rows, duplicate_rows=join.duplicate_rows)
    table["joined"] = table["joinable"] & (table["kept_rows"] > 0)
    joined_resolutions = set(table.loc[table["joined"], "resolution_id"].tolist())
    index.used = {r.spec_key for number, r in enumerate(identities.resolutions) if number in joined_resolutions and r.spec_key}
    # Codes number the sorted texts, so the codes in order are the texts in order.
    used = [identities.texts[code] for code in sorted(set(table.loc[table["joined"], "request_code"].tolist()))]
    return _JoinOutcome(_summary(table, join.duplicate_examples(), index), identities.texts, used)


def _join(con: duckdb.DuckDBPyConnection, source: _LabelsSource, requests: Iterable[InferenceRequest],
          pod_spec_fallback: bool) -> tuple[_JoinPass, SpecIndex]:
    index = SpecIndex(requests)
    identities = _Identities.read(con, index, pod_spec_fallback)
    identities.register(con)
    return _JoinPass(identities, source.window_type), index


def _recode_requests(table: pa.Table, outcome: _JoinOutcome) -> pa.Table:
    """A dataset table written with every joinable spec in its dictionary, with only the specs
    its dataset uses (sorted): what `write_dataset` of the joined frame would hold."""
    column = table.column("request_json").combine_chunks()
    position = {text: number for number, text in enumerate(outcome.texts_used)}
    dictionary = column.dictionary.to_pylist()
    mapping = np.array([position.get(text, -1) for text in dictionary], dtype=np.int64)
    schema = dataset_schema(table.schema.field("window_start").type, outcome.texts_used)
    codes = pa.array(mapping[column.indices.to_numpy(zero_copy_only=False)]).cast(schema.field("request_json").type.index_type)
    recoded = pa.DictionaryArray.from_arrays(codes, _strings(outcome.texts_used, schema.field("request_json").type.value_type))
    return pa.Table.from_arrays([recoded if c == "request_json" else table.column(c) for c in DATASET_COLUMNS],
                                schema=schema)


def build_dataset(labels: pd.DataFrame, requests: Iterable[InferenceRequest], *, pod_spec_fallback: bool = False,
                  memory_limit: str = DEFAULT_MEMORY_LIMIT,
                  batch_rows: int = OUTPUT_BATCH_ROWS) -> tuple[pd.DataFrame, JoinSummary]:
    """Join the labels table (trainer.labels columns, optionally `spec_hash`) to the specs, in
    memory: the same DuckDB join as `run_dataset`, its rows collected into one frame. Text
    columns may be str, object or categorical."""
    with tempfile.TemporaryDirectory(prefix="energetiscope-join-") as spill:
        con = _connect(memory_limit, Path(spill))
        try:
            source = _frame_source(con, labels)
            join, index = _join(con, source, requests, pod_spec_fallback)
            tables = list(join.rows(con, source, batch_rows))
            outcome = _finish(join, index)
        finally:
            con.close()
    table = pa.concat_tables(tables) if tables else join.schema.empty_table()
    if outcome.texts_used != outcome.texts_written:
        table = _recode_requests(table, outcome)
    return table.to_pandas(), outcome.summary


def join_labels_file(labels_path: str | os.PathLike[str], requests: Iterable[InferenceRequest],
                     out: str | os.PathLike[str], *, pod_spec_fallback: bool = False,
                     memory_limit: str = DEFAULT_MEMORY_LIMIT, batch_rows: int = OUTPUT_BATCH_ROWS) -> JoinSummary:
    """The join of `build_dataset`, out of core: DuckDB reads the labels file and sorts under
    `memory_limit` (spilling into a temporary directory beside `out`), and each sorted batch is
    written to `out` as a row group as it arrives. `out` is written atomically: an interrupted
    run leaves the old file, or none."""
    path, target = Path(labels_path), Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    outcome: _JoinOutcome | None = None

    def write(temp: Path) -> None:
        nonlocal outcome
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.spill-", dir=target.parent) as spill:
            con = _connect(memory_limit, Path(spill))
            try:
                source = _file_source(con, path)
                join, index = _join(con, source, requests, pod_spec_fallback)
                with pq.ParquetWriter(temp, join.schema) as writer:
                    for table in join.rows(con, source, batch_rows):
                        writer.write_table(table)
                outcome = _finish(join, index)
            except (duckdb.IOException, duckdb.InvalidInputException) as exc:
                raise InputFileError(path, LABELS_WHAT, str(exc).strip().splitlines()[0]) from None
            finally:
                con.close()
        if outcome.texts_used != outcome.texts_written:
            _recode_file(temp, outcome)

    write_atomically(target, write)
    assert outcome is not None
    return outcome.summary


def _recode_file(path: Path, outcome: _JoinOutcome) -> None:
    """Rewrite a written dataset with only the specs it uses in request_json's dictionary, one
    row group at a time (rare: only when some identity's rows all repeat earlier pod-windows)."""
    recoded = path.with_name(path.name + ".recode")
    try:
        source = pq.ParquetFile(path)
        with pq.ParquetWriter(recoded, dataset_schema(source.schema_arrow.field("window_start").type,
                                                       outcome.texts_used)) as writer:
            for group in range(source.num_row_groups):
                writer.write_table(_recode_requests(source.read_row_group(group), outcome))
        os.replace(recoded, path)
    finally:
        recoded.unlink(missing_ok=True)

# -- files ------------------------------------------------------------------------------------


def write_dataset(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Parquet, atomically (request_json dictionary-encoded: one copy per distinct spec), with
    the optional columns the frame has."""
    columns = [*DATASET_COLUMNS, *(c for c in DATASET_OPTIONAL_COLUMNS if c in frame.columns)]
    return write_atomically(path, lambda temp: frame[columns].to_parquet(temp, index=False))


def read_dataset(path: str | os.PathLike[str], *, text_as_categories: bool = False) -> pd.DataFrame:
    """The dataset as written; with `text_as_categories`, every text column is a categorical
    (each distinct string held once, in no particular category order): for steps that only
    group millions of windows, such as fit."""
    text_columns = [c for c in DATASET_COLUMNS if c in _DATASET_TEXT_COLUMNS] if text_as_categories else None
    frame = read_parquet_input(path, "a trainer dataset (train dataset's output)", read_dictionary=text_columns)
    release_arrow_memory()
    missing = [c for c in DATASET_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a trainer dataset: it lacks columns {missing}")
    return frame


def summary_path(dataset_path: str | os.PathLike[str]) -> Path:
    path = Path(dataset_path)
    return path.with_name(path.name + ".summary.json")


def write_summary(summary: Mapping[str, Any], dataset_path: str | os.PathLike[str]) -> Path:
    """The dataset's summary as JSON at `summary_path(dataset_path)`, atomically."""
    return write_text_atomically(summary_path(dataset_path), json.dumps(summary, indent=2) + "\n")


def run_dataset(labels_path: str | os.PathLike[str], requests_paths: Sequence[str | os.PathLike[str]],
                out: str | os.PathLike[str], *, pod_spec_fallback: bool = False,
                memory_limit: str = DEFAULT_MEMORY_LIMIT) -> JoinSummary:
    """`energetiscope train dataset`: read the NDJSON specs, join the labels file to them out of
    core (`join_labels_file`), write the dataset and its join summary (`<out>.summary.json`)."""
    requests = [r for path in requests_paths for r in read_requests(path)]
    summary = join_labels_file(labels_path, requests, out, pod_spec_fallback=pod_spec_fallback,
                               memory_limit=memory_limit)
    write_summary(summary.to_dict(), out)
    return summary
