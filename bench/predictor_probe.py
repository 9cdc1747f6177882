"""One process that loads a model artifact and predicts, as the webhook does; run by
`bench.predictor_scale`, which reads its peak RSS from the kernel when it exits.

    python -m bench.predictor_probe --model model.esmodel --queries queries.ndjson

Prints one JSON line: load time, single-prediction latency percentiles (`TrainedModel.predict`
on one request, the webhook's call on a cache miss), batch latency, and the BLAS thread counts
the predictions ran with (the brute-force search sets one unless the environment chose).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from threadpoolctl import threadpool_info

from bench.stats import percentile
from webhook.model.artifact import load_model
from webhook.model.schema import InferenceRequest

SINGLE_REPEATS = 200
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
    single_ms = []
    basis_model = 0
    for i in range(SINGLE_REPEATS):
        request = queries[i % len(queries)]
        started = time.perf_counter()
        prediction = model.predict([request])[0]
        single_ms.append((time.perf_counter() - started) * 1000)
        basis_model += prediction.basis == "model"
    batch = queries[:BATCH_SIZE]
    batch_ms = []
    for _ in range(BATCH_REPEATS):
        started = time.perf_counter()
        model.predict(batch)
        batch_ms.append((time.perf_counter() - started) * 1000)
    single_ms.sort()
    print(json.dumps({
        "load_seconds": round(load_seconds, 3),
        "single_p50_ms": round(percentile(single_ms, 50), 3),
        "single_p99_ms": round(percentile(single_ms, 99), 3),
        "single_mean_ms": round(statistics.fmean(single_ms), 3),
        "batch_size": len(batch),
        "batch_median_ms": round(statistics.median(batch_ms), 3),
        "model_basis_share": round(basis_model / SINGLE_REPEATS, 3),
        "blas_threads": sorted({int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"}),
    }))


if __name__ == "__main__":
    main()
