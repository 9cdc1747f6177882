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

Millions of label rows name a few thousand (workload, pod, spec hash) keys: each key is resolved
once, and the rows only ever carry integer codes of their key (see `LabelRows`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from webhook.files import write_atomically, write_text_atomically
from trainer.collect import controller_of, read_requests
from trainer.inputs import parquet_column_names, read_parquet_input
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
            return Resolution(workload=key, request=request, spec_hash=spec_hash(request), rule=rule)
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
            return Resolution(workload=label_workload, request=stand_in, spec_hash=spec_hash(stand_in), rule="pod-spec")
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


def _check_label_columns(labels: pd.DataFrame) -> None:
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns and c != "kepler_line"]
    if missing:
        raise ValueError(f"labels table lacks columns {missing}")


# -- label rows as integer codes --------------------------------------------------------------
# The labels have millions of rows but only thousands of distinct keys. Every per-row step below
# works on integer arrays; strings are only looked at once per distinct key.


def _sorted_codes(column: pd.Series) -> np.ndarray:
    """One integer per row, equal for equal values and ordered as the values sort (missing last)."""
    if isinstance(column.dtype, pd.CategoricalDtype) and not column.cat.categories.is_monotonic_increasing:
        # factorize sorts a categorical by its categories' order, not by their values.
        column = column.cat.reorder_categories(column.cat.categories.sort_values())
    codes, uniques = pd.factorize(column, sort=True)
    return np.where(codes < 0, len(uniques), codes).astype(np.int64)


