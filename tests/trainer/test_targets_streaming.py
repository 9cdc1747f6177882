"""`train fit` and `train evaluate` read the dataset's pod-windows in batches and keep only per-pod
sums (`trainer.targets.read_targets`). Checked against the targets as they were computed with the
whole dataset in memory: `_per_pod_in_memory` below is that code (one pandas groupby over every
row, texts as sorted categoricals), kept here as the reference. The dataset file is read in
batches of a few hundred rows, so every pod's windows are split across many batches and row
groups; zero-energy windows, two UTC days, a spec whose hash is shared by two JSON texts and a
`group` column are in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.trainer.synthetic_dataset import dataset, request, scaling_pods
from trainer.dataset import write_dataset
from trainer.targets import GROUP_COLUMNS, build_targets, read_targets


def _sorted_categorical(texts: pd.Series) -> pd.Series:
    categorical = texts.astype("category")
    categories = categorical.cat.categories
    return categorical if categories.is_monotonic_increasing else categorical.cat.reorder_categories(categories.sort_values())


def _per_pod_in_memory(frame: pd.DataFrame, unit: str) -> pd.DataFrame:
    """The per-pod table as build_targets made it before it streamed (every row in one groupby)."""
    start = pd.to_datetime(frame["window_start"], utc=True)
    active = frame["energy_joules"].to_numpy(dtype=np.float64) > 0
    text_keys = [*GROUP_COLUMNS, "pod", "spec_hash", "request_json"] + (["group"] if "group" in frame.columns else [])
    ones = np.ones(len(frame), dtype=np.int64)
    rows = pd.DataFrame({
        **{c: _sorted_categorical(frame[c]) for c in text_keys},
        "window_count": ones, "active_window_count": np.where(active, 1, 0), "pod_count": ones,
        "active_joules": np.where(active, frame["energy_joules"], 0.0),
        "active_seconds": np.where(active, frame["window_seconds"], 0), "first_window": start,
    })
    keys = list(text_keys)
    if unit == "pod-day":
        rows["day"] = start.dt.floor("D")
        keys.append("day")
    pods = (rows.groupby(keys, sort=True, observed=True)
            .agg(windows=("window_count", "sum"), active_windows=("active_window_count", "sum"),
                 pod_count=("pod_count", "max"), energy_joules=("active_joules", "sum"),
                 active_seconds=("active_seconds", "sum"), first_window=("first_window", "min"),
                 last_window=("first_window", "max"))
            .reset_index())
    for column in text_keys:
        pods[column] = pods[column].astype("str")
    period = pods.pop("day").dt.strftime("%Y-%m-%d") if unit == "pod-day" else "all"
    pods.insert(len(text_keys), "period", period)
    pods["power_watts"] = pods["energy_joules"] / pods["active_seconds"].where(pods["active_seconds"] > 0)
    return pods


def _dataset(with_group: bool) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    pods = [(spec, pod, [0.0 if rng.random() < 0.2 else joules for joules in energies] * 70)
            for spec, pod, energies in scaling_pods(12, pods_per_workload=3)]  # 420 windows a pod, over midnight
    web = request("web", 250)
    annotated = web.model_copy(update={"annotations": {"team": "shop"}})  # the same spec hash, another JSON
    pods += [(web, "web-1", [60.0] * 30), (annotated, "web-2", [120.0] * 30), (web, "web-3", [0.0] * 30)]
    frame = dataset(pods, start="2025-10-30T20:00:00Z").sample(frac=1.0, random_state=1).reset_index(drop=True)
    if with_group:
        frame["group"] = frame["workload_name"].str.slice(0, 5)
    frame["join_rule"] = np.where(frame["pod"].str.endswith("-2"), "controller", "workload")
    return frame


@pytest.mark.parametrize("with_group", [False, True])
@pytest.mark.parametrize("unit", ["workload", "pod", "pod-day"])
def test_targets_read_in_batches_equal_the_targets_of_the_whole_dataset_in_memory(
    tmp_path: Path, unit: str, with_group: bool
) -> None:
    frame = _dataset(with_group)
    path = write_dataset(frame, tmp_path / "dataset.parquet")
    table, facts = read_targets(path, unit, min_active_windows=5, batch_rows=333)

    pods = _per_pod_in_memory(frame, unit)
    expected = pods.loc[pods["active_windows"] >= 5].reset_index(drop=True)
    if unit != "workload":
        got = table.frame
        pd.testing.assert_frame_equal(got, expected.drop(columns="request_json"), check_exact=False, rtol=1e-12)
    else:
        got = table.frame.drop(columns=["pods", "pod", "power_watts"])
        assert len(got) == 14 and table.frame["pods"].sum() == len(expected)  # web and its annotated twin apart
        per_spec = expected.groupby([*GROUP_COLUMNS, "spec_hash", "request_json"], sort=True)["power_watts"].mean()
        np.testing.assert_allclose(table.frame["power_watts"], per_spec.to_numpy(), rtol=1e-12)
    assert table.source_rows == int(expected["windows"].sum())
    assert table.excluded_pods == int((pods["active_windows"] < 5).sum()) and table.excluded_pods >= 1  # web-3

    in_memory = build_targets(frame, unit, min_active_windows=5)
    pd.testing.assert_frame_equal(table.frame, in_memory.frame, check_exact=False, rtol=1e-12)
    assert table.requests == in_memory.requests and table.data_sha256() == in_memory.data_sha256()

    starts = pd.to_datetime(frame["window_start"], utc=True)
    assert (facts.first_window_start, facts.last_window_start) == (starts.min(), starts.max())
    rules = frame[["namespace", "pod", "join_rule"]].drop_duplicates()["join_rule"].value_counts()
    assert facts.join_rule_pods == {str(k): int(v) for k, v in rules.items()} == {"workload": 26, "controller": 13}


@pytest.mark.parametrize("batch_rows", [333, 5000])
def test_targets_are_the_same_whatever_row_groups_the_file_has(tmp_path: Path, batch_rows: int) -> None:
    # read_targets reads a row group at a time: batches smaller and larger than the groups, and
    # groups that split pods and specs, give the targets of the file written as one group.
    import pyarrow.parquet as pq

    frame = _dataset(with_group=True)
    one_group = write_dataset(frame, tmp_path / "dataset.parquet")
    grouped = tmp_path / "groups.parquet"
    pq.write_table(pq.read_table(one_group), grouped, row_group_size=1000)
    assert pq.ParquetFile(grouped).num_row_groups > 10
    expected, expected_facts = read_targets(one_group, "workload", min_active_windows=5)
    table, facts = read_targets(grouped, "workload", min_active_windows=5, batch_rows=batch_rows)
    pd.testing.assert_frame_equal(table.frame, expected.frame)
    assert table.requests == expected.requests and table.data_sha256() == expected.data_sha256()
    assert facts == expected_facts


def test_reading_targets_keeps_no_row_per_window(tmp_path: Path) -> None:
    """The per-pod sums are all that grows: reading a dataset 20x longer peaks the same (tracemalloc)."""
    import tracemalloc

    spec = request("api", 500)
    short = dataset([(spec, f"api-{p}", [60.0] * 50) for p in range(40)])
    long = dataset([(spec, f"api-{p}", [60.0] * 1000) for p in range(40)])
    peaks = []
    for name, frame in [("short", short), ("long", long)]:
        path = write_dataset(frame, tmp_path / f"{name}.parquet")
        tracemalloc.start()
        try:
            table, _ = read_targets(path, "pod", batch_rows=4000)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert table.source_rows == len(frame)
    assert peaks[1] < 2 * peaks[0] + 2**20, [p / 2**20 for p in peaks]


def test_reading_targets_releases_each_row_group_arrow_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow's own memory (which tracemalloc does not see) stays flat from the first batches to the
    last: no row group's buffers are kept once its rows have been summed. With pyarrow's default
    pre-buffering every row group read stayed allocated until the file was closed, so `train fit`
    peaked higher the longer the dataset (839 MiB at 2,000 workloads x 7 days against 498 at 1 day)."""
    import pyarrow as pa

    from trainer.dataset import DATASET_COLUMNS
    from trainer import targets

    rng = np.random.default_rng(3)
    spec = request("api", 500)
    frame = dataset([(spec, f"api-{p}", list(rng.uniform(1.0, 100.0, 2000))) for p in range(50)])  # 100,000 rows
    path = tmp_path / "dataset.parquet"
    frame[list(DATASET_COLUMNS)].to_parquet(path, index=False, row_group_size=1000)  # 100 row groups
    pool = pa.default_memory_pool()
    allocated: list[int] = []
    add = targets._PodSums.add

    def watched(self: targets._PodSums, batch: pa.RecordBatch) -> None:
        add(self, batch)
        allocated.append(pool.bytes_allocated())

    monkeypatch.setattr(targets._PodSums, "add", watched)
    table, _ = read_targets(path, "pod", batch_rows=1000)
    assert table.source_rows == len(frame) and len(allocated) == 100
    # The energy and window columns alone are 1.6 MB over the file; what is held after the last
    # batch may not grow by more than a row group's worth over what was held after the tenth.
    growth = max(allocated[10:]) - allocated[10]
    assert growth < 100_000, f"Arrow memory grew by {growth:,} bytes over 90 row groups"


