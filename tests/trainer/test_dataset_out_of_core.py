"""`train dataset` out of core (DuckDB) against a plain in-memory join written here from the rules.

The reference below is the join as pandas does it with every row in memory: keep the first row of
each (window_start, namespace, pod) in label order, resolve each row's (workload, pod, spec hash)
with `trainer.dataset.resolve`, keep the rows that join, sort by (window_start, namespace, pod).
The labels are shuffled, repeat some pod-windows (with other energies, so keeping the wrong one
shows) and mix every join rule; the out-of-core join reads them from a Parquet file in many small
batches (repeats fall across batch boundaries) and must write exactly the reference's frame.
Under a memory limit below what it sorts, DuckDB spills to disk and the rows are the same. An
interrupted join leaves no dataset, no temporary file and no spill directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import trainer.dataset as dataset_module
from tests.trainer.test_dataset import MIXED_SPECS, T0
from trainer.collect import write_requests
from trainer.dataset import (
    DATASET_COLUMNS,
    SpecIndex,
    build_dataset,
    join_labels_file,
    read_dataset,
    request_json,
    resolve,
    run_dataset,
)
from trainer.labels import LABEL_COLUMNS
from webhook.model.schema import spec_hash

ROW_KEY = ["window_start", "namespace", "pod"]
# (pod, label kind, label name, spec hash the labels name): every rule and reason of MIXED_SPECS.
PODS = [
    ("api-7d9f-a1", "Deployment", "api", None), ("api-7d9f-b2", "ReplicaSet", "api-7d9f", None),
    ("api-7d9f-c3", "Pod", "api-7d9f-c3", None), ("db-0", "StatefulSet", "db", "from-spec"),
    ("db-1", "StatefulSet", "db", None), ("old-5c-z", "ReplicaSet", "old-5c", None),
    ("gone-1", "Deployment", "gone", None), ("agent-x1", "DaemonSet", "agent", None),
] + [(f"web-{i}", "Deployment", "api", None) for i in range(40)]


def shuffled_labels(windows: int, seed: int = 3) -> pd.DataFrame:
    """Every pod in every window, shuffled, with 2% of the pod-windows repeated later at 999 J."""
    rng = np.random.default_rng(seed)
    db_v2 = next(r for r in MIXED_SPECS if r.workload_name == "db" and r.containers[0].req_cpu_mcpu == 2000)
    pod_of_row = np.repeat(np.arange(len(PODS)), windows)
    column = lambda i: pd.array([p[i] for p in PODS], dtype="str").take(pod_of_row)  # noqa: E731
    frame = pd.DataFrame({
        "window_start": (T0 + pd.to_timedelta(np.tile(np.arange(windows), len(PODS)), unit="min")).as_unit("ns"),
        "window_seconds": 60, "namespace": pd.array(["apps"] * len(pod_of_row), dtype="str"),
        "pod": column(0), "workload_kind": column(1), "workload_name": column(2),
        "energy_joules": rng.uniform(1, 100, len(pod_of_row)),
        "spec_hash": pd.array([spec_hash(db_v2) if p[3] else None for p in PODS], dtype="str").take(pod_of_row),
    })
    repeats = frame.sample(frac=0.02, random_state=seed).assign(energy_joules=999.0)
    frame = pd.concat([frame.sample(frac=1.0, random_state=seed), repeats], ignore_index=True)
    frame["power_watts"] = frame["energy_joules"] / 60
    frame["kepler_line"] = "kepler-0.10"
    return frame[[*LABEL_COLUMNS, "spec_hash"]]


def reference_join(labels: pd.DataFrame, pod_spec_fallback: bool) -> pd.DataFrame:
    index = SpecIndex(MIXED_SPECS)
    keys = ["namespace", "workload_kind", "workload_name", "pod", "spec_hash"]
    kept = labels[~labels.duplicated(ROW_KEY, keep="first")].astype({"spec_hash": object})
    kept = kept.assign(spec_hash=kept["spec_hash"].where(kept["spec_hash"].notna(), ""))
    resolutions = []
    for namespace, kind, name, pod, wanted in kept[keys].drop_duplicates().itertuples(index=False):
        found = resolve(index, (namespace, kind, name), pod, wanted or None, pod_spec_fallback)
        if found.request is not None:
            resolutions.append({"namespace": namespace, "workload_kind": kind, "workload_name": name, "pod": pod,
                                "spec_hash": wanted, "joined_kind": found.workload[1], "joined_name": found.workload[2],
                                "join_rule": found.rule, "joined_hash": found.spec_hash,
                                "request_json": request_json(found.request)})
    rows = kept.merge(pd.DataFrame(resolutions).astype({c: object for c in keys}), on=keys, how="inner")
    rows = rows.drop(columns=["workload_kind", "workload_name", "spec_hash"]).rename(columns={
        "joined_kind": "workload_kind", "joined_name": "workload_name", "joined_hash": "spec_hash"})
    rows["request_json"] = pd.Categorical(rows["request_json"], categories=pd.Index(sorted(set(rows["request_json"])), dtype="str"))
    rows = rows.sort_values(ROW_KEY, kind="stable").reset_index(drop=True)
    for column in ["namespace", "pod", "workload_kind", "workload_name", "join_rule", "spec_hash"]:
        rows[column] = rows[column].astype("str")
    return rows[list(DATASET_COLUMNS)]


@pytest.mark.parametrize("pod_spec_fallback", [False, True])
def test_the_out_of_core_join_writes_the_in_memory_join(tmp_path: Path, pod_spec_fallback: bool) -> None:
    labels = shuffled_labels(windows=300)  # 14,400 pod-windows and 288 repeats
    labels.to_parquet(tmp_path / "labels.parquet", index=False)
    requests = write_requests(MIXED_SPECS, tmp_path / "specs.ndjson")
    expected = reference_join(labels, pod_spec_fallback)

    out = tmp_path / "out" / "dataset.parquet"
    summary = join_labels_file(tmp_path / "labels.parquet", [*MIXED_SPECS], out, pod_spec_fallback=pod_spec_fallback,
                               memory_limit="16MB", batch_rows=1000)
    written = read_dataset(out)
    pd.testing.assert_frame_equal(written, expected, check_exact=True)
    assert summary.unjoined["duplicate-row"].rows == 288
    assert summary.joined.rows == len(expected)
    assert os.listdir(out.parent) == ["dataset.parquet"]  # no temporary file, no spill directory

    in_memory, in_memory_summary = build_dataset(labels, MIXED_SPECS, pod_spec_fallback=pod_spec_fallback,
                                                 batch_rows=777)
    pd.testing.assert_frame_equal(in_memory, expected, check_exact=True)
    assert in_memory_summary == summary
    assert run_dataset(tmp_path / "labels.parquet", [requests], tmp_path / "again.parquet",
                       pod_spec_fallback=pod_spec_fallback) == summary


def test_a_join_larger_than_its_memory_limit_spills_and_gives_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = shuffled_labels(windows=50_000, seed=11)  # 2.4M pod-windows: 118 MB of rows to sort at 48 bytes each
    labels.to_parquet(tmp_path / "labels.parquet", index=False)
    spilled_bytes: list[int] = []
    original = dataset_module._JoinPass._batch

    def watch_spill(self: object, batch: object) -> object:
        spill = [d for d in tmp_path.iterdir() if d.name.startswith(".small.parquet.spill-")]
        spilled_bytes.append(sum(f.stat().st_size for d in spill for f in d.rglob("*") if f.is_file()))
        return original(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(dataset_module._JoinPass, "_batch", watch_spill)
    small = join_labels_file(tmp_path / "labels.parquet", MIXED_SPECS, tmp_path / "small.parquet",
                             memory_limit="100MB", batch_rows=100_000)
    monkeypatch.setattr(dataset_module._JoinPass, "_batch", original)
    ample = join_labels_file(tmp_path / "labels.parquet", MIXED_SPECS, tmp_path / "ample.parquet", memory_limit="2GB")
    assert max(spilled_bytes) > 20 * 2**20, f"DuckDB spilled {max(spilled_bytes)} bytes"  # 51 MiB measured
    assert pq.read_table(tmp_path / "small.parquet").equals(pq.read_table(tmp_path / "ample.parquet"))
    assert small == ample and small.joined.rows > 2_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ample.parquet", "labels.parquet", "small.parquet"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interrupted_join_leaves_no_dataset_and_the_old_one_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: type[BaseException]
) -> None:
    labels_path = tmp_path / "labels.parquet"
    shuffled_labels(windows=100).to_parquet(labels_path, index=False)
    work = tmp_path / "work"
    work.mkdir()
    calls = {"n": 0}
    original = dataset_module._JoinPass._batch

    def second_batch_fails(self: object, batch: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise failure("interrupted")
        return original(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(dataset_module._JoinPass, "_batch", second_batch_fails)
    with pytest.raises(failure):
        join_labels_file(labels_path, MIXED_SPECS, work / "dataset.parquet", batch_rows=500)
    assert os.listdir(work) == []

    monkeypatch.setattr(dataset_module._JoinPass, "_batch", original)
    join_labels_file(labels_path, MIXED_SPECS, work / "dataset.parquet")
    before = (work / "dataset.parquet").read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(dataset_module._JoinPass, "_batch", second_batch_fails)
    with pytest.raises(failure):
        join_labels_file(labels_path, MIXED_SPECS, work / "dataset.parquet", batch_rows=500)
    assert (work / "dataset.parquet").read_bytes() == before and os.listdir(work) == ["dataset.parquet"]
