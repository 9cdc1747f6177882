"""Training targets from the dataset's pod-windows: one row per workload spec (default), per pod,
or per pod and UTC day.

The model predicts the average power of one pod from its spec. First every pod's windows become
its mean power: the energy summed over the windows in which it drew energy (> 0 J) divided by
their duration. A window with exactly 0 J is a pod that was not running (a Job's pod after
completion, one still Pending), not a pod idling at 0 W: Kepler attributes idle power to running
containers. A pod needs `min_active_windows` such windows to count (fewer is a noisy mean); the
rest are counted, not dropped silently.

Then, by default (`workload`), the pods of one workload spec (namespace, kind, name, spec hash)
become one row: the mean of their pods' powers. Why not thousands of windows, nor one row per
pod: all windows and all pods of a workload have the same spec, i.e. the same features. As KNN
rows, a 50-replica Deployment would fill every neighbour slot of a query with itself, weigh
workloads by their replica count and age, and put training points at distance 0 from each
other, which collapses AnchoredKNN's trust radius (twice the 99th percentile of nearest-neighbour
distances) to 0, so that every new spec would get the prior. One row per spec gives each workload
one vote and keeps distances between different specs. `pod` and `pod-day` (day-to-day variation
of long-lived pods) are there for comparison and for data with one pod per spec.

Optional dataset columns, written by `trainer.measurements` (a measurement table's row is one
dataset row standing for many pods and windows): `window_count`, the windows a row stands for
(counted by the `min_active_windows` gate and in `windows`; 1 without the column), `pod_count`,
the pods it stands for (summed into `pods`; 1 without it), and `group`, the cross-validation
group of its workload (`TrainingTable.groups`; the workload itself without it).

Out of core: `read_targets` (what `train fit` and `train evaluate` use) reads a dataset file in
batches of rows, texts as Arrow dictionaries, and adds each batch's windows into per-pod sums
(`_PodSums`), so the per-window rows are never all in memory; `build_targets` does the same with
a frame in memory as one batch. Within a batch pandas sums a pod's windows (compensated
summation, as one groupby over the whole dataset did); the batches' sums are then added, so a
pod split across batches may differ from the one-groupby sum in the last bits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.inputs import InputFileError, parquet_column_names, release_arrow_memory
from webhook.model.schema import InferenceRequest

TARGET_UNITS: tuple[str, ...] = ("workload", "pod", "pod-day")
DEFAULT_TARGET_UNIT = "workload"
DEFAULT_MIN_ACTIVE_WINDOWS = 5
GROUP_COLUMNS = ["namespace", "workload_kind", "workload_name"]
CV_GROUP_COLUMN = "group"  # optional: cross-validation groups, e.g. a model family
WINDOW_COUNT_COLUMN = "window_count"  # optional: windows one dataset row stands for
POD_COUNT_COLUMN = "pod_count"  # optional: pods one dataset row stands for


@dataclass(frozen=True)
class TrainingTable:
    """Targets with their specs and workload groups, aligned row by row."""

    frame: pd.DataFrame  # one row per target: identity, windows, active_windows, power_watts, ...
    requests: list[InferenceRequest]
    unit: str
    min_active_windows: int
    source_rows: int  # pod-windows behind the targets
    excluded_pods: int  # pods with too few active windows
    excluded_rows: int

    @property
    def power_watts(self) -> np.ndarray:
        return self.frame["power_watts"].to_numpy(dtype=np.float64)

    @property
    def workload_keys(self) -> np.ndarray:
        """The workload of each target, as `namespace/Kind/name`."""
        return (self.frame["namespace"] + "/" + self.frame["workload_kind"] + "/" + self.frame["workload_name"]).to_numpy()

    @property
    def groups(self) -> np.ndarray:
        """Cross-validation's groups: the dataset's `group` column where it has one (say, a model
        family, so that no fold tests a model on its own family), the workload otherwise."""
        if CV_GROUP_COLUMN in self.frame.columns:
            return self.frame[CV_GROUP_COLUMN].astype(str).to_numpy()
        return self.workload_keys

    @property
    def pods(self) -> int:
        """Distinct pods behind the targets."""
        if self.unit == "workload":
            return int(self.frame["pods"].sum())
        distinct = self.frame.drop_duplicates(["namespace", "pod"])
        return int(distinct[POD_COUNT_COLUMN].sum()) if POD_COUNT_COLUMN in distinct.columns else len(distinct)

    @property
    def workloads(self) -> int:
        return int(len(np.unique(self.workload_keys))) if len(self.frame) else 0

    def per_workload(self) -> pd.DataFrame:
        """Per workload: targets, pods and mean target power (W)."""
        grouped = self.frame.groupby(GROUP_COLUMNS, sort=True)
        pods = grouped["pods"].sum() if self.unit == "workload" else grouped["pod"].nunique()
        return pd.DataFrame({"targets": grouped.size(), "pods": pods,
                             "mean_power_watts": grouped["power_watts"].mean()}).reset_index()

    def describe_target(self) -> str:
        per = "averaged over the pods of each workload spec" if self.unit == "workload" else f"one target per {self.unit}"
        return (f"mean power (W) of each pod over its windows with energy > 0 J (at least "
                f"{self.min_active_windows} such windows), {per}")

    def data_sha256(self) -> str:
        """Hash of what the model learns from (specs and targets), independent of row order."""
        records = sorted(
            json.dumps([*map(str, row[:-1]), round(float(row[-1]), 9)])
            for row in self.frame[[*GROUP_COLUMNS, "pod", "spec_hash", "period", "power_watts"]].itertuples(index=False)
        )
        digest = hashlib.sha256()
        for record in records:
            digest.update(record.encode() + b"\n")
        for text in sorted({r.model_dump_json() for r in self.requests}):
            digest.update(text.encode() + b"\n")
        return digest.hexdigest()

    def subset(self, mask: np.ndarray) -> "TrainingTable":
        indices = np.flatnonzero(mask)
        return TrainingTable(
            frame=self.frame.iloc[indices].reset_index(drop=True),
            requests=[self.requests[i] for i in indices],
            unit=self.unit,
            min_active_windows=self.min_active_windows,
            source_rows=int(self.frame["windows"].iloc[indices].sum()),
            excluded_pods=self.excluded_pods,
            excluded_rows=self.excluded_rows,
        )


_TEXT_KEYS = [*GROUP_COLUMNS, "pod", "spec_hash", "request_json"]
# Rows per batch when reading a dataset file for its targets: ~100 bytes a row in flight.
READ_BATCH_ROWS = 1 << 19
DATASET_WHAT = "a trainer dataset (train dataset's output)"


def _text_keys(columns: Iterable[str]) -> list[str]:
    """The text columns a target is keyed by: `group` too where the dataset has it (one per workload)."""
    return [*_TEXT_KEYS, CV_GROUP_COLUMN] if CV_GROUP_COLUMN in set(columns) else list(_TEXT_KEYS)


class _AppendOnlyIndex:
    """Integer keys -> their position in order of first addition, looked up a batch at a time.

    Kept as runs of pandas Indexes, each less than half as long as the one before it, a run merged
    into the one before it as soon as it is half as long: adding n keys over any number of batches
    rebuilds O(n log n) hash entries, and a lookup asks O(log n) runs, the later ones only for the
    keys the earlier missed. One Index appended to on every batch that brought a key rebuilt its
    whole hash table each time: quadratic in those batches, which a week of pods starting makes
    most batches. `python -m bench.targets_churn`: 400 batches of 200,000 rows with 2,000 new pods
    each, 18.0 s, against 33.2 s for a dict of tuples (the way keys were numbered before)."""

    def __init__(self, dtype: Any) -> None:
        self._dtype = np.dtype(dtype)
        self._runs: list[pd.Index] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Each key's position, -1 where it was never added."""
        found = np.full(len(keys), -1, dtype=np.int64)
        missing: np.ndarray | None = None  # None: every key
        offset = 0
        for run in self._runs:
            asked = keys if missing is None else keys[missing]
            if not len(asked):
                break
            hit = run.get_indexer(asked)
            known = hit >= 0
            rows = np.flatnonzero(known) if missing is None else missing[known]
            found[rows] = hit[known] + offset
            missing = np.flatnonzero(~known) if missing is None else missing[~known]
            offset += len(run)
        return found

    def add(self, fresh: np.ndarray) -> None:
        """Appends keys not added before, distinct, in the order given."""
        if not len(fresh):
            return
        self._runs.append(pd.Index(np.asarray(fresh, dtype=self._dtype)))
        self._size += len(fresh)
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            newer = self._runs.pop()
            self._runs[-1] = self._runs[-1].append(newer)

    def keys(self) -> np.ndarray:
        """Every key, by position."""
        if not self._runs:
            return np.empty(0, dtype=self._dtype)
        return np.concatenate([run.to_numpy() for run in self._runs])


