"""Latency of one /mutate call: N sequential calls on a Deployment review over TLS.

    python -m bench.mutate_latency [--calls 1000] [--json bench/results/mutate_latency.json]

Starts the real webhook (`energetiscope serve`, embedded prior, one uvicorn worker) with
certificates made by `energetiscope certs create`, keeps one TLS connection open (as the
apiserver does), posts examples/admission-review-deployment.json with a fresh uid each
time, and reports percentiles of the wall time of each round trip.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from harness.webhook_process import WebhookProcess, create_certs

REPO_ROOT = Path(__file__).resolve().parent.parent


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    body = json.loads((REPO_ROOT / "examples" / "admission-review-deployment.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        certs = create_certs(Path(tmp) / "certs")
        with WebhookProcess(certs, Path(tmp) / "webhook.log") as server, server.client() as client:
            latencies_ms: list[float] = []
            for i in range(args.warmup + args.calls):
                review = copy.deepcopy(body)
                review["request"]["uid"] = str(uuid.uuid4())
                started = time.perf_counter()
                response = client.post("/mutate", json=review)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200 or "patch" not in response.json()["response"]:
                    raise SystemExit(f"call {i} failed: {response.status_code} {response.text[:200]}")
                if i >= args.warmup:
                    latencies_ms.append(elapsed)
    latencies_ms.sort()
    result = {
        "benchmark": "mutate_latency",
        "calls": args.calls,
        "body_bytes": len(json.dumps(body)),
        "p50_ms": round(percentile(latencies_ms, 50), 3),
        "p90_ms": round(percentile(latencies_ms, 90), 3),
        "p99_ms": round(percentile(latencies_ms, 99), 3),
        "max_ms": round(latencies_ms[-1], 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
    }
    print(f"{'calls':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{result['calls']:>6} {result['p50_ms']:>8} {result['p90_ms']:>8} {result['p99_ms']:>8} {result['max_ms']:>8}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
