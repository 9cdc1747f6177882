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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def _sorted_categorical(texts: pd.Series) -> pd.Series:
    """A text column as a categorical whose categories are in sorted order, so that grouping on
    its codes orders groups as grouping on the texts would."""
    categorical = texts.astype("category")
    categories = categorical.cat.categories
    return categorical if categories.is_monotonic_increasing else categorical.cat.reorder_categories(categories.sort_values())


_TEXT_KEYS = [*GROUP_COLUMNS, "pod", "spec_hash", "request_json"]


def _text_keys(dataset: pd.DataFrame) -> list[str]:
    """The text columns a target is keyed by: `group` too where the dataset has it (one per workload)."""
    return [*_TEXT_KEYS, CV_GROUP_COLUMN] if CV_GROUP_COLUMN in dataset.columns else list(_TEXT_KEYS)


def _row_counts(dataset: pd.DataFrame, column: str) -> np.ndarray:
    """Per dataset row, the windows or pods it stands for: the column where present, 1 otherwise."""
    if column in dataset.columns:
        return dataset[column].to_numpy(dtype=np.int64)
    return np.ones(len(dataset), dtype=np.int64)


def _per_pod(dataset: pd.DataFrame, unit: str) -> pd.DataFrame:
    """One row per pod (and UTC day for `pod-day`) and spec. Grouped on integer codes (texts as
    categoricals, the day as a timestamp), never on a string per window: the dataset has millions
    of windows and a spec's JSON is ~1 KB. The texts come back once per pod."""
    start = pd.to_datetime(dataset["window_start"], utc=True)
    active = dataset["energy_joules"].to_numpy(dtype=np.float64) > 0
    text_keys = _text_keys(dataset)
    window_counts = _row_counts(dataset, WINDOW_COUNT_COLUMN)
    rows = pd.DataFrame({
        **{c: _sorted_categorical(dataset[c]) for c in text_keys},
        "window_count": window_counts,
        "active_window_count": np.where(active, window_counts, 0),
        "pod_count": _row_counts(dataset, POD_COUNT_COLUMN),
        "active_joules": np.where(active, dataset["energy_joules"], 0.0),
        "active_seconds": np.where(active, dataset["window_seconds"], 0),
        "first_window": start,
    })
    keys = list(text_keys)
    if unit == "pod-day":
        rows["day"] = start.dt.floor("D")
        keys.append("day")
    pods = (
        rows.groupby(keys, sort=True, observed=True)
        .agg(windows=("window_count", "sum"), active_windows=("active_window_count", "sum"),
             pod_count=("pod_count", "max"), energy_joules=("active_joules", "sum"),
             active_seconds=("active_seconds", "sum"), first_window=("first_window", "min"),
             last_window=("first_window", "max"))
        .reset_index()
    )
    for column in text_keys:
        pods[column] = pods[column].astype("str")
    # A UTC day sorts as its "%Y-%m-%d" text does: the groups are in the order grouping on the text gives.
    period = pods.pop("day").dt.strftime("%Y-%m-%d") if unit == "pod-day" else "all"
    pods.insert(len(text_keys), "period", period)
    pods["power_watts"] = pods["energy_joules"] / pods["active_seconds"].where(pods["active_seconds"] > 0)
    return pods


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


def build_targets(dataset: pd.DataFrame, unit: str = DEFAULT_TARGET_UNIT,
                  min_active_windows: int = DEFAULT_MIN_ACTIVE_WINDOWS) -> TrainingTable:
    """Aggregate the dataset's pod-windows into targets (see the module docstring). For the
    `workload` unit, `pod` holds one of the spec's pods and `pods` how many there are."""
    if unit not in TARGET_UNITS:
        raise ValueError(f"target unit must be one of {TARGET_UNITS}, got {unit!r}")
    if min_active_windows < 1:
        raise ValueError("min_active_windows must be at least 1")
    pods = _per_pod(dataset, unit)
    enough = pods["active_windows"].to_numpy() >= min_active_windows
    excluded = pods.loc[~enough]
    pods = pods.loc[enough].reset_index(drop=True)
    targets = _per_spec(pods) if unit == "workload" else pods
    texts = targets.pop("request_json")
    parsed: dict[str, InferenceRequest] = {}
    requests = [parsed.setdefault(t, InferenceRequest.model_validate_json(t)) for t in texts]
    return TrainingTable(
        frame=targets,
        requests=requests,
        unit=unit,
        min_active_windows=min_active_windows,
        source_rows=int(targets["windows"].sum()),
        excluded_pods=int(excluded[["namespace", "pod"]].drop_duplicates().shape[0]),
        excluded_rows=int(excluded["windows"].sum()),
    )
