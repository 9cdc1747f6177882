"""Benchmark 2, the predictor as the training set grows: fit time, artifact size, load time,
latency of one prediction and of a batch of 100, and peak memory, for each neighbour search
algorithm of `AnchoredKNN(algorithm=...)`.

    python -m bench.predictor_scale [--quick | --full] [--sizes 1000,10000,100000]

For each size one child process (`--one-size N`, so its peak RSS is that size's alone) draws N
synthetic workloads (`bench.workloads`; one training row per workload spec, as the trainer
makes them), fits the encoder once, then per algorithm fits and calibrates AnchoredKNN and
writes the artifact (`bench.model_artifact`). Each artifact is then loaded by a fresh probe
process (`bench.predictor_probe`) that predicts 1,000 single held-out requests and a batch of 100
(`TrainedModel.predict`, the webhook's call on a cache miss); its peak RSS is the serving
memory. `brute` is AnchoredKNN's own search (`webhook.model.knn.BruteForceIndex`: one BLAS
matrix-vector product per query, one BLAS thread), also what "auto" means; the trees are
scikit-learn's.

Fit time is the index build plus the trust radius (AnchoredKNN queries a seeded sample of 2,000
distinct specs since commit 6e8c805; before, every row, which made 1M rows take about an hour).
An algorithm whose fit is predicted, from the smaller sizes, to exceed `--max-fit-seconds` is
skipped and the prediction recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.model_artifact import calibrated_knn, fit_encoder, training_set, write_artifact
from bench.proc_stats import run_measured
from bench.results import RunRecord, cell, markdown_table
from bench.workloads import draw_workloads

DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000)
ALGORITHMS = ("brute", "ivf", "kd_tree", "ball_tree")
# Single predictions a probe times, each a distinct held-out spec: the p99 of 200 was the second
# or third slowest call, one preemption on the shared machine; of 1,000, the tenth.
QUERY_COUNT = 1000
QUERY_SEED = 20251104
DEFAULT_MAX_FIT_SECONDS = 150.0
FULL_MAX_FIT_SECONDS = 1800.0


def _predicted_fit_seconds(history: list[tuple[int, float]], rows: int) -> float | None:
    """Extrapolate the fit time to `rows` from the two largest earlier sizes (their exponent, at
    least 1; 1.5 with a single earlier size)."""
    if not history:
        return None
    n1, t1 = history[-1]
    exponent = 1.5
    if len(history) >= 2:
        n0, t0 = history[-2]
        if t0 > 0.05 and t1 > 0:
            exponent = max(1.0, math.log(t1 / t0) / math.log(n1 / n0))
    return t1 * (rows / n1) ** exponent


def run_one_size(rows: int, workdir: Path, algorithms: list[str], max_fit_seconds: float,
                 history: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    """In the child: train every algorithm's artifact for `rows` rows; probing is the parent's."""
    data = training_set(rows)
    encoder, features, encode_seconds = fit_encoder(data.requests)
    fitted: dict[str, Any] = {}
    for algorithm in algorithms:
        predicted = _predicted_fit_seconds(history.get(algorithm, []), rows)
        if predicted is not None and predicted > max_fit_seconds:
            fitted[algorithm] = {"skipped": f"fit predicted to take {predicted:,.0f} s (> {max_fit_seconds:,.0f} s)"}
            continue
        knn, knn_fit_seconds = calibrated_knn(features, data.power_watts, algorithm)
        info = write_artifact(workdir / f"model-{rows}-{algorithm}.esmodel", encoder, knn, rows, algorithm, encode_seconds,
                              knn_fit_seconds)
        fitted[algorithm] = asdict(info)
        del knn
    return {"rows": rows, "draw_seconds": round(data.draw_seconds, 3), "encode_seconds": round(encode_seconds, 3),
            "features": int(features.shape[1]), "feature_matrix_mib": round(features.nbytes / 2**20, 1),
            "fitted": fitted}


def _probe(model: Path, queries: Path, workdir: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.predictor_probe", "--model", str(model), "--queries", str(queries)]
    run = run_measured(command, workdir / "probe.log")
    if run.exit_code != 0:
        raise RuntimeError(f"probe of {model.name} failed:\n{run.output[-2000:]}")
    result = json.loads(run.output.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(run.peak_rss_mib, 1)
    return result


def measure(sizes: list[int], algorithms: list[str], max_fit_seconds: float, workdir: Path,
            keep: bool = False) -> list[dict[str, Any]]:
    queries = workdir / "queries.ndjson"
    queries.write_text("".join(d.request.model_dump_json() + "\n" for d in draw_workloads(QUERY_COUNT, QUERY_SEED)))
    history: dict[str, list[tuple[int, float]]] = {}
    rows_out: list[dict[str, Any]] = []
    for rows in sizes:
        print(f"{rows:,} rows: drawing, encoding, fitting {', '.join(algorithms)} ...", flush=True)
        state = workdir / f"size-{rows}.json"
        command = [sys.executable, "-m", "bench.predictor_scale", "--one-size", str(rows), "--workdir", str(workdir),
                   "--algorithms", ",".join(algorithms), "--max-fit-seconds", str(max_fit_seconds),
                   "--history", json.dumps(history), "--state", str(state)]
        run = run_measured(command, workdir / f"size-{rows}.log")
        if run.exit_code != 0:
            raise RuntimeError(f"fitting {rows} rows failed:\n{run.output[-3000:]}")
        size = json.loads(state.read_text())
        for algorithm in algorithms:
            fitted = size["fitted"][algorithm]
            row: dict[str, Any] = {"rows": rows, "algorithm": algorithm, "draw_seconds": size["draw_seconds"],
                                   "encode_seconds": size["encode_seconds"], "fit_process_peak_rss_mib": round(run.peak_rss_mib, 1)}
            if "skipped" in fitted:
                rows_out.append({**row, "skipped": fitted["skipped"]})
                continue
            history.setdefault(algorithm, []).append((rows, fitted["knn_fit_seconds"]))
            model = Path(fitted["path"])
            row.update({k: fitted[k] for k in ("knn_fit_seconds", "save_seconds", "artifact_bytes", "trust_radius")})
            row.update(_probe(model, queries, workdir))
            rows_out.append(row)
            if not keep:
                model.unlink()
    return rows_out


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["rows", "algorithm", "KNN fit s", "artifact MiB", "load s", "one p50 ms", "one p99 ms", "batch of 100 ms",
              "serving peak RSS MiB", "fit peak RSS MiB"]
    table = []
    for r in rows:
        if "skipped" in r:
            table.append([cell(r["rows"]), r["algorithm"], f"skipped: {r['skipped']}", *[""] * 7])
            continue
        table.append([cell(r["rows"]), r["algorithm"], cell(r.get("knn_fit_seconds"), 1),
                      cell(r["artifact_bytes"] / 2**20, 1) if "artifact_bytes" in r else "-", cell(r["load_seconds"], 2),
                      cell(r["single_p50_ms"], 2), cell(r["single_p99_ms"], 2), cell(r["batch_median_ms"], 1),
                      cell(r["peak_rss_mib"], 0), cell(r.get("fit_process_peak_rss_mib"), 0)])
    print(markdown_table(header, table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    mode.add_argument("--full", action="store_true", help=f"sizes {FULL_SIZES}, fits of up to an hour each")
    parser.add_argument("--sizes", default=None, help="comma-separated training rows (overrides the mode's)")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--max-fit-seconds", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/predictor_scale.json)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the artifacts and queries in DIR, to probe again on a quieter machine with "
                             "`python -m bench.predictor_probe --model DIR/model-N-ALG.esmodel --queries DIR/queries.ndjson`")
    # The child's side (one size, in its own process):
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--history", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    algorithms = [a for a in args.algorithms.split(",") if a]
    max_fit = args.max_fit_seconds or (FULL_MAX_FIT_SECONDS if args.full else DEFAULT_MAX_FIT_SECONDS)
    if args.one_size is not None:
        history = {k: [tuple(p) for p in v] for k, v in json.loads(args.history).items()}
        result = run_one_size(args.one_size, args.workdir, algorithms, max_fit, history)  # type: ignore[arg-type]
        result["child_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        args.state.write_text(json.dumps(result))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(
        FULL_SIZES if args.full else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    record = RunRecord("predictor_scale", quick=args.quick)
    started = time.perf_counter()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        rows = measure(sizes, algorithms, max_fit, args.keep.resolve(), keep=True)
    else:
        with tempfile.TemporaryDirectory(prefix="energetiscope-bench-") as tmp:
            rows = measure(sizes, algorithms, max_fit, Path(tmp))
    print_table(rows)
    path = record.write({"mode": "full" if args.full else "quick" if args.quick else "default", "sizes": sizes,
                         "algorithms": algorithms, "max_fit_seconds": max_fit, "queries": QUERY_COUNT,
                         "measure_seconds": round(time.perf_counter() - started, 1), "results": rows},
                        args.json or (None if not args.full else Path(__file__).resolve().parent / "results" /
                                      "predictor_scale_full.json"))
    print(f"-> {path.name}")


if __name__ == "__main__":
    main()
