"""One process that loads a model artifact and predicts, as the webhook does; run by
`bench.predictor_scale`, which reads its peak RSS from the kernel when it exits.

    python -m bench.predictor_probe --model model.esmodel --queries queries.ndjson

Prints one JSON line: load time, single-prediction latency percentiles (`TrainedModel.predict`
on one request, the webhook's call on a cache miss, each query once), batch latency, and the BLAS
thread counts the predictions ran with (the searches set one unless the environment chose).

Each single prediction is also timed in the calling thread's CPU time, with the share of calls
the kernel preempted (involuntary context switches): on the shared 2-core benchmark machine the
wall-clock tail is mostly other processes' turns (at load average ~6, a 0.7 ms prediction
preempted once took up to 212 ms of wall time), which the CPU time leaves out.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from threadpoolctl import threadpool_info

from bench.stats import percentile
from webhook.model.artifact import load_model
from webhook.model.schema import InferenceRequest

BATCH_SIZE = 100
BATCH_REPEATS = 10
WARMUP_CALLS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    args = parser.parse_args()
    queries = [InferenceRequest.model_validate_json(line) for line in args.queries.read_text().splitlines() if line]
    started = time.perf_counter()
    model = load_model(args.model)
    load_seconds = time.perf_counter() - started
    for request in queries[:WARMUP_CALLS]:
        model.predict([request])
    single_ms: list[float] = []
    single_cpu_ms: list[float] = []
    preempted_calls = 0
    basis_model = 0
    for request in queries:
        switches_before = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        started, cpu_started = time.perf_counter(), time.thread_time()
        prediction = model.predict([request])[0]
        single_cpu_ms.append((time.thread_time() - cpu_started) * 1000)
        single_ms.append((time.perf_counter() - started) * 1000)
        preempted_calls += resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw > switches_before
        basis_model += prediction.basis == "model"
    batch = queries[:BATCH_SIZE]
    batch_ms = []
    for _ in range(BATCH_REPEATS):
        started = time.perf_counter()
        model.predict(batch)
        batch_ms.append((time.perf_counter() - started) * 1000)
    single_ms.sort()
    single_cpu_ms.sort()
    print(json.dumps({
        "load_seconds": round(load_seconds, 3),
        "single_p50_ms": round(percentile(single_ms, 50), 3),
        "single_p99_ms": round(percentile(single_ms, 99), 3),
        "single_mean_ms": round(statistics.fmean(single_ms), 3),
        "single_count": len(single_ms),
        "single_cpu_p50_ms": round(percentile(single_cpu_ms, 50), 3),
        "single_cpu_p99_ms": round(percentile(single_cpu_ms, 99), 3),
        "single_preempted_share": round(preempted_calls / len(single_ms), 3),
        "batch_size": len(batch),
        "batch_median_ms": round(statistics.median(batch_ms), 3),
        "model_basis_share": round(basis_model / len(single_ms), 3),
        "blas_threads": sorted({int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"}),
    }))


if __name__ == "__main__":
    main()
