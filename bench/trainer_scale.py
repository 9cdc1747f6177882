"""Benchmark 3, the trainer at cluster scale: a simulated cluster backfilled into a real Prometheus,
then `energetiscope train labels`, `runs`, `dataset` and `fit` timed, with their peak memory.

    python -m bench.trainer_scale [--quick | --full] [--workloads 200] [--days 7] [--kepler-line kepler-0.10]

Per size: `bench.cluster_sim` simulates N workloads over D days at 60 s (one pod at a time per
workload, from the ground truth in `bench.power_model`) and writes their InferenceRequests (NDJSON,
as `train collect` would); `bench.openmetrics_blocks` writes Kepler counters and kube-state-metrics
owner series as OpenMetrics and backfills them with promtool into the data directory of a real
Prometheus (`harness.prometheus.PrometheusHarness`, loopback only). Each trainer step then
runs as its own process, through its CLI (`python -m trainer.cli ...`), and its wall time, CPU time
and peak RSS come from the kernel (`bench.proc_stats`); Prometheus' own peak RSS is read after
`labels` and `runs`. The energy the labels step recovers, and the Job runs and their joules the
runs step recovers, are checked against what was simulated (`bench.cluster_sim.run_truth_table`).

Default: 200 workloads x 7 days, once per Kepler line (fits `make bench`); --full adds 2,000
workloads x 1 day and x 7 days (the issue's size) on Kepler 0.10; --quick: 50 workloads x 2 days.
Each trainer step runs under a 16 GiB address-space limit (a step that would not fit fails alone).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cluster_sim import WINDOW_SECONDS, SimulatedCluster, run_truth_table, simulate, write_requests, write_truth
from bench.openmetrics_blocks import KEPLER_LINES, BackfillStats, backfill
from bench.proc_stats import peak_rss_mib, run_measured
from bench.results import RESULTS_DIR, RunRecord, cell, markdown_table
from harness.prometheus import PrometheusHarness

SIMULATION_SEED = 20251105
# (workloads, days, Kepler line)
DEFAULT_SIZES = ((200, 7.0, "kepler-0.10"), (200, 7.0, "kepler-0.7"))
QUICK_SIZES = ((50, 2.0, "kepler-0.10"), (50, 2.0, "kepler-0.7"))
FULL_SIZES = DEFAULT_SIZES + ((2000, 1.0, "kepler-0.10"), (2000, 7.0, "kepler-0.10"))
# Each trainer step runs with this address-space limit, so that a step that outgrows the machine
# fails with MemoryError in its own process instead of waking the kernel's OOM killer on a
# machine shared with others.
STEP_ADDRESS_SPACE_LIMIT_GIB = 16
TRAINER = [sys.executable, "-m", "trainer.cli"]


@dataclass(frozen=True)
class StepResult:
    step: str
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    output_bytes: int | None
    summary: str  # the step's own last line(s) of output
    failed: str | None = None  # why the step did not finish (e.g. MemoryError under the limit)


@dataclass
class SizeResult:
    workloads: int
    days: float
    kepler_line: str
    pods: int
    nodes: int
    simulate_seconds: float
    backfill: BackfillStats
    prometheus_start_seconds: float
    prometheus_peak_rss_mib: float
    steps: list[StepResult]
    label_rows: int
    simulated_energy_joules: float
    recovered_energy_joules: float
    runs: int = 0  # Job runs `train runs` found
    simulated_runs: int = 0
    simulated_run_energy_joules: float = 0.0
    recovered_run_energy_joules: float = 0.0  # their joules, all pods and retries
    workdir: str | None = None


def _run_step(name: str, arguments: list[str], output: Path) -> StepResult:
    run = run_measured(TRAINER + [name, *arguments], output.with_suffix(".log"),
                       address_space_limit_bytes=STEP_ADDRESS_SPACE_LIMIT_GIB * 2**30)
    # Paths in the output name this machine's temporary directory: keep file names only.
    lines = [line.replace(str(output.parent) + "/", "") for line in run.output.strip().splitlines() if line.strip()]
    failed = None
    if run.exit_code != 0:
        failed = f"exit {run.exit_code}: {lines[-1][:300] if lines else ''}"
        print(f"  {name} failed: {failed}", flush=True)
    return StepResult(step=name, wall_seconds=round(run.wall_seconds, 1), cpu_seconds=round(run.cpu_seconds, 1),
                      peak_rss_mib=round(run.peak_rss_mib, 1),
                      output_bytes=output.stat().st_size if output.exists() and not failed else None,
                      summary=" / ".join(lines[-2:])[:400], failed=failed)


def _simulated_energy(cluster: SimulatedCluster) -> float:
    """Energy of every window the labels step can see: windows between two samples of a pod."""
    return float(sum(pod.step_joules[1:].sum() for pod in cluster.pods))


def run_size(workloads: int, days: float, line: str, workdir: Path, seed: int = SIMULATION_SEED) -> SizeResult:
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cluster = simulate(workloads, days, seed, time.time())
    simulate_seconds = time.perf_counter() - started
    requests = write_requests(cluster, workdir / "requests.ndjson")
    write_truth(cluster, workdir / "truth.json")
    print(f"  {workloads} workloads x {days:g} days: {len(cluster.pods)} pods; backfilling ...", flush=True)
    with PrometheusHarness(workdir / "prometheus") as harness:
        stats = backfill(cluster, line, harness.storage_dir, harness.binaries.promtool)
        started = time.perf_counter()
        url = harness.start(ready_timeout_seconds=600)
        start_seconds = time.perf_counter() - started
        prometheus_pid = harness.pid
        assert prometheus_pid is not None
        print("  labels ...", flush=True)
        labels_path, dataset_path, model_path = workdir / "labels.parquet", workdir / "dataset.parquet", workdir / "model.esmodel"
        steps = [_run_step("labels", ["--prometheus", url, "--start", str(cluster.grid_start_seconds),
                                      "--end", str(cluster.grid_end_seconds), "--step", f"{WINDOW_SECONDS}s",
                                      "--kepler-line", line, "--out", str(labels_path), "--no-progress"], labels_path)]
        print("  runs ...", flush=True)
        runs_path = workdir / "runs.parquet"
        steps.append(_run_step("runs", ["--prometheus", url, "--start", str(cluster.grid_start_seconds),
                                        "--end", str(cluster.grid_end_seconds + WINDOW_SECONDS),
                                        "--kepler-line", line, "--out", str(runs_path)], runs_path))
        prometheus_rss = peak_rss_mib(prometheus_pid)
    if not steps[0].failed:  # the labels step
        print("  dataset ...", flush=True)
        steps.append(_run_step("dataset", ["--labels", str(labels_path), "--requests", str(requests),
                                           "--out", str(dataset_path)], dataset_path))
    if not steps[-1].failed:
        print("  fit ...", flush=True)
        steps.append(_run_step("fit", ["--dataset", str(dataset_path), "--out", str(model_path),
                                       "--text-embedding", "tfidf", "--no-progress"], model_path))
    run_truth = pd.DataFrame(run_truth_table(cluster))
    runs = pd.read_parquet(runs_path, columns=["energy_joules"]) if runs_path.exists() else pd.DataFrame({"energy_joules": []})
    recovered = pd.read_parquet(labels_path, columns=["energy_joules"])["energy_joules"] if labels_path.exists() else pd.Series([], dtype="float64")
    return SizeResult(
        workloads=workloads, days=days, kepler_line=line, pods=len(cluster.pods), nodes=len(cluster.nodes),
        simulate_seconds=round(simulate_seconds, 1), backfill=stats, prometheus_start_seconds=round(start_seconds, 1),
        prometheus_peak_rss_mib=round(prometheus_rss, 1), steps=steps, label_rows=len(recovered),
        simulated_energy_joules=round(_simulated_energy(cluster), 1),
        recovered_energy_joules=round(float(np.sum(recovered.to_numpy())), 1),
        runs=len(runs), simulated_runs=len(run_truth),
        simulated_run_energy_joules=round(float(run_truth["energy_joules"].sum()) if len(run_truth) else 0.0, 1),
        recovered_run_energy_joules=round(float(runs["energy_joules"].sum()), 1),
    )


def print_table(results: list[SizeResult]) -> None:
    header = ["workloads x days", "Kepler", "pods", "samples", "OpenMetrics GiB", "backfill s (promtool s)", "TSDB MiB",
              "Prometheus start s", "labels s / MiB", "Prometheus peak MiB", "dataset s / MiB", "fit s / MiB",
              "label rows", "energy recovered", "runs s / MiB", "runs found", "run energy recovered"]
    rows = []
    for r in results:
        steps = {s.step: s for s in r.steps}
        def step(name: str) -> str:
            if name not in steps:
                return "not run"
            done = steps[name]
            text = f"{cell(done.wall_seconds)} / {cell(done.peak_rss_mib, 0)}"
            return f"{text} FAILED ({done.failed})" if done.failed else text

        rows.append([f"{r.workloads:,} x {r.days:g}", r.kepler_line, cell(r.pods), cell(r.backfill.samples),
                     cell(r.backfill.openmetrics_bytes / 2**30, 2),
                     f"{cell(r.backfill.wall_seconds)} ({cell(r.backfill.promtool_seconds)})",
                     cell(r.backfill.tsdb_bytes / 2**20, 0), cell(r.prometheus_start_seconds), step("labels"),
                     cell(r.prometheus_peak_rss_mib, 0), step("dataset"), step("fit"), cell(r.label_rows),
                     f"{r.recovered_energy_joules / r.simulated_energy_joules:.4%}", step("runs"),
                     f"{r.runs} of {r.simulated_runs}",
                     f"{r.recovered_run_energy_joules / r.simulated_run_energy_joules:.4%}" if r.simulated_run_energy_joules else "-"])
    print(markdown_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    parser.add_argument("--workloads", type=int, default=None, help="one size instead of the mode's")
    parser.add_argument("--days", type=float, default=7.0, help="with --workloads")
    parser.add_argument("--kepler-line", choices=KEPLER_LINES, default="kepler-0.10", help="with --workloads")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each size's files (requests, truth, labels, dataset, model) under this directory")
    parser.add_argument("--keep-prometheus", action="store_true",
                        help="with --keep, keep each size's backfilled TSDB too (prometheus/ in its directory, GBs "
                             "at 2,000 workloads x 7 days), so that single steps can be run again against it with "
                             "harness.prometheus.PrometheusHarness")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.keep_prometheus and not args.keep:
        parser.error("--keep-prometheus needs --keep DIR")
    sizes = [(args.workloads, args.days, args.kepler_line)] if args.workloads else list(
        FULL_SIZES if args.full else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    record = RunRecord("trainer_scale", quick=args.quick)
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-") as tmp:
        for workloads, days, line in sizes:
            print(f"trainer scale: {workloads} workloads x {days:g} days, {line}", flush=True)
            name = f"{workloads}x{days:g}d-{line}"
            workdir = (args.keep / name) if args.keep else Path(tmp) / name
            result = run_size(workloads, days, line, workdir)
            # The TSDB of the largest size is GBs: drop it before the next size, even when keeping the
            # rest, unless asked to keep it.
            if not (args.keep and args.keep_prometheus):
                shutil.rmtree(workdir / "prometheus", ignore_errors=True)
            if args.keep:
                result.workdir = name
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            results.append(result)
    print_table(results)
    default_name = "trainer_scale_full.json" if args.full else "trainer_scale.json"
    path = record.write({"mode": "full" if args.full else "quick" if args.quick else "default",
                         "seed": SIMULATION_SEED, "results": [asdict(r) for r in results]},
                        args.json or (RESULTS_DIR / default_name if args.full else None))
    print(f"-> {path.name}")


if __name__ == "__main__":
    main()
