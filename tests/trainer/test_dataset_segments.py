"""`train dataset` on a labels file in window order, sorted one segment of row groups at a time.

`train labels` writes one row group a chunk, chunks consecutive in time: the dataset step then
reads and sorts a few row groups at a time (`trainer.dataset.SEGMENT_ROWS`) instead of the whole
file. The segments are cut only where every window before the cut is earlier than every window
after it, so the dataset must be the same whatever the segment size and row group size: the same
rows and values as the in-memory reference join (`test_dataset_out_of_core.reference_join`), the
same joules, the same summary. A file whose row groups overlap in time (a repeated pod-window in
a later row group, a shuffled file) is not cut there, and a file without statistics is sorted all
at once, with the same result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import trainer.dataset as dataset_module
from tests.trainer.test_dataset import MIXED_SPECS
from tests.trainer.test_dataset_out_of_core import reference_join, shuffled_labels
from trainer.dataset import _window_segments, join_labels_file, read_dataset
from trainer.inputs import InputFileError


def window_ordered_labels(windows: int, seed: int = 5) -> pd.DataFrame:
    """The shuffled labels sorted by window (label order kept within a window, so a repeated
    pod-window keeps its place after the first), as `train labels` writes them."""
    labels = shuffled_labels(windows, seed)
    return labels.sort_values("window_start", kind="stable").reset_index(drop=True)


def write_in_row_groups(labels: pd.DataFrame, path: Path, group_rows: list[int]) -> None:
    """`labels` written as row groups of the given sizes, cycling through them (cut anywhere,
    a window's rows possibly in two row groups)."""
    table = pa.Table.from_pandas(labels, preserve_index=False)
    with pq.ParquetWriter(path, table.schema) as writer:
        start, turn = 0, 0
        while start < table.num_rows:
            size = group_rows[turn % len(group_rows)]
            writer.write_table(table.slice(start, size))
            start, turn = start + size, turn + 1


def write_by_windows(labels: pd.DataFrame, path: Path, group_windows: list[int]) -> None:
    """`labels` written as row groups of the given numbers of whole windows, cycling through
    them: as `train labels` writes its chunks."""
    starts = labels["window_start"].to_numpy()
    firsts = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])  # first row of each window
    cuts, window, turn = [], 0, 0
    while window < len(firsts):
        cuts.append(int(firsts[window]))
        window, turn = window + group_windows[turn % len(group_windows)], turn + 1
    cuts.append(len(labels))
    write_in_row_groups(labels, path, [b - a for a, b in zip(cuts, cuts[1:])] or [1])


def segments_used(path: Path) -> list[dataset_module._Segment] | None:
    return _window_segments(pq.ParquetFile(path).metadata, dataset_module.SEGMENT_ROWS)


@pytest.mark.parametrize("segment_rows", [700, 5_000, 1 << 20])
@pytest.mark.parametrize("group_windows", [[7], [1, 12, 3]])  # 12 windows: ~590 rows
def test_any_segment_size_writes_the_reference_join(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     segment_rows: int, group_windows: list[int]) -> None:
    labels = window_ordered_labels(windows=120)  # 5,760 pod-windows and 115 repeats
    path = tmp_path / "labels.parquet"
    write_by_windows(labels, path, group_windows)
    monkeypatch.setattr(dataset_module, "SEGMENT_ROWS", segment_rows)
    segments = segments_used(path)
    assert segments is not None
    if segment_rows == 700:  # several segments, none longer than asked but for a row group longer alone
        assert len(segments) > 5 and all(s.rows <= 700 or len(s.row_groups) == 1 for s in segments)
    # Segments cover every row once, in file order.
    assert sum(s.rows for s in segments) == len(labels)
    groups = [g for s in segments for g in s.row_groups]
    assert groups == list(range(pq.ParquetFile(path).metadata.num_row_groups))

    out = tmp_path / "dataset.parquet"
    summary = join_labels_file(path, MIXED_SPECS, out, batch_rows=333)
    expected = reference_join(labels, pod_spec_fallback=False)
    written = read_dataset(out)
    pd.testing.assert_frame_equal(written, expected, check_exact=True)
    assert summary.unjoined["duplicate-row"].rows == 115
    assert summary.joined.rows == len(expected)


def test_row_groups_cut_inside_a_window_are_sorted_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = window_ordered_labels(windows=120)
    path = tmp_path / "labels.parquet"
    write_in_row_groups(labels, path, [48 * 7 + 13])  # every cut inside a window: one stretch of 5,875 rows
    monkeypatch.setattr(dataset_module, "SEGMENT_ROWS", 2_000)
    assert segments_used(path) is None
    summary = join_labels_file(path, MIXED_SPECS, tmp_path / "dataset.parquet")
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "dataset.parquet"),
                                  reference_join(labels, pod_spec_fallback=False), check_exact=True)
    assert summary.unjoined["duplicate-row"].rows == 115