def _tuple_codes(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One integer per row for its tuple of codes, ordered as the tuples sort. The running code
    is renumbered densely (below the row count) before each product, so none outgrows int64."""
    codes = parts[0]
    for step, part in enumerate(parts[1:]):
        if step:
            codes = pd.factorize(codes, sort=True)[0]
        codes = codes * (int(part.max(initial=0)) + 1) + part
    return codes


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """Where each code first occurs, for codes numbered in order of first appearance (as
    `pd.factorize` numbers them): exactly where the running maximum grows."""
    grows = np.ones(len(codes), dtype=bool)
    grows[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
    return np.flatnonzero(grows)


@dataclass(frozen=True)
class LabelRows:
    """The label rows reduced to integers: each row's identity (workload, pod, wanted spec hash),
    which rows repeat an earlier pod-window, and the order of the rest in the dataset."""

    identity: np.ndarray  # per row: dense code of (namespace, kind, name, pod, wanted hash)
    identity_first_rows: np.ndarray  # per identity: its first row
    duplicated: np.ndarray  # per row: the same (window_start, namespace, pod) as an earlier row
    kept_in_order: np.ndarray  # the rows that are not duplicated, sorted by ROW_KEY

    @classmethod
    def of(cls, labels: pd.DataFrame, wanted_hash: pd.Series | None) -> "LabelRows":
        text_codes = {c: _sorted_codes(labels[c]) for c in ["namespace", "pod", "workload_kind", "workload_name"]}
        row_key = _tuple_codes([_sorted_codes(labels["window_start"]), text_codes["namespace"], text_codes["pod"]])
        # A stable sort keeps repeats in label order, so the first of each run is the row `keep="first"` keeps.
        order = np.argsort(row_key, kind="stable")
        sorted_key = row_key[order]
        first_of_key = np.ones(len(order), dtype=bool)
        first_of_key[1:] = sorted_key[1:] != sorted_key[:-1]
        duplicated = np.ones(len(order), dtype=bool)
        duplicated[order[first_of_key]] = False
        identity_parts = [text_codes[c] for c in ["namespace", "workload_kind", "workload_name", "pod"]]
        if wanted_hash is not None:
            identity_parts.append(_sorted_codes(wanted_hash))
        identity = pd.factorize(_tuple_codes(identity_parts))[0]
        return cls(identity=identity, identity_first_rows=_first_rows(identity), duplicated=duplicated,
                   kept_in_order=order[first_of_key])

    def rows_per_identity(self, duplicated: bool) -> np.ndarray:
        rows = self.identity[self.duplicated] if duplicated else self.identity[~self.duplicated]
        return np.bincount(rows, minlength=len(self.identity_first_rows))


# -- one resolution per identity --------------------------------------------------------------


def _wanted_hash(value: object) -> str:
    return "" if pd.isna(value) else str(value)  # as the label's text; missing means none


def _identity_table(labels: pd.DataFrame, rows: LabelRows, has_hash: bool) -> pd.DataFrame:
    """One row per distinct (workload, pod, wanted hash) of the labels, with its label rows kept
    and duplicated."""
    first = labels.iloc[rows.identity_first_rows]
    table = pd.DataFrame({c: first[c].astype(object).to_numpy() for c in [*_WORKLOAD, "pod"]})
    table["wanted_hash"] = [_wanted_hash(v) for v in first["spec_hash"]] if has_hash else ""
    table["kept_rows"] = rows.rows_per_identity(duplicated=False)
    table["duplicate_rows"] = rows.rows_per_identity(duplicated=True)
    return table


def _resolve_identities(table: pd.DataFrame, index: SpecIndex, pod_spec_fallback: bool) -> list[Resolution | None]:
    """Each identity's resolution; None for one seen only in duplicated rows (never joined)."""
    return [resolve(index, (ns, kind, name), pod, wanted or None, pod_spec_fallback) if kept else None
            for ns, kind, name, pod, wanted, kept in
            table[[*_WORKLOAD, "pod", "wanted_hash", "kept_rows"]].itertuples(index=False)]


def _request_texts(joined: Sequence[Resolution | None]) -> list[str | None]:
    """Each joined identity's request as JSON (None where it does not join), dumped once per
    distinct request object: the identities of one workload share its spec."""
    by_request: dict[int, str] = {}
    texts: list[str | None] = []
    for resolution in joined:
        request = resolution.request if resolution is not None else None
        if request is not None and id(request) not in by_request:
            by_request[id(request)] = request_json(request)
        texts.append(by_request[id(request)] if request is not None else None)
    return texts


def _with_resolutions(table: pd.DataFrame, resolutions: Sequence[Resolution | None]) -> tuple[pd.DataFrame, list[str]]:
    """The identity table with where each identity joins (`joined_*`, `request_code`) or why not
    (`reason`, `detail`), and the distinct request JSON texts, sorted, that request_code indexes."""
    joined = [r if r is not None and r.request is not None else None for r in resolutions]
    request_code, texts = pd.factorize(pd.Series(_request_texts(joined), dtype=object), sort=True)
    table = table.assign(
        joined=np.array([r is not None for r in joined], dtype=bool),
        joined_kind=[r.workload[1] if r is not None and r.workload else "" for r in joined],
        joined_name=[r.workload[2] if r is not None and r.workload else "" for r in joined],
        join_rule=[r.rule if r is not None else "" for r in joined],
        spec_hash=[r.spec_hash if r is not None else "" for r in joined],
        request_code=request_code,
        reason=[r.reason if r is not None else "" for r in resolutions],
        detail=[r.detail if r is not None else "" for r in resolutions],
    )
    return table, [str(text) for text in texts]


# -- the dataset frame ------------------------------------------------------------------------


def _texts(values: Sequence[str], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    return pd.array(list(values), dtype="str").take(codes)


def _label_texts(column: pd.Series, positions: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A label text column at `positions`, as str. A categorical (as read_labels_for_join reads
    it) is taken by its codes: Arrow copies bytes, where astype would build a str object per row."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = pd.array(column.cat.categories.astype("str"), dtype="str")
        return categories.take(column.cat.codes.to_numpy()[positions], allow_fill=True)
    return column.iloc[positions].astype("str").array


def _dataset_frame(labels: pd.DataFrame, rows: LabelRows, table: pd.DataFrame, categories: list[str]) -> pd.DataFrame:
    """The joined label rows in ROW_KEY order, each identity's join taken by code: no string is
    built per row, and request_json stores each distinct spec once."""
    positions = rows.kept_in_order[table["joined"].to_numpy()[rows.identity[rows.kept_in_order]]]
    identity = rows.identity[positions]
    columns: dict[str, Any] = {
        "window_start": labels["window_start"].array.take(positions),
        "window_seconds": labels["window_seconds"].to_numpy()[positions].astype("int64"),
        "namespace": _label_texts(labels["namespace"], positions),
        "pod": _label_texts(labels["pod"], positions),
        "request_json": pd.Categorical.from_codes(table["request_code"].to_numpy()[identity],
                                                  categories=pd.Index(categories, dtype="str")),
        "power_watts": labels["power_watts"].to_numpy()[positions].astype("float64"),
        "energy_joules": labels["energy_joules"].to_numpy()[positions].astype("float64"),
    }
    for column, source in [("workload_kind", "joined_kind"), ("workload_name", "joined_name"),
                           ("join_rule", "join_rule"), ("spec_hash", "spec_hash")]:
        columns[column] = _texts(table[source], identity)
    return pd.DataFrame(columns, columns=list(DATASET_COLUMNS))


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


def _unjoined(labels: pd.DataFrame, rows: LabelRows, table: pd.DataFrame) -> dict[str, Tally]:
    """Per reason, the label rows that do not join; repeated pod-windows first."""
    unjoined: dict[str, Tally] = {}
    duplicate_rows = table["duplicate_rows"].to_numpy()
    if duplicate_rows.any():
        first = np.flatnonzero(rows.duplicated)[:EXAMPLES_PER_REASON]
        examples = [f"{ns}/{pod} at {ts}" for ts, ns, pod in labels[ROW_KEY].iloc[first].itertuples(index=False)]
        unjoined["duplicate-row"] = _identity_tally(table, duplicate_rows, examples=examples)
    failed = table.loc[(table["kept_rows"] > 0) & ~table["joined"]]
    for reason, identities in failed.groupby("reason", sort=True):
        details = sorted({f"{ns}/{kind}/{name}: {detail}"
                          for ns, kind, name, detail in identities[[*_WORKLOAD, "detail"]].itertuples(index=False)})
        unjoined[str(reason)] = _identity_tally(identities, identities["kept_rows"].to_numpy(), examples=details)
    return unjoined


def _summary(labels: pd.DataFrame, rows: LabelRows, table: pd.DataFrame, index: SpecIndex) -> JoinSummary:
    joined = table.loc[table["joined"]]
    joined_workload = ["namespace", "joined_kind", "joined_name"]  # the dataset's workload, not the label's
    by_rule = {str(rule): _identity_tally(identities, identities["kept_rows"].to_numpy(), joined_workload)
               for rule, identities in joined.groupby("join_rule", sort=True)}
    unused = [f"{ns}/{kind}/{name}" for ns, kind, name in index.keys() if (ns, kind, name) not in index.used]
    all_rows = (table["kept_rows"] + table["duplicate_rows"]).to_numpy()
    return JoinSummary(
        label_rows=len(labels),
        label_pods=int(table.loc[all_rows > 0, ["namespace", "pod"]].drop_duplicates().shape[0]),
        label_workloads=int(table.loc[all_rows > 0, _WORKLOAD].drop_duplicates().shape[0]),
        joined=_identity_tally(joined, joined["kept_rows"].to_numpy(), joined_workload),
        by_rule=by_rule,
        unjoined=_unjoined(labels, rows, table),
        specs=len(index),
        specs_joined=len(index.used),
        specs_unused_examples=unused[:EXAMPLES_PER_REASON],
    )


def build_dataset(labels: pd.DataFrame, requests: Iterable[InferenceRequest], *,
                  pod_spec_fallback: bool = False) -> tuple[pd.DataFrame, JoinSummary]:
    """Join the labels table (trainer.labels columns, optionally `spec_hash`) to the specs.
    Text columns may be str, object or categorical."""
    _check_label_columns(labels)
    index = SpecIndex(requests)
    has_hash = "spec_hash" in labels.columns
    rows = LabelRows.of(labels, labels["spec_hash"] if has_hash else None)
    table = _identity_table(labels, rows, has_hash)
    table, categories = _with_resolutions(table, _resolve_identities(table, index, pod_spec_fallback))
    frame = _dataset_frame(labels, rows, table, categories)
    return frame, _summary(labels, rows, table, index)


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
    _release_arrow_memory()
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


def read_labels_for_join(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The label columns the join uses (not `kepler_line`), with the text columns read as
    categoricals: millions of rows name a few thousand pods, so each string is held once."""
    present = set(parquet_column_names(path, "a labels table (train labels' output)"))
    columns = [c for c in (*LABEL_COLUMNS, "spec_hash") if c in present and c != "kepler_line"]
    labels = read_parquet_input(path, "a labels table (train labels' output)", columns=columns,
                                read_dictionary=[c for c in columns if c in _TEXT_COLUMNS])
    _release_arrow_memory()
    return labels


def _release_arrow_memory() -> None:
    """Hand the memory Arrow's allocator kept from reading back to the system: after a large
    read it holds about as much again as the frame (GBs at millions of rows)."""
    pa.default_memory_pool().release_unused()


def run_dataset(labels_path: str | os.PathLike[str], requests_paths: Sequence[str | os.PathLike[str]],
                out: str | os.PathLike[str], *, pod_spec_fallback: bool = False) -> JoinSummary:
    """`energetiscope train dataset`: read labels and NDJSON specs, join, write the dataset and
    its join summary (`<out>.summary.json`)."""
    labels = read_labels_for_join(labels_path)
    requests = [r for path in requests_paths for r in read_requests(path)]
    frame, summary = build_dataset(labels, requests, pod_spec_fallback=pod_spec_fallback)
    write_dataset(frame, out)
    write_summary(summary.to_dict(), out)
    return summary
