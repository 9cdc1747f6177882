"""The labels step's GPU energy against a real Prometheus holding dcgm-exporter series (in its
exposition format, scraped as Prometheus stores them) and Kepler's GPU counters.

Exactness as in test_labels: dcgm-exporter's counters are scraped every 30 s on the window grid,
so each window [end-60 s, end] holds three samples of a series, the first and last on its
edges, and Prometheus 2.x's increase() is their plain difference (across a driver reload, the
difference before it plus the value after it). The power-gauge-only GPU is scraped 10 s off the
grid, so each window holds exactly three of its samples and avg_over_time is their mean. The
expected values are computed from the samples written (`tests.trainer.gpu_datasets`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.trainer.conftest import PrometheusHarness, locate_binaries_or_fail
from tests.trainer.gpu_datasets import (
    GPU_A0,
    INFER_X,
    INFER_Y,
    NODE_A_TARGET,
    NODE_B_TARGET,
    NOTEBOOK,
    RENDER,
    TRAIN_A,
    TRAIN_B,
    VLLM,
    GpuDataset,
    dcgm_body,
    dcgm_dataset,
    dcgm_line,
    kepler_07_gpu_dataset,
)
from trainer.labels import collect_labels, collect_labels_report, run_labels

TOLERANCE_JOULES = 1e-6
KEYS = ["window_start_seconds", "namespace", "pod"]


@dataclass(frozen=True)
class GpuPrometheus:
    url: str
    dcgm: GpuDataset
    kepler_07: GpuDataset


@pytest.fixture(scope="module")
def gpu_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuPrometheus]:
    binaries = locate_binaries_or_fail()
    now = time.time()
    dcgm = dcgm_dataset(last_sample_before_seconds=now - 5 * 3600)
    kepler_07 = kepler_07_gpu_dataset(last_sample_before_seconds=now - 8 * 3600)
    with PrometheusHarness(tmp_path_factory.mktemp("gpu-prometheus"), binaries) as harness:
        for dataset in (dcgm, kepler_07):
            for number, text in enumerate(dataset.openmetrics):
                harness.backfill(text, name=f"{dataset.name}-{number}")
        yield GpuPrometheus(url=harness.start(), dcgm=dcgm, kepler_07=kepler_07)


def _collect(gp: GpuPrometheus, dataset: GpuDataset, **options: object) -> pd.DataFrame:
    frame = collect_labels(gp.url, dataset.start_seconds, dataset.end_seconds, 60, **options)
    frame["window_start_seconds"] = (frame["window_start"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return frame


def _expected(*parts: pd.DataFrame) -> pd.DataFrame:
    """Sum of per-(window, pod) energy tables, a pod missing from one counting 0 there."""
    return pd.concat(parts, ignore_index=True).groupby(KEYS, as_index=False)["joules"].sum()


def _assert_joules(got: pd.DataFrame, column: str, expected: pd.DataFrame) -> None:
    merged = got[KEYS + [column]].merge(expected, on=KEYS, how="outer", indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"rows only on one side:\n{unmatched.head(20)}"
    error = (merged[column] - merged["joules"]).abs()
    assert error.max() < TOLERANCE_JOULES, merged.loc[error.idxmax()].to_dict()


def _zero(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(joules=0.0)


# -- dcgm-exporter ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dcgm_labels(gpu_prometheus: GpuPrometheus) -> pd.DataFrame:
    return _collect(gpu_prometheus, gpu_prometheus.dcgm)


@pytest.mark.prometheus
def test_dcgm_energy_is_added_to_the_same_pods_cpu_energy(gpu_prometheus: GpuPrometheus, dcgm_labels: pd.DataFrame) -> None:
    dataset = gpu_prometheus.dcgm
    _assert_joules(dcgm_labels, "energy_joules", _expected(dataset.cpu, dataset.dcgm))
    _assert_joules(dcgm_labels, "gpu_energy_joules", _expected(_zero(dataset.cpu), dataset.dcgm))
    np.testing.assert_allclose(dcgm_labels["power_watts"], dcgm_labels["energy_joules"] / 60.0, rtol=1e-12)
    owners = dict(zip(dcgm_labels["pod"], zip(dcgm_labels["workload_kind"], dcgm_labels["workload_name"])))
    assert owners == dataset.owners


@pytest.mark.prometheus
def test_a_pod_with_only_gpu_series_has_rows(gpu_prometheus: GpuPrometheus, dcgm_labels: pd.DataFrame) -> None:
    render = dcgm_labels[dcgm_labels["pod"] == RENDER.pod]
    assert len(render) == 40  # on GPU 2 from grid point 10 to 50, no Kepler CPU series
    np.testing.assert_allclose(render["energy_joules"], render["gpu_energy_joules"], rtol=0, atol=0)
    assert (render["workload_kind"] == "StatefulSet").all()


@pytest.mark.prometheus
def test_time_sliced_gpu_energy_is_split_between_its_pods(gpu_prometheus: GpuPrometheus, dcgm_labels: pd.DataFrame) -> None:
    grid_start = gpu_prometheus.dcgm.start_seconds
    gpu = dcgm_labels.pivot_table(index="window_start_seconds", columns="pod", values="gpu_energy_joules")
    shared = gpu.index[(gpu.index >= grid_start + 20 * 60) & (gpu.index < grid_start + 40 * 60)]
    assert len(shared) == 20
    np.testing.assert_allclose(gpu.loc[shared, INFER_X.pod], gpu.loc[shared, INFER_Y.pod], rtol=1e-12)
    alone = gpu.index[gpu.index < grid_start + 20 * 60]
    assert gpu.loc[alone, INFER_Y.pod].isna().all()


@pytest.mark.prometheus
def test_one_pod_after_another_on_a_gpu(gpu_prometheus: GpuPrometheus, dcgm_labels: pd.DataFrame) -> None:
    grid_start = gpu_prometheus.dcgm.start_seconds
    on_gpu = dcgm_labels[dcgm_labels["gpu_energy_joules"] > 0]
    a = on_gpu[on_gpu["pod"] == TRAIN_A.pod]["window_start_seconds"]
    b = on_gpu[on_gpu["pod"] == TRAIN_B.pod]["window_start_seconds"]
    assert a.max() == grid_start + 29 * 60 and len(a) == 30
    assert b.min() == grid_start + 31 * 60 and len(b) == 29
    # The handover window (one sample of each series, and one of the idle GPU) goes to no pod.
    handover = on_gpu[on_gpu["window_start_seconds"] == grid_start + 30 * 60]
    assert not handover["pod"].isin([TRAIN_A.pod, TRAIN_B.pod]).any()


@pytest.mark.prometheus
def test_driver_reload_counter_reset(gpu_prometheus: GpuPrometheus, dcgm_labels: pd.DataFrame) -> None:
    dataset = gpu_prometheus.dcgm
    at_reset = dcgm_labels[dcgm_labels["window_start_seconds"] == dataset.reset_window_start_seconds]
    want = dataset.dcgm[dataset.dcgm["window_start_seconds"] == dataset.reset_window_start_seconds]
    assert set(want["pod"]) == {TRAIN_B.pod, INFER_X.pod, RENDER.pod, NOTEBOOK.pod}
    on_gpu = at_reset[at_reset["pod"].isin(want["pod"])]
    assert len(on_gpu) == 4 and (on_gpu["gpu_energy_joules"] > 0).all()
    # A reload read as a plain difference would be about -7e8 J; as a reset it is a window's worth.
    assert (on_gpu["gpu_energy_joules"] < 60 * 400.0).all()
    _assert_joules(on_gpu, "gpu_energy_joules", want)


@pytest.mark.prometheus
def test_gpu_without_energy_counter_falls_back_to_the_power_gauge(
    gpu_prometheus: GpuPrometheus, dcgm_labels: pd.DataFrame
) -> None:
    notebook = dcgm_labels[dcgm_labels["pod"] == NOTEBOOK.pod]
    assert len(notebook) == 60 and (notebook["gpu_energy_joules"] > 0).all()
    dataset = gpu_prometheus.dcgm
    report = collect_labels_report(gpu_prometheus.url, dataset.start_seconds, dataset.end_seconds, 60)
    assert report.gpu_source is not None and report.gpu_source.value == "dcgm-exporter"
    assert report.gpu_power_gauge_joules == pytest.approx(notebook["gpu_energy_joules"].sum(), abs=1e-6)


@pytest.mark.prometheus
def test_gpus_that_no_pod_holds_go_to_no_pod(dcgm_labels: pd.DataFrame) -> None:
    exporters = {NODE_A_TARGET["pod"], NODE_B_TARGET["pod"]}
    assert not set(dcgm_labels["pod"]) & exporters
    assert not set(dcgm_labels["namespace"]) & {NODE_A_TARGET["namespace"], NODE_B_TARGET["namespace"]}


@pytest.mark.prometheus
def test_kepler_gpu_source_when_chosen(gpu_prometheus: GpuPrometheus) -> None:
    dataset = gpu_prometheus.dcgm
    got = _collect(gpu_prometheus, dataset, gpu="kepler")
    _assert_joules(got, "energy_joules", _expected(dataset.cpu, dataset.kepler_gpu))
    _assert_joules(got, "gpu_energy_joules", _expected(_zero(dataset.cpu), dataset.kepler_gpu))
    assert RENDER.pod not in set(got["pod"])  # Kepler never saw it


@pytest.mark.prometheus
def test_gpu_reading_off(gpu_prometheus: GpuPrometheus) -> None:
    dataset = gpu_prometheus.dcgm
    got = _collect(gpu_prometheus, dataset, gpu="off")
    _assert_joules(got, "energy_joules", dataset.cpu)
    assert (got["gpu_energy_joules"] == 0).all()


# -- Kepler 0.7, whose container total already holds its GPU estimate -------------------------------


@pytest.mark.parametrize(
    ("gpu", "gpu_part"),
    [("auto", "dcgm"), ("dcgm", "dcgm"), ("kepler", "kepler_gpu"), ("off", None)],
)
@pytest.mark.prometheus
def test_kepler_07_total_and_dcgm_count_the_gpu_once(gpu_prometheus: GpuPrometheus, gpu: str, gpu_part: str | None) -> None:
    dataset = gpu_prometheus.kepler_07
    got = _collect(gpu_prometheus, dataset, gpu=gpu)
    gpu_joules = getattr(dataset, gpu_part) if gpu_part else _zero(dataset.cpu)
    # off: Kepler's own total, its GPU estimate included, as before GPU reading existed.
    energy = _expected(dataset.cpu, gpu_joules if gpu_part else dataset.kepler_gpu)
    _assert_joules(got, "energy_joules", energy)
    _assert_joules(got, "gpu_energy_joules", gpu_joules)
    assert set(got["pod"]) == {VLLM.pod}


@pytest.mark.prometheus
def test_an_explicit_source_without_series_is_an_error(gpu_prometheus: GpuPrometheus) -> None:
    dataset = gpu_prometheus.kepler_07
    with pytest.raises(ValueError, match="--gpu kepler: no kepler_pod_gpu_joules_total"):
        collect_labels(gpu_prometheus.url, dataset.start_seconds, dataset.end_seconds, 60,
                       kepler_line="kepler-0.10", gpu="kepler")


@pytest.mark.prometheus
def test_run_labels_summary_names_the_gpu_source_and_joules(gpu_prometheus: GpuPrometheus, tmp_path: Path) -> None:
    dataset = gpu_prometheus.dcgm
    summary = run_labels(gpu_prometheus.url, str(dataset.start_seconds), str(dataset.end_seconds), "60s",
                         tmp_path / "labels.parquet", progress=False)
    assert summary.gpu_source == "dcgm-exporter"
    assert summary.gpu_energy_joules == pytest.approx(dataset.dcgm["joules"].sum(), abs=1e-5)
    assert summary.gpu_power_gauge_joules > 0
    assert "dcgm-exporter" in summary.gpu_text()
    written = pd.read_parquet(tmp_path / "labels.parquet")
    assert written["gpu_energy_joules"].sum() == pytest.approx(summary.gpu_energy_joules)
    off = run_labels(gpu_prometheus.url, str(dataset.start_seconds), str(dataset.end_seconds), "60s",
                     tmp_path / "off.parquet", progress=False, gpu="off")
    assert off.gpu_source is None and off.gpu_energy_joules == 0.0


# -- without a server ------------------------------------------------------------------------------


def test_dcgm_lines_follow_the_exporters_template() -> None:
    body = dcgm_body({"DCGM_FI_DEV_POWER_USAGE": [dcgm_line("DCGM_FI_DEV_POWER_USAGE", GPU_A0, TRAIN_A, f"{63.379:f}")]})
    assert body == (
        "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n"
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-5fd4c0b2-0e1f-4a3c-9b7d-1c2e3f4a5b60",'
        'pci_bus_id="00000000:17:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-a",'
        'DCGM_FI_DRIVER_VERSION="550.54.15",container="trainer",namespace="ml",pod="train-a-7x9kq"} 63.379000\n'
    )


@pytest.mark.prometheus
def test_labels_command_gpu_option(gpu_prometheus: GpuPrometheus, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trainer.cli import train

    dataset = gpu_prometheus.dcgm
    common = ["labels", "--prometheus", gpu_prometheus.url, "--start", str(dataset.start_seconds),
              "--end", str(dataset.end_seconds), "--no-progress"]
    on = CliRunner().invoke(train, [*common, "--out", str(tmp_path / "on.parquet")], catch_exceptions=False)
    assert on.exit_code == 0, on.output
    assert f"GPU: dcgm-exporter, {dataset.dcgm['joules'].sum():.1f} J attributed" in on.output
    off = CliRunner().invoke(train, [*common, "--gpu", "off", "--out", str(tmp_path / "off.parquet")],
                             catch_exceptions=False)
    assert off.exit_code == 0, off.output
    assert "GPU: none" in off.output