class _Codes:
    """Texts -> integer codes, numbered in order of first sight, from Arrow dictionary arrays: a
    batch's dictionary (each distinct text of the batch, once) is looked up, never a row's text,
    and never one text at a time in Python. The lookup is by a 64-bit hash of each text in an
    integer hash index (`_AppendOnlyIndex`), so that the index holds integers, not the texts (at
    20,000 simulated workloads each spec's JSON is kilobytes); a text whose hash is known is
    compared with the text it stands for, so a collision is an error, never a merge. A column of
    numbers (a `group` of integers, say) is coded by its values' text.
    The mapping of the last dictionary is kept, as consecutive batches of a row group share it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._text_array = _Growing(object, None)
        self._hashes = _AppendOnlyIndex(np.uint64)
        self._last: tuple[pa.Array, np.ndarray] | None = None

    def of(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each row's code; -1 where the text is missing."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        dictionary = column.dictionary
        if self._last is not None and self._last[0].equals(dictionary):
            mapping = self._last[1]
        else:
            if not (pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type)):
                dictionary_texts = pc.cast(dictionary, pa.large_string())
            else:
                dictionary_texts = dictionary
            mapping = self._codes_of(np.asarray(dictionary_texts.to_pylist(), dtype=object))
            self._last = (dictionary, mapping)
        indices = pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(indices >= 0, mapping[np.maximum(indices, 0)] if len(mapping) else -1, -1)

    def _codes_of(self, texts: np.ndarray) -> np.ndarray:
        present = np.flatnonzero(pd.notna(texts))
        codes = np.full(len(texts), -1, dtype=np.int64)
        if not len(present):
            return codes
        texts = texts[present]
        hashes = pd.util.hash_array(texts, categorize=False)
        found = self._hashes.positions(hashes)
        if (found < 0).any():
            fresh_hashes, first = np.unique(hashes[found < 0], return_index=True)
            order = np.argsort(first, kind="stable")  # in order of first sight
            fresh = texts[found < 0][np.sort(first)]
            size = len(self.texts)
            self.texts.extend(fresh.tolist())
            self._text_array.fit(len(self.texts))[size:len(self.texts)] = fresh
            self._hashes.add(fresh_hashes[order])
            found = self._hashes.positions(hashes)
        if not np.array_equal(self._text_array.values[found], texts):
            raise ValueError("two different texts share a 64-bit hash; this dataset cannot be keyed by it")
        codes[present] = found
        return codes


class _TupleIds:
    """Dense ids for tuples of non-negative integer codes, numbered in order of first sight across
    batches, with no Python per row: the columns are folded left to right, each step mapping the
    pairs (id of the prefix, next code) through an index of the pairs seen so far."""

    _SHIFT = np.int64(1 << 31)  # codes and ids stay below it: a pair fits an int64

    def __init__(self, width: int) -> None:
        self._pairs = [_AppendOnlyIndex(np.int64) for _ in range(width)]

    def __len__(self) -> int:
        return len(self._pairs[-1])

    def ids(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        prefix = np.zeros(len(columns[0]), dtype=np.int64)
        for level, column in enumerate(columns):
            if len(column) and (column.min() < 0 or column.max() >= self._SHIFT):
                raise ValueError("tuple codes must be in [0, 2**31)")
            # A batch's rows repeat their keys (a pod's windows): each distinct pair is looked up once.
            inverse, pairs = pd.factorize(prefix * self._SHIFT + column.astype(np.int64))
            index = self._pairs[level]
            found = index.positions(pairs)
            fresh = found < 0
            if fresh.any():
                size = len(index)
                index.add(pairs[fresh])  # factorize keeps the order of first sight
                if len(index) > self._SHIFT:  # the ids are the next level's prefixes
                    raise ValueError("more than 2**31 distinct key tuples")
                found[fresh] = size + np.arange(int(fresh.sum()))
            prefix = found[inverse]
        return prefix

    def tuples(self) -> np.ndarray:
        """Each id's tuple of codes, ids x width."""
        width = len(self._pairs)
        out = np.empty((len(self), width), dtype=np.int64)
        ids = np.arange(len(self), dtype=np.int64)
        for level in range(width - 1, -1, -1):
            pairs = self._pairs[level].keys()[ids]
            out[:, level] = pairs % self._SHIFT
            ids = pairs // self._SHIFT
        return out


