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
`request_json` is the joined InferenceRequest as JSON (`model_dump(mode="json")`).
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

from trainer.atomic import write_atomically, write_text_atomically
from trainer.collect import controller_of, read_requests
from trainer.labels import LABEL_COLUMNS
from webhook.schema import WORKLOAD_KINDS, InferenceRequest, spec_hash

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
ROW_KEY = ["window_start", "namespace", "pod"]
_WORKLOAD = ["namespace", "workload_kind", "workload_name"]
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

    def describe(self) -> str:
        lines = [
            f"labels: {self.label_rows} rows, {self.label_pods} pods, {self.label_workloads} workloads",
            f"joined: {self.joined.rows} rows, {self.joined.pods} pods, {self.joined.workloads} workloads "
            f"({', '.join(f'{rule}: {t.pods} pods' for rule, t in sorted(self.by_rule.items()))})",
        ]
        for reason, tally in sorted(self.unjoined.items()):
            lines.append(f"not joined, {reason}: {tally.rows} rows, {tally.pods} pods, {tally.workloads} workloads,"
                         f" e.g. {'; '.join(tally.examples[:3])}")
        lines.append(f"specs: {self.specs} workloads collected, {self.specs_joined} joined")
        return "\n".join(lines)


def _tally(rows: pd.DataFrame, examples: Sequence[str] = ()) -> Tally:
    return Tally(
        rows=len(rows),
        pods=int(rows[["namespace", "pod"]].drop_duplicates().shape[0]),
        workloads=int(rows[_WORKLOAD].drop_duplicates().shape[0]),
        examples=list(examples)[:EXAMPLES_PER_REASON],
    )


def build_dataset(labels: pd.DataFrame, requests: Iterable[InferenceRequest], *,
                  pod_spec_fallback: bool = False) -> tuple[pd.DataFrame, JoinSummary]:
    """Join the labels table (trainer.labels columns, optionally `spec_hash`) to the specs."""
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns and c != "kepler_line"]
    if missing:
        raise ValueError(f"labels table lacks columns {missing}")
    index = SpecIndex(requests)
    has_hash = "spec_hash" in labels.columns
    duplicated = labels.duplicated(ROW_KEY, keep="first").to_numpy()
    rows = labels.loc[~duplicated].copy()
    rows["_hash"] = rows["spec_hash"].fillna("").astype(str) if has_hash else ""

    # One resolution per distinct (workload, pod, hash): thousands at most, not one per row.
    identity = ["namespace", "workload_kind", "workload_name", "pod", "_hash"]
    resolutions: dict[tuple[str, ...], Resolution] = {}
    for ns, kind, name, pod, wanted in rows[identity].drop_duplicates().itertuples(index=False):
        resolutions[(ns, kind, name, pod, wanted)] = resolve(index, (ns, kind, name), pod, wanted or None, pod_spec_fallback)
    keys = list(zip(*(rows[c] for c in identity)))
    found = [resolutions[k] for k in keys]
    joined_mask = np.fromiter((r.request is not None for r in found), dtype=bool, count=len(found))

    unjoined: dict[str, Tally] = {}
    if duplicated.any():
        dup_rows = labels.loc[duplicated]
        examples = [f"{ns}/{pod} at {ts}" for ts, ns, pod in dup_rows[ROW_KEY].head(EXAMPLES_PER_REASON).itertuples(index=False)]
        unjoined["duplicate-row"] = _tally(dup_rows, examples)
    failed = rows.loc[~joined_mask]
    for reason in sorted({r.reason for r in found if r.request is None}):
        mask = np.fromiter((r.reason == reason for r in found), dtype=bool, count=len(found))
        subset = rows.loc[mask]
        details = sorted({f"{k[0]}/{k[1]}/{k[2]}: {resolutions[k].detail}" for k in set(zip(*(subset[c] for c in identity)))})
        unjoined[reason] = _tally(subset, details)
    assert len(failed) == sum(t.rows for r, t in unjoined.items() if r != "duplicate-row")

    kept = rows.loc[joined_mask]
    kept_found = [r for r in found if r.request is not None]
    texts = {id(r.request): request_json(r.request) for r in kept_found}  # one JSON per distinct spec
    frame = pd.DataFrame(
        {
            "window_start": kept["window_start"].to_numpy(),
            "window_seconds": kept["window_seconds"].astype("int64").to_numpy(),
            "namespace": kept["namespace"].astype(str).to_numpy(),
            "pod": kept["pod"].astype(str).to_numpy(),
            "workload_kind": [r.workload[1] for r in kept_found],  # type: ignore[index]
            "workload_name": [r.workload[2] for r in kept_found],  # type: ignore[index]
            "join_rule": [r.rule for r in kept_found],
            "spec_hash": [r.spec_hash for r in kept_found],
            "request_json": pd.Categorical([texts[id(r.request)] for r in kept_found]),
            "power_watts": kept["power_watts"].astype("float64").to_numpy(),
            "energy_joules": kept["energy_joules"].astype("float64").to_numpy(),
        },
        columns=list(DATASET_COLUMNS),
    )
    frame = frame.sort_values(ROW_KEY, kind="stable").reset_index(drop=True)
    assert not frame.duplicated(ROW_KEY).any(), "one row per pod-window"
    by_rule = {rule: _tally(frame[frame["join_rule"] == rule]) for rule in sorted(set(frame["join_rule"]))}
    unused = [f"{ns}/{kind}/{name}" for ns, kind, name in index.keys() if (ns, kind, name) not in index.used]
    summary = JoinSummary(
        label_rows=len(labels),
        label_pods=int(labels[["namespace", "pod"]].drop_duplicates().shape[0]),
        label_workloads=int(labels[_WORKLOAD].drop_duplicates().shape[0]),
        joined=_tally(frame),
        by_rule=by_rule,
        unjoined=unjoined,
        specs=len(index),
        specs_joined=len(index.used),
        specs_unused_examples=unused[:EXAMPLES_PER_REASON],
    )
    return frame, summary


# -- files ------------------------------------------------------------------------------------


def write_dataset(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Parquet, atomically (request_json dictionary-encoded: one copy per distinct spec)."""
    columns = list(DATASET_COLUMNS)
    return write_atomically(path, lambda temp: frame[columns].to_parquet(temp, index=False))


def read_dataset(path: str | os.PathLike[str]) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = [c for c in DATASET_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a trainer dataset: it lacks columns {missing}")
    return frame


def summary_path(dataset_path: str | os.PathLike[str]) -> Path:
    path = Path(dataset_path)
    return path.with_name(path.name + ".summary.json")


def run_dataset(labels_path: str | os.PathLike[str], requests_paths: Sequence[str | os.PathLike[str]],
                out: str | os.PathLike[str], *, pod_spec_fallback: bool = False) -> JoinSummary:
    """`energetiscope train dataset`: read labels and NDJSON specs, join, write the dataset and
    its join summary (`<out>.summary.json`)."""
    labels = pd.read_parquet(labels_path)
    requests = [r for path in requests_paths for r in read_requests(path)]
    frame, summary = build_dataset(labels, requests, pod_spec_fallback=pod_spec_fallback)
    write_dataset(frame, out)
    write_text_atomically(summary_path(out), json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
