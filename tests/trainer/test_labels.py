"""The labels step against a real Prometheus holding backfilled Kepler data.

Why the recovery is exact: every counter sample sits on the 60 s grid and collect_labels
evaluates `increase(counter[60s])` at the window ends, which are grid points too. The range then
holds exactly two samples of each series, at the window's start and end, so Prometheus has nothing
to extrapolate (it extrapolates only towards range edges that lie beyond the first/last sample)
and the increase is the plain difference of the two samples, or, across a Kepler restart, the
later sample alone, which is exactly the energy counted since the restart. What remains is
floating-point rounding of the cumulative sums, far below a millijoule.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.trainer.conftest import KeplerPrometheus
from tests.trainer.kepler_datasets import KEPLER_TARGET_LABELS, BackfillDataset, expected_energy
from trainer.kepler import (
    AmbiguousKeplerLineError,
    ContainerEnergySelection,
    KeplerLine,
    KeplerMetricsNotFoundError,
    PodEnergySelection,
)
from trainer.labels import (
    OUTPUT_COLUMNS,
    collect_labels,
    empty_labels_frame,
    parse_duration_seconds,
    parse_time_seconds,
    run_labels,
    write_labels,
)
from trainer.owners import WorkloadRef

# The cumulative counters reach ~1e6 J; float64 keeps their differences within ~1e-10 J.
ENERGY_TOLERANCE_JOULES = 1e-6
KEYS = ["window_start_seconds", "namespace", "pod"]


def _with_seconds(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["window_start_seconds"] = (out["window_start"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return out


def _compare(got: pd.DataFrame, expected: pd.DataFrame, expected_joules: pd.Series) -> float:
    """Assert the same (window, pod) rows and energies; return the largest absolute error."""
    want = expected[KEYS + ["workload_kind", "workload_name"]].assign(expected_joules=expected_joules.to_numpy())
    merged = _with_seconds(got).merge(want, on=KEYS, how="outer", suffixes=("", "_expected"), indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"rows only on one side:\n{unmatched[KEYS + ['_merge']].head(20)}"
    error = (merged["energy_joules"] - merged["expected_joules"]).abs()
    assert error.max() < ENERGY_TOLERANCE_JOULES, merged.loc[error.idxmax()].to_dict()
    assert (merged["workload_kind"] == merged["workload_kind_expected"]).all()
    assert (merged["workload_name"] == merged["workload_name_expected"]).all()
    return float(error.max())


# -- Kepler 0.7 counters from the seed measurements -----------------------------------------------


@pytest.fixture(scope="module")
def seed_labels(kepler_prometheus: KeplerPrometheus) -> pd.DataFrame:
    seed = kepler_prometheus.seed
    return collect_labels(kepler_prometheus.url, seed.start_seconds, seed.end_seconds, seed.window_seconds)


@pytest.mark.prometheus
def test_seed_energy_per_pod_per_window_is_recovered(
    kepler_prometheus: KeplerPrometheus, seed_labels: pd.DataFrame
) -> None:
    seed = kepler_prometheus.seed
    max_error = _compare(seed_labels, seed.expected, seed.expected["energy_joules"])
    print(f"seed recovery: {len(seed_labels)} rows, max |error| = {max_error:.3g} J")
    assert list(seed_labels.columns) == list(OUTPUT_COLUMNS)
    assert (seed_labels["gpu_energy_joules"] == 0).all()
    assert len(seed_labels) == len(seed.expected) == 17640
    assert str(seed_labels["window_start"].dt.tz) == "UTC"
    assert (seed_labels["window_seconds"] == 60).all()
    assert (seed_labels["kepler_line"] == KeplerLine.CONTAINER_COUNTERS.value).all()
    np.testing.assert_allclose(seed_labels["power_watts"], seed_labels["energy_joules"] / 60.0, rtol=1e-12)


@pytest.mark.prometheus
def test_seed_owners_are_resolved_through_kube_state_metrics(
    kepler_prometheus: KeplerPrometheus, seed_labels: pd.DataFrame
) -> None:
    got = seed_labels[["namespace", "pod", "workload_kind", "workload_name"]].drop_duplicates()
    want = kepler_prometheus.seed.expected[["namespace", "pod", "workload_kind", "workload_name"]].drop_duplicates()
    assert len(got) == len(want) == 49
    pd.testing.assert_frame_equal(
        got.sort_values(["namespace", "pod"]).reset_index(drop=True),
        want.sort_values(["namespace", "pod"]).reset_index(drop=True),
    )
    kinds = dict(zip(got["pod"], zip(got["workload_kind"], got["workload_name"])))
    assert kinds["coredns-7b9d6f8449-mmqbq"] == ("Deployment", "coredns")  # ReplicaSet -> Deployment
    assert kinds["build-labels-xqnkj"] == ("Job", "build-labels")  # Job without CronJob
    assert kinds["etcd-n1"] == ("Node", "n1")  # static pod
    assert kinds["kernel_processes"] == ("Pod", "kernel_processes")  # no owner series at all
    assert kinds["pvc-inspector"] == ("Pod", "pvc-inspector")  # owner "<none>"


@pytest.mark.prometheus
def test_seed_exporter_target_labels_are_never_taken_for_the_workload(
    kepler_prometheus: KeplerPrometheus, seed_labels: pd.DataFrame
) -> None:
    exporter = (seed_labels["namespace"] == KEPLER_TARGET_LABELS["namespace"]) & (
        seed_labels["pod"] == KEPLER_TARGET_LABELS["pod"]
    )
    assert not exporter.any()
    # Every series carries namespace="kepler": the pods still land in their own 13 namespaces.
    assert set(seed_labels["namespace"]) == set(kepler_prometheus.seed.expected["namespace"])
    assert seed_labels["namespace"].nunique() == 13


@pytest.mark.prometheus
def test_seed_counter_reset_is_handled(kepler_prometheus: KeplerPrometheus, seed_labels: pd.DataFrame) -> None:
    seed = kepler_prometheus.seed
    at_reset = _with_seconds(seed_labels)
    at_reset = at_reset[at_reset["window_start_seconds"] == seed.restart_window_start_seconds]
    want = seed.expected[seed.expected["window_start_seconds"] == seed.restart_window_start_seconds]
    assert len(at_reset) == len(want) == 49
    assert (at_reset["energy_joules"] >= 0).all()
    _compare(at_reset, want, want["energy_joules"])


@pytest.mark.prometheus
def test_seed_mode_choice_reads_dynamic_energy_only(kepler_prometheus: KeplerPrometheus) -> None:
    seed = kepler_prometheus.seed
    dynamic = collect_labels(
        kepler_prometheus.url,
        seed.start_seconds,
        seed.end_seconds,
        seed.window_seconds,
        container_selection=ContainerEnergySelection(modes=("dynamic",)),
    )
    _compare(dynamic, seed.expected, seed.expected["dynamic_joules"])


@pytest.mark.prometheus
def test_chunked_collection_equals_one_chunk(kepler_prometheus: KeplerPrometheus, seed_labels: pd.DataFrame) -> None:
    seed = kepler_prometheus.seed
    chunked = collect_labels(
        kepler_prometheus.url, seed.start_seconds, seed.end_seconds, seed.window_seconds, max_windows_per_chunk=37
    )
    pd.testing.assert_frame_equal(chunked, seed_labels)


@pytest.mark.prometheus
def test_progress_bar_over_chunks(kepler_prometheus: KeplerPrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    pods = kepler_prometheus.pods
    collect_labels(
        kepler_prometheus.url, pods.start_seconds, pods.end_seconds, 60, max_windows_per_chunk=30, progress=True
    )
    err = capsys.readouterr().err
    assert "kepler energy" in err
    assert "4/4" in err  # 120 windows in chunks of 30


# -- Kepler 0.10 pod counters --------------------------------------------------------------------


def _collect_pods(kp: KeplerPrometheus, **options: object) -> pd.DataFrame:
    pods = kp.pods
    return collect_labels(kp.url, pods.start_seconds, pods.end_seconds, pods.window_seconds, **options)  # type: ignore[arg-type]


def _running(dataset: BackfillDataset) -> pd.DataFrame:
    return dataset.expected[~dataset.expected["terminated"]]


@pytest.mark.prometheus
def test_pod_line_default_sums_package_and_dram_of_running_pods(kepler_prometheus: KeplerPrometheus) -> None:
    got = _collect_pods(kepler_prometheus)
    want = _running(kepler_prometheus.pods)
    max_error = _compare(got, want, expected_energy(want, ["package_joules", "dram_joules"]))
    print(f"Kepler 0.10 recovery: {len(got)} rows, max |error| = {max_error:.3g} J")
    assert (got["kepler_line"] == KeplerLine.POD_COUNTERS.value).all()
    owners = dict(zip(got["pod"], zip(got["workload_kind"], got["workload_name"])))
    assert owners == {
        "web-5f7d8c9b6d-abcde": ("Deployment", "web"),
        "nightly-report-28930000-xk2p9": ("CronJob", "nightly-report"),
        "debug-shell": ("Pod", "debug-shell"),
        "pg-0": ("StatefulSet", "pg"),
    }


@pytest.mark.parametrize(
    ("zones", "columns"),
    [(("package",), ["package_joules"]), (("core",), ["core_joules"]), (("core", "dram"), ["core_joules", "dram_joules"])],
)
@pytest.mark.prometheus
def test_pod_line_zone_choice_is_respected(
    kepler_prometheus: KeplerPrometheus, zones: tuple[str, ...], columns: list[str]
) -> None:
    got = _collect_pods(kepler_prometheus, pod_selection=PodEnergySelection(zones=zones))
    want = _running(kepler_prometheus.pods)
    _compare(got, want, expected_energy(want, columns))


@pytest.mark.prometheus
def test_pod_line_dram_only_skips_nodes_without_dram(kepler_prometheus: KeplerPrometheus) -> None:
    got = _collect_pods(kepler_prometheus, pod_selection=PodEnergySelection(zones=("dram",)))
    want = _running(kepler_prometheus.pods)
    want = want[want["pod"] != "debug-shell"]  # on worker-b, which has no dram zone
    _compare(got, want, want["dram_joules"])


@pytest.mark.prometheus
def test_pod_line_all_states_adds_zero_windows_after_termination(kepler_prometheus: KeplerPrometheus) -> None:
    got = _collect_pods(kepler_prometheus, pod_selection=PodEnergySelection(states=None))
    want = kepler_prometheus.pods.expected
    _compare(got, want, expected_energy(want, ["package_joules", "dram_joules"]))
    assert want["terminated"].sum() == 2


@pytest.mark.prometheus
def test_pod_line_counter_reset_is_handled(kepler_prometheus: KeplerPrometheus) -> None:
    pods = kepler_prometheus.pods
    got = _with_seconds(_collect_pods(kepler_prometheus))
    at_reset = got[got["window_start_seconds"] == pods.restart_window_start_seconds]
    want = _running(pods)
    want = want[want["window_start_seconds"] == pods.restart_window_start_seconds]
    assert set(at_reset["pod"]) == set(want["pod"]) == {
        "web-5f7d8c9b6d-abcde",
        "nightly-report-28930000-xk2p9",
        "debug-shell",
        "pg-0",
    }
    _compare(at_reset, want, expected_energy(want, ["package_joules", "dram_joules"]))


@pytest.mark.prometheus
def test_owner_fallback_is_asked_only_about_pods_unknown_to_kube_state_metrics(
    kepler_prometheus: KeplerPrometheus,
) -> None:
    asked: list[tuple[str, str]] = []

    def api_lookup(namespace: str, pod: str) -> WorkloadRef | None:
        asked.append((namespace, pod))
        return WorkloadRef(kind="Deployment", name="toolbox")

    got = _collect_pods(kepler_prometheus, owner_fallback=api_lookup)
    assert asked == [("default", "debug-shell")]
    shell = got[got["pod"] == "debug-shell"]
    assert set(zip(shell["workload_kind"], shell["workload_name"])) == {("Deployment", "toolbox")}


# -- detection -------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_a_range_holding_both_kepler_lines_needs_an_explicit_choice(kepler_prometheus: KeplerPrometheus) -> None:
    pods, seed = kepler_prometheus.pods, kepler_prometheus.seed
    with pytest.raises(AmbiguousKeplerLineError, match="choose one Kepler line"):
        collect_labels(kepler_prometheus.url, pods.start_seconds, seed.end_seconds, 60)
    forced = collect_labels(
        kepler_prometheus.url, pods.start_seconds, seed.end_seconds, 60, kepler_line="kepler-0.10",
        max_windows_per_chunk=240,
    )
    assert set(forced["pod"]) == set(pods.expected["pod"])


@pytest.mark.prometheus
def test_a_range_without_kepler_metrics_says_so(kepler_prometheus: KeplerPrometheus) -> None:
    long_before = kepler_prometheus.pods.start_seconds - 30 * 86400
    with pytest.raises(KeplerMetricsNotFoundError, match="kepler_container_joules_total or kepler_pod_cpu_joules_total"):
        collect_labels(kepler_prometheus.url, long_before, long_before + 3600, 60)


# -- the command-line entry point ------------------------------------------------------------------


@pytest.mark.prometheus
def test_run_labels_writes_the_table_to_parquet(kepler_prometheus: KeplerPrometheus, tmp_path: Path) -> None:
    pods = kepler_prometheus.pods
    start = datetime.fromtimestamp(pods.start_seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    out = tmp_path / "nested" / "labels.parquet"
    summary = run_labels(kepler_prometheus.url, start, str(pods.end_seconds), "1m", out, chunk="30m", progress=False)
    written = pd.read_parquet(out)
    assert summary.path == out
    assert summary.row_count == len(written) == len(_running(pods))
    assert summary.pod_count == 4
    assert summary.kepler_line == "kepler-0.10"
    pd.testing.assert_frame_equal(written, _collect_pods(kepler_prometheus))
    assert os.listdir(out.parent) == ["labels.parquet"]  # no temporary file left behind


# -- without a server ----------------------------------------------------------------------------


def test_write_labels_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "labels.parquet"
    write_labels(empty_labels_frame(), target)
    before = target.read_bytes()

    def broken_to_parquet(self: pd.DataFrame, path: str, **_: object) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken_to_parquet)
    with pytest.raises(OSError, match="disk full"):
        write_labels(empty_labels_frame(), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["labels.parquet"]


def test_write_labels_refuses_a_table_without_the_label_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        write_labels(pd.DataFrame({"pod": ["a"]}), tmp_path / "labels.parquet")


def test_empty_table_round_trips_through_parquet(tmp_path: Path) -> None:
    path = write_labels(empty_labels_frame(), tmp_path / "labels.parquet")
    back = pd.read_parquet(path)
    assert list(back.columns) == list(OUTPUT_COLUMNS)
    assert len(back) == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("1m", 60.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("250ms", 0.25), ("90", 90.0), (120, 120.0)],
)
def test_parse_duration_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10 parsecs", "-5s", "0s", "1h-5m"])
def test_parse_duration_seconds_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_seconds(text)


def test_parse_time_seconds() -> None:
    assert parse_time_seconds("2025-10-30T08:00:00Z") == 1761811200.0
    assert parse_time_seconds("2025-10-30T09:00:00+01:00") == 1761811200.0
    assert parse_time_seconds("2025-10-30T08:00:00") == 1761811200.0  # naive = UTC
    assert parse_time_seconds("1761811200") == 1761811200.0
    assert parse_time_seconds(datetime(2025, 10, 30, 8, tzinfo=timezone.utc)) == 1761811200.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time_seconds("yesterday")


def test_collect_labels_rejects_fractional_or_too_long_windows() -> None:
    with pytest.raises(ValueError, match="whole number of seconds"):
        collect_labels("http://127.0.0.1:9", 0, 3600, 1.5)
    with pytest.raises(ValueError, match="shorter than one"):
        collect_labels("http://127.0.0.1:9", 0, 30, 60)