class _Growing:
    """A numpy array that grows as groups (or texts) appear, doubling its length."""

    def __init__(self, dtype: Any, fill: Any) -> None:
        self.values = np.full(1024, fill, dtype=dtype)
        self._fill = fill

    def fit(self, size: int) -> np.ndarray:
        if size > len(self.values):
            grown = np.full(max(size, 2 * len(self.values)), self._fill, dtype=self.values.dtype)
            grown[: len(self.values)] = self.values
            self.values = grown
        return self.values


_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


class _PodSums:
    """Per pod (and UTC day for `pod-day`) and spec, the sums of its windows, added up batch by
    batch: only the per-pod sums are kept, however many windows pass. Also what the model card
    says of the dataset (`DatasetFacts`): its first and last window and the pods per join rule."""

    def __init__(self, text_keys: Sequence[str], unit: str, window_type: pa.DataType) -> None:
        self.text_keys = list(text_keys)
        self.unit = unit
        self.window_type = window_type if pa.types.is_timestamp(window_type) else pa.timestamp("ns", tz="UTC")
        self.codes = {c: _Codes() for c in [*self.text_keys, "join_rule"]}
        self._units_per_day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000,
                               "ns": 86_400_000_000_000}[self.window_type.unit]
        self._groups = _TupleIds(len(self.text_keys) + (self.unit == "pod-day"))
        self._windows = _Growing(np.int64, 0)
        self._active_windows = _Growing(np.int64, 0)
        self._pod_count = _Growing(np.int64, _INT64_MIN)
        self._energy = _Growing(np.float64, 0.0)
        self._active_seconds = _Growing(np.int64, 0)
        self._first = _Growing(np.int64, _INT64_MAX)
        self._last = _Growing(np.int64, _INT64_MIN)
        self._rule_pods = _TupleIds(3)  # (namespace, pod, join rule)
        self.first_window = _INT64_MAX
        self.last_window = _INT64_MIN

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        if not batch.num_rows:
            return
        names = set(batch.schema.names)
        start = pc.cast(batch.column("window_start"), self.window_type).cast(pa.int64())
        start = pc.fill_null(start, _INT64_MIN).to_numpy(zero_copy_only=False)
        present = start != _INT64_MIN
        if present.any():
            self.first_window = min(self.first_window, int(start[present].min()))
            self.last_window = max(self.last_window, int(start[present].max()))
        codes = [self.codes[c].of(batch.column(c)) for c in self.text_keys]
        if "join_rule" in names:
            self._add_rule_pods(codes[0], codes[3], self.codes["join_rule"].of(batch.column("join_rule")))
        keys = list(codes)
        if self.unit == "pod-day":
            keys.append(np.where(present, np.floor_divide(start, self._units_per_day), -1))
        valid = np.logical_and.reduce([k >= 0 for k in keys])
        if not valid.all():
            keys, start = [k[valid] for k in keys], start[valid]
        if not len(start):
            return
        energy = _column(batch, "energy_joules", np.float64)[valid]
        active = energy > 0
        window_counts = _counts(batch, WINDOW_COUNT_COLUMN, names)[valid]
        groups = self._groups.ids(keys)
        rows = pd.DataFrame({
            "group": groups,
            "window_count": window_counts,
            "active_window_count": np.where(active, window_counts, 0),
            "pod_count": _counts(batch, POD_COUNT_COLUMN, names)[valid],
            "active_joules": np.where(active, energy, 0.0),
            "active_seconds": np.where(active, _column(batch, "window_seconds", np.int64)[valid], 0),
            "start": start,
        })
        part = rows.groupby("group", sort=True).agg(
            windows=("window_count", "sum"), active_windows=("active_window_count", "sum"),
            pod_count=("pod_count", "max"), energy_joules=("active_joules", "sum"),
            active_seconds=("active_seconds", "sum"), first=("start", "min"), last=("start", "max"))
        groups = part.index.to_numpy(dtype=np.int64)
        size = len(self._groups)
        np.add.at(self._windows.fit(size), groups, part["windows"].to_numpy())
        np.add.at(self._active_windows.fit(size), groups, part["active_windows"].to_numpy())
        np.maximum.at(self._pod_count.fit(size), groups, part["pod_count"].to_numpy())
        np.add.at(self._energy.fit(size), groups, part["energy_joules"].to_numpy())
        np.add.at(self._active_seconds.fit(size), groups, part["active_seconds"].to_numpy())
        np.minimum.at(self._first.fit(size), groups, part["first"].to_numpy())
        np.maximum.at(self._last.fit(size), groups, part["last"].to_numpy())

    def _add_rule_pods(self, namespaces: np.ndarray, pods: np.ndarray, rules: np.ndarray) -> None:
        valid = (namespaces >= 0) & (pods >= 0) & (rules >= 0)
        self._rule_pods.ids([namespaces[valid], pods[valid], rules[valid]])

    def _timestamps(self, values: np.ndarray) -> pd.Series:
        return pd.Series(pa.array(values, type=pa.int64()).cast(self.window_type).to_pandas()).dt.tz_convert("UTC") \
            if self.window_type.tz is not None else pd.Series(
                pa.array(values, type=pa.int64()).cast(self.window_type).to_pandas()).dt.tz_localize("UTC")

    def pods(self) -> pd.DataFrame:
        """One row per pod (and day) and spec, sorted by its texts (and day), as the texts group."""
        size = len(self._groups)
        keys = self._groups.tuples()
        pods = pd.DataFrame({c: (_sorted_categorical(self.codes[c].texts, keys[:, i]) if c == "request_json"
                                 else pd.array(self.codes[c].texts, dtype="str").take(keys[:, i])) if size else
                             pd.array([], dtype="str") for i, c in enumerate(self.text_keys)})
        if self.unit == "pod-day":
            days = pd.to_datetime(keys[:, -1] * 86_400, unit="s", utc=True)
            pods.insert(len(self.text_keys), "period", pd.array(days.strftime("%Y-%m-%d"), dtype="str"))
        else:
            pods.insert(len(self.text_keys), "period", pd.array(["all"] * size, dtype="str"))
        pods["windows"] = self._windows.fit(size)[:size]
        pods["active_windows"] = self._active_windows.fit(size)[:size]
        pods["pod_count"] = self._pod_count.fit(size)[:size]
        pods["energy_joules"] = self._energy.fit(size)[:size]
        pods["active_seconds"] = self._active_seconds.fit(size)[:size]
        pods["first_window"] = self._timestamps(self._first.fit(size)[:size])
        pods["last_window"] = self._timestamps(self._last.fit(size)[:size])
        pods = pods.sort_values([*self.text_keys, "period"], kind="stable").reset_index(drop=True)
        pods["power_watts"] = pods["energy_joules"] / pods["active_seconds"].where(pods["active_seconds"] > 0)
        return pods

    def facts(self) -> DatasetFacts:
        seen = self.first_window != _INT64_MAX
        first, last = (self._timestamps(np.array([self.first_window, self.last_window])) if seen else (None, None))
        rule_texts = pd.array(self.codes["join_rule"].texts, dtype="str")
        rules = pd.Series(rule_texts.take(self._rule_pods.tuples()[:, 2]), dtype="str")
        return DatasetFacts(first_window_start=first, last_window_start=last,
                            join_rule_pods={str(k): int(v) for k, v in rules.value_counts().items()})