# -- the texts' codes and the key tuples' ids, across batches ---------------------------------------


def test_text_codes_follow_first_sight_across_batches_and_a_missing_text_has_none() -> None:
    from trainer.targets import _Codes

    codes = _Codes()
    first = codes.of(pa.array(["b", None, "a", "b"]).dictionary_encode())
    second = codes.of(pa.array(["c", "a", "b", "c"]).dictionary_encode())  # another dictionary, one new text
    assert first.tolist() == [0, -1, 1, 0] and second.tolist() == [2, 1, 0, 2]
    assert codes.texts == ["b", "a", "c"]


def test_two_texts_with_one_hash_are_an_error_not_one_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import targets

    codes = targets._Codes()
    codes.of(pa.array(["ns-a/pod-1"]).dictionary_encode())
    known = pd.util.hash_array(np.array(["ns-a/pod-1"], dtype=object), categorize=False)[0]
    monkeypatch.setattr(targets.pd.util, "hash_array",
                        lambda values, categorize=True: np.full(len(values), known, dtype=np.uint64))
    with pytest.raises(ValueError, match="share a 64-bit hash"):
        codes.of(pa.array(["ns-b/pod-2"]).dictionary_encode())


def test_tuple_ids_are_dense_in_order_of_first_sight_and_give_their_tuples_back() -> None:
    from trainer.targets import _TupleIds

    ids = _TupleIds(3)
    first = ids.ids([np.array([0, 0, 1, 0]), np.array([5, 5, 5, 6]), np.array([1, 1, 1, 1])])
    second = ids.ids([np.array([1, 2]), np.array([5, 5]), np.array([1, 0])])
    assert first.tolist() == [0, 0, 1, 2] and second.tolist() == [1, 3]
    assert ids.tuples().tolist() == [[0, 5, 1], [1, 5, 1], [0, 6, 1], [2, 5, 0]]
    with pytest.raises(ValueError, match=r"\[0, 2\*\*31\)"):
        ids.ids([np.array([-1]), np.array([0]), np.array([0])])


