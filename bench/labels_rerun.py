"""The `labels` step again, against a TSDB `bench.trainer_scale --keep DIR --keep-prometheus` kept:
where its time goes, and what sending chunks ahead (`--queries-in-flight`) changes.

    python -m bench.labels_rerun --kept DIR/20000x1d-kepler-0.10 [--in-flight 1,2] [--rounds 2]

Backfilling 20,000 workloads takes most of an hour; the kept TSDB lets the step be timed again in
minutes. One Prometheus serves every run; the settings alternate round by round, so that the
machine's other load falls on each alike. Per run: wall time, the labels process's CPU and peak
RSS (`bench.proc_stats.run_measured`), and the Prometheus process's CPU over the run (its
/proc/PID/stat before and after). The labels files of every run must be identical, row for row.
The range (start, end) is read from the kept labels.parquet: its first window's start and one
window past its last.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from bench.proc_stats import cpu_seconds, run_measured
from bench.results import RunRecord, cell, markdown_table
from bench.cluster_sim import WINDOW_SECONDS
from bench.trainer_scale import TRAINER
from harness.prometheus import PrometheusHarness


@dataclass(frozen=True)
class LabelsRun:
    queries_in_flight: int
    round: int
    wall_seconds: float
    labels_cpu_seconds: float
    prometheus_cpu_seconds: float
    peak_rss_mib: float
    rows: int


def kept_range(labels_path: Path) -> tuple[float, float]:
    """(start, end) Unix seconds of the kept labels: the first window's start, one window past the last."""
    starts = pd.read_parquet(labels_path, columns=["window_start"])["window_start"]
    return starts.min().timestamp(), starts.max().timestamp() + WINDOW_SECONDS


def run_once(url: str, prometheus_pid: int, start: float, end: float, in_flight: int, out: Path,
             round_number: int) -> LabelsRun:
    before = cpu_seconds(prometheus_pid)
    run = run_measured(TRAINER + ["labels", "--prometheus", url, "--start", str(start), "--end", str(end),
                                  "--step", f"{WINDOW_SECONDS}s", "--out", str(out), "--no-progress",
                                  "--queries-in-flight", str(in_flight)], out.with_suffix(".log"))
    if run.exit_code != 0:
        raise SystemExit(f"labels failed (exit {run.exit_code}): {run.output.strip().splitlines()[-1:]}")
    return LabelsRun(in_flight, round_number, round(run.wall_seconds, 1), round(run.cpu_seconds, 1),
                     round(cpu_seconds(prometheus_pid) - before, 1), round(run.peak_rss_mib, 1),
                     pq.ParquetFile(out).metadata.num_rows)


def table(runs: list[dict[str, Any]]) -> str:
    """The runs as bench/README.md shows them (`bench.report` renders the recorded file with this)."""
    return markdown_table(
        ["queries in flight", "round", "wall s", "labels CPU s", "Prometheus CPU s", "labels peak MiB", "rows"],
        [[r["queries_in_flight"], r["round"], cell(r["wall_seconds"]), cell(r["labels_cpu_seconds"]),
          cell(r["prometheus_cpu_seconds"]), cell(r["peak_rss_mib"], 0), cell(r["rows"])] for r in runs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, required=True,
                        help="one size's directory kept by bench.trainer_scale --keep DIR --keep-prometheus")
    parser.add_argument("--in-flight", default="1,2", help="comma-separated --queries-in-flight settings")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    settings = [int(value) for value in args.in_flight.split(",")]
    start, end = kept_range(args.kept / "labels.parquet")
    record = RunRecord("labels_rerun")
    runs: list[LabelsRun] = []
    with tempfile.TemporaryDirectory(prefix="energetiscope-labels-") as scratch, \
            PrometheusHarness(args.kept / "prometheus") as harness:
        url = harness.start(ready_timeout_seconds=600)
        assert harness.pid is not None
        first: pd.DataFrame | None = None
        for round_number in range(1, args.rounds + 1):
            for in_flight in settings:
                out = Path(scratch) / f"labels-{in_flight}-{round_number}.parquet"
                runs.append(run_once(url, harness.pid, start, end, in_flight, out, round_number))
                print(runs[-1], flush=True)
                written = pd.read_parquet(out)
                if first is None:
                    first = written
                else:
                    pd.testing.assert_frame_equal(written, first, check_exact=True)
                out.unlink()
    print(table([r.__dict__ for r in runs]))
    path = record.write({"kept": args.kept.name, "start_seconds": start, "end_seconds": end,
                         "runs": [r.__dict__ for r in runs]}, args.json)
    print(f"-> {path.name}")


if __name__ == "__main__":
    main()