def _sorted_categorical(texts: list[str], codes: np.ndarray) -> pd.Categorical:
    """`texts[codes]` as a categorical whose categories are the texts in sorted order, so it sorts
    and groups as the texts would, each text held once: one spec's JSON is kilobytes, and a
    string column repeated it for each of its pods (at 20,000 simulated workloads, 33,970 pods of
    18,868 specs, the column and its sorted copy were most of read_targets' peak)."""
    order = np.argsort(np.asarray(texts, dtype=object), kind="stable")
    rank = np.empty(len(texts), dtype=np.int64)
    rank[order] = np.arange(len(texts))
    categories = pd.Index(np.asarray(texts, dtype=object)[order], dtype=object)
    return pd.Categorical.from_codes(rank[codes], categories=categories, ordered=True)


def _column(batch: pa.RecordBatch | pa.Table, name: str, dtype: Any) -> np.ndarray:
    return np.asarray(batch.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def _counts(batch: pa.RecordBatch | pa.Table, column: str, names: set[str]) -> np.ndarray:
    """Per dataset row, the windows or pods it stands for: the column where present, 1 otherwise."""
    if column in names:
        return _column(batch, column, np.int64)
    return np.ones(batch.num_rows, dtype=np.int64)


@dataclass(frozen=True)
class DatasetFacts:
    """What the model card says of the dataset beyond its targets."""

    first_window_start: pd.Timestamp | None
    last_window_start: pd.Timestamp | None
    join_rule_pods: dict[str, int]  # pods per join rule (a pod counted once per rule it joined by)


def _per_pod(dataset: pd.DataFrame, unit: str) -> tuple[pd.DataFrame, DatasetFacts]:
    """One row per pod (and UTC day for `pod-day`) and spec, from a dataset in memory: its rows
    are one batch of `_PodSums`, as a file's row groups are in `read_targets`."""
    text_keys = _text_keys(dataset.columns)
    columns = [c for c in [*text_keys, "join_rule", "window_start", "energy_joules", "window_seconds",
                           WINDOW_COUNT_COLUMN, POD_COUNT_COLUMN] if c in dataset.columns]
    table = pa.Table.from_pandas(dataset[columns], preserve_index=False)
    sums = _PodSums(text_keys, unit, table.schema.field("window_start").type)
    sums.add(table)
    return sums.pods(), sums.facts()


def _per_spec(pods: pd.DataFrame) -> pd.DataFrame:
    keys = [*GROUP_COLUMNS, "spec_hash", "request_json", "period"]
    if CV_GROUP_COLUMN in pods.columns:
        keys.append(CV_GROUP_COLUMN)
    specs = (
        pods.groupby(keys, sort=True, observed=True)
        .agg(pods=("pod_count", "sum"), pod=("pod", "first"), windows=("windows", "sum"),
             active_windows=("active_windows", "sum"), energy_joules=("energy_joules", "sum"),
             active_seconds=("active_seconds", "sum"), first_window=("first_window", "min"),
             last_window=("last_window", "max"), power_watts=("power_watts", "mean"))
        .reset_index()
    )
    return specs


def _check_target_options(unit: str, min_active_windows: int) -> None:
    if unit not in TARGET_UNITS:
        raise ValueError(f"target unit must be one of {TARGET_UNITS}, got {unit!r}")
    if min_active_windows < 1:
        raise ValueError("min_active_windows must be at least 1")


def build_targets(dataset: pd.DataFrame, unit: str = DEFAULT_TARGET_UNIT,
                  min_active_windows: int = DEFAULT_MIN_ACTIVE_WINDOWS) -> TrainingTable:
    """Aggregate the dataset's pod-windows into targets (see the module docstring). For the
    `workload` unit, `pod` holds one of the spec's pods and `pods` how many there are."""
    _check_target_options(unit, min_active_windows)
    return _targets(_per_pod(dataset, unit)[0], unit, min_active_windows)


def read_targets(path: str | os.PathLike[str], unit: str = DEFAULT_TARGET_UNIT,
                 min_active_windows: int = DEFAULT_MIN_ACTIVE_WINDOWS,
                 batch_rows: int = READ_BATCH_ROWS) -> tuple[TrainingTable, DatasetFacts]:
    """`build_targets` of a dataset file, without reading it into memory: its rows pass in
    batches (text columns as dictionaries) and only the per-pod sums stay. With the dataset's
    facts for the model card."""
    _check_target_options(unit, min_active_windows)
    from trainer.dataset import DATASET_COLUMNS  # the dataset step's module imports nothing from here

    columns = parquet_column_names(path, DATASET_WHAT)
    missing = [c for c in DATASET_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path} is not a trainer dataset: it lacks columns {missing}")
    text_keys = _text_keys(columns)
    wanted = [c for c in [*text_keys, "join_rule", "window_start", "energy_joules", "window_seconds",
                          WINDOW_COUNT_COLUMN, POD_COUNT_COLUMN] if c in columns]
    text_columns = [*text_keys, "join_rule"]
    try:
        # pre_buffer off: with it (pyarrow's default) the reader keeps every row group's read-ahead
        # buffers until the file is closed, so memory grew with the dataset: read_targets of 2,000
        # simulated workloads peaked at 498 MiB over 1 day and 839 MiB over 7 (155 MiB of
        # energy_joules and window_start alone still allocated after the last batch); 496 and
        # 528 MiB without it.
        source = pq.ParquetFile(path, read_dictionary=text_columns, pre_buffer=False)
        sums = _PodSums(text_keys, unit, source.schema_arrow.field("window_start").type)
        # A row group at a time: one iterator over the file decodes as many row groups ahead as a
        # batch spans, each with its own dictionary of specs. At 20,000 simulated workloads
        # (122,880-row groups) Arrow held 264 MiB at most that way, 122 MiB a group at a time.
        for row_group in range(source.num_row_groups):
            for batch in source.iter_batches(batch_size=batch_rows, row_groups=[row_group], columns=wanted):
                sums.add(batch)
    except (pa.ArrowException, OSError) as exc:
        raise InputFileError(path, DATASET_WHAT, str(exc).strip().splitlines()[0]) from None
    # Before the specs are parsed and the model is fitted, which would otherwise come on top of
    # what the batches' decoding left in Arrow's pool.
    release_arrow_memory()
    return _targets(sums.pods(), unit, min_active_windows), sums.facts()


def _targets(pods: pd.DataFrame, unit: str, min_active_windows: int) -> TrainingTable:
    enough = pods["active_windows"].to_numpy() >= min_active_windows
    excluded = pods.loc[~enough]
    pods = pods.loc[enough].reset_index(drop=True)
    targets = _per_spec(pods) if unit == "workload" else pods
    texts = targets.pop("request_json")
    parsed: dict[str, InferenceRequest] = {}  # one object per spec, parsed once however many pods share it
    requests = [parsed[t] if t in parsed else parsed.setdefault(t, InferenceRequest.model_validate_json(t)) for t in texts]
    return TrainingTable(
        frame=targets,
        requests=requests,
        unit=unit,
        min_active_windows=min_active_windows,
        source_rows=int(targets["windows"].sum()),
        excluded_pods=int(excluded[["namespace", "pod"]].drop_duplicates().shape[0]),
        excluded_rows=int(excluded["windows"].sum()),
    )
