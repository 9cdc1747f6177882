"""The run model's comparison (`trainer.run_fit.compare_runs`, what `train fit --runs-dataset`
runs) again, on the Job runs a `bench.trainer_scale --keep DIR` run kept: how long choosing the run
model takes at that size, and what it chose.

    python -m bench.run_model_rerun --kept DIR/20000x1d-kepler-0.10 [--json FILE]

The run dataset is built from the kept `runs.parquet` and `requests.ndjson` as `train dataset
--runs` builds it. The pod model that scores energy per run is the embedded prior here: the
energy rows are not this benchmark's point, the run time's are. Timed: the whole comparison (every
candidate's out-of-fold run seconds, the served model's out-of-fold p10/p50/p90 and the
baselines), first thing in the process, as `train fit` meets it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import RunRecord
from trainer.collect import read_requests
from trainer.run_dataset import build_run_dataset, write_run_dataset
from trainer.run_fit import compare_runs, describe_run_params, read_run_targets
from trainer.runs import read_runs
from webhook.model.prior import PriorPredictor


def markdown_table(*rows: dict[str, Any]) -> str:
    lines = ["| kept | runs | templates | candidates | compare_runs s | chosen | run seconds mean abs log error |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kept']} | {r['runs']:,} | {r['templates']:,} | {r['candidates']} | {r['compare_runs_seconds']:.1f} | "
              f"{r['chosen']} | {r['run_seconds_mean_abs_log_error']:.4f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kept", type=Path, required=True, help="a directory bench.trainer_scale --keep wrote")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    record = RunRecord("run_model_rerun")
    frame, _ = build_run_dataset(read_runs(args.kept / "runs.parquet"), read_requests(args.kept / "requests.ndjson"))
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-") as tmp:
        table = read_run_targets(write_run_dataset(frame, Path(tmp) / "run-dataset.parquet"))
    templates = int(len(np.unique(table.groups)))
    started = time.perf_counter()
    comparison = compare_runs(table, PriorPredictor(), PriorPredictor())
    compare_seconds = time.perf_counter() - started
    row = {"kept": args.kept.name, "runs": len(table.requests), "templates": templates, "candidates": len(comparison.grid),
           "compare_runs_seconds": round(compare_seconds, 1), "chosen": describe_run_params(comparison.chosen),
           "run_seconds_mean_abs_log_error": comparison.seconds[0].mean_abs_log_error}
    print(markdown_table(row))
    path = record.write({"results": [row]}, args.json)
    print(f"-> {path.name}")


if __name__ == "__main__":
    main()