def test_the_segments_give_the_same_file_and_summary_as_one_sort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = window_ordered_labels(windows=300, seed=9)
    path = tmp_path / "labels.parquet"
    write_by_windows(labels, path, [30, 17])
    monkeypatch.setattr(dataset_module, "SEGMENT_ROWS", 3_000)
    assert len(segments_used(path) or []) > 3
    segmented = join_labels_file(path, MIXED_SPECS, tmp_path / "segmented.parquet", pod_spec_fallback=True)
    monkeypatch.setattr(dataset_module, "_window_segments", lambda metadata, max_rows: None)  # one sort of all rows
    whole = join_labels_file(path, MIXED_SPECS, tmp_path / "whole.parquet", pod_spec_fallback=True)
    assert segmented == whole
    assert pq.read_table(tmp_path / "segmented.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


def test_row_groups_that_share_a_window_are_never_cut_apart(tmp_path: Path) -> None:
    # Three windows; row group 1 repeats window 0, so groups 0 and 1 are one stretch.
    frame = pd.DataFrame({"window_start": pd.to_datetime([0, 60, 0, 120, 180], unit="s", utc=True)})
    path = tmp_path / "w.parquet"
    write_in_row_groups(frame, path, [2, 2, 1])
    assert _window_segments(pq.ParquetFile(path).metadata, max_rows=1) is None  # a stretch of 4 rows > 1
    cut = _window_segments(pq.ParquetFile(path).metadata, max_rows=4)
    assert cut is not None and [s.row_groups for s in cut] == [(0, 1), (2,)]
    assert [(s.first_row, s.rows) for s in cut] == [(0, 4), (4, 1)]
    # A window ending one row group and starting the next: they are one stretch too.
    frame = pd.DataFrame({"window_start": pd.to_datetime([0, 60, 60, 120], unit="s", utc=True)})
    write_in_row_groups(frame, path, [2, 2])
    assert _window_segments(pq.ParquetFile(path).metadata, max_rows=2) is None


def test_a_file_without_statistics_or_with_missing_windows_is_sorted_at_once(tmp_path: Path) -> None:
    frame = pd.DataFrame({"window_start": pd.to_datetime([0, 60, 120, 180], unit="s", utc=True)})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, tmp_path / "plain.parquet", row_group_size=2)
    assert len(_window_segments(pq.ParquetFile(tmp_path / "plain.parquet").metadata, max_rows=2) or []) == 2
    pq.write_table(table, tmp_path / "nostats.parquet", row_group_size=2, write_statistics=False)
    assert _window_segments(pq.ParquetFile(tmp_path / "nostats.parquet").metadata, max_rows=2) is None
    with_null = pa.table({"window_start": pa.array([0, None, 120, 180], type=pa.timestamp("ns", tz="UTC"))})
    pq.write_table(with_null, tmp_path / "null.parquet", row_group_size=2)
    assert _window_segments(pq.ParquetFile(tmp_path / "null.parquet").metadata, max_rows=2) is None


def test_a_damaged_row_group_is_an_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = window_ordered_labels(windows=60)
    path = tmp_path / "labels.parquet"
    write_by_windows(labels, path, [10])  # ~490 rows a row group
    monkeypatch.setattr(dataset_module, "SEGMENT_ROWS", 1_000)
    original = pq.ParquetFile.iter_batches
    calls = {"n": 0}

    def third_segment_fails(self: pq.ParquetFile, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise pa.ArrowInvalid("Couldn't deserialize thrift: corrupt page header")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", third_segment_fails)
    with pytest.raises(InputFileError) as error:
        join_labels_file(path, MIXED_SPECS, tmp_path / "dataset.parquet")
    assert "labels.parquet" in str(error.value) and "row groups 4-5" in str(error.value)
    assert "corrupt page header" in str(error.value)
    assert not (tmp_path / "dataset.parquet").exists()


def test_joules_are_the_same_at_any_labels_chunk_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups of one window each up to all windows in one: the same dataset, the same joules."""
    labels = window_ordered_labels(windows=90, seed=2)
    tables = []
    for windows in (1, 11, 90):
        path = tmp_path / f"labels-{windows}.parquet"
        write_by_windows(labels, path, [windows])
        monkeypatch.setattr(dataset_module, "SEGMENT_ROWS", 60 * windows)  # 48 pods and a few repeats a window
        assert pq.ParquetFile(path).metadata.num_row_groups == (90 + windows - 1) // windows
        assert segments_used(path) is not None
        join_labels_file(path, MIXED_SPECS, tmp_path / f"dataset-{windows}.parquet")
        tables.append(pq.read_table(tmp_path / f"dataset-{windows}.parquet"))
    joules = {float(np.sum(table.column("energy_joules").to_numpy())) for table in tables}
    assert len(joules) == 1 and {table.num_rows for table in tables} == {tables[0].num_rows}
    assert all(table.equals(tables[0]) for table in tables)