def test_a_column_of_numbers_is_coded_by_its_text() -> None:
    from trainer.targets import _Codes

    codes = _Codes()
    numbers = codes.of(pa.array([5, 7, 5]).dictionary_encode())  # a `group` column of integers
    texts = codes.of(pa.array(["5"]).dictionary_encode())
    assert numbers.tolist() == [0, 1, 0] and texts.tolist() == [0] and codes.texts == ["5", "7"]


def test_the_key_index_stays_a_few_runs_over_many_batches_of_new_keys() -> None:
    """Keys added over 500 batches (a week of pods starting) are found where a dict puts them, and
    the index is O(log n) runs: one Index rebuilt on every batch made reading quadratic in them."""
    from trainer.targets import _AppendOnlyIndex

    rng = np.random.default_rng(7)
    index, reference = _AppendOnlyIndex(np.int64), {}
    for _ in range(500):
        batch = rng.integers(0, 40_000, size=int(rng.integers(0, 200)))
        found = index.positions(batch)
        assert found.tolist() == [reference.get(int(k), -1) for k in batch]
        fresh = pd.unique(batch[found < 0])
        index.add(fresh)
        for key in fresh.tolist():
            reference[key] = len(reference)
        assert len(index._runs) <= int(np.log2(max(len(index), 1))) + 1
    assert index.keys().tolist() == list(reference)
