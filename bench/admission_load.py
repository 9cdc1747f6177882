"""Benchmark 1, admission load: the real webhook against a bare echo endpoint, same TLS, same load.

    python -m bench.admission_load [--quick] [--no-what-if] [--no-profile]

* Servers: `energetiscope serve` (one uvicorn worker, TLS, `--kube-access off`) with a trained
  model of 50,000 rows (`bench.model_artifact`), with its prediction cache (primed: every spec
  posted once first) and without (`--cache-entries 0`: every request predicts); and
  `bench.echo_server`, which only parses the body and echoes the uid, on the same certificate
  files, TLS context and uvicorn settings.
* Bodies: realistic Deployment reviews of ~10 KB (`bench.admission_body`), 512 different specs
  from the training set's catalogue, a fresh uid on every request.
* Closed loop: wrk, 16 connections, 1 thread (`bench.wrk_runner`). Throughput, p50, p99, and the
  throughput as a share of the echo server's, measured side by side in one run.
* Fixed rate: `bench.fixed_rate`, 16 connections, latency from the scheduled send time (no
  coordinated omission), at 45/s (the research prototype's maximum) and 100/s.
* Server CPU per request (from /proc), peak RSS, cache hits and prediction basis (/metrics). A
  webhook serving a trained model has a prediction process (`webhook.model.process`): its CPU and
  peak RSS are added to the server's (the model's arrays, mapped from the artifact, are shared
  pages counted in both).
* What-if rows (not the shipped configuration): misses predicted in the server's worker threads
  (`--no-prediction-process`, as before the prediction process), and the webhook serving a
  kd_tree artifact, the alternative to the shipped search for cache misses.
* Profile: py-spy over the loaded webhook (`bench.profile_webhook`) and the in-process cost of
  each step of mutate() (`bench.mutate_stages`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import servers
from bench.admission_body import UID_PLACEHOLDER, review_bodies
from bench.fixed_rate import FixedRateResult, run_fixed_rate
from bench.model_artifact import ArtifactInfo, build_artifacts
from bench.mutate_stages import StageCost, stage_costs
from bench.proc_stats import child_pids, family_cpu_seconds, peak_rss_mib
from bench.profile_webhook import Profile, start_recording, summarise
from bench.results import RunRecord, cell, markdown_table
from bench.wrk_runner import WrkResult, ensure_wrk, run_wrk, scheduler_seconds
from harness.webhook_process import WebhookProcess, create_certs

TRAINING_ROWS = 50_000
VARIANTS = 512
CONNECTIONS = 16
FIXED_RATES_PER_SECOND = (45.0, 100.0)
TARGET_SHARE_OF_ECHO = 0.30
TARGET_P99_MS = 5.0
TARGET_P99_OVER_P50 = 3.0
PREDICTION_PROCESS_START_SECONDS = 60.0  # spawned, it imports numpy and scikit-learn and loads the model
PROTOTYPE = {"requests_per_second": 45.0, "p50_ms": 21.8, "endpoint": "/predict"}


@dataclass(frozen=True)
class Durations:
    wrk_seconds: int
    warmup_seconds: int
    fixed_rate_seconds: float
    profile_seconds: int

    @classmethod
    def for_mode(cls, quick: bool) -> "Durations":
        return cls(6, 2, 5.0, 6) if quick else cls(15, 3, 12.0, 10)


@dataclass(frozen=True)
class ServerCase:
    key: str
    label: str
    module: tuple[str, ...]
    extra_args: tuple[str, ...] = ()
    prime_cache: bool = False
    is_webhook: bool = True
    what_if: bool = False
    profile: bool = False


@dataclass
class CaseResult:
    key: str
    label: str
    what_if: bool
    wrk: WrkResult
    fixed_rate: list[FixedRateResult]
    cpu_microseconds_per_request: float
    peak_rss_mib: float
    share_of_echo: float | None = None
    cache: dict[str, float] = field(default_factory=dict)
    predictions_by_basis: dict[str, float] = field(default_factory=dict)
    profile: Profile | None = None
    # What a closed loop's tail is made of, during the wrk run: the server's event-loop thread
    # and wrk runnable but waiting for a core (shares of the run's wall time: the machine), and
    # the server's garbage collections by generation (webhook only, from its /metrics).
    server_run_delay_share: float = 0.0
    wrk_run_delay_share: float = 0.0
    wrk_cpu_microseconds_per_request: float = 0.0
    gc_collections: dict[str, float] = field(default_factory=dict)


def cases(model: Path, kd_tree_model: Path | None, what_if: bool) -> list[ServerCase]:
    webhook_args = ("--model", str(model), "--kube-access", "off")
    listed = [
        ServerCase("echo", "echo server (parse body, echo uid)", servers.ECHO, is_webhook=False),
        ServerCase("webhook-cached", "webhook, cache hit", servers.WEBHOOK, webhook_args, prime_cache=True, profile=True),
        ServerCase("webhook-uncached", "webhook, cache miss (--cache-entries 0)", servers.WEBHOOK,
                   webhook_args + ("--cache-entries", "0"), profile=True),
    ]
    if what_if:
        # Before the prediction process: every miss predicted in the server's worker threads.
        listed.append(ServerCase("what-if-uncached-threads", "what-if: cache miss in worker threads (--no-prediction-process)",
                                 servers.WEBHOOK, webhook_args + ("--cache-entries", "0", "--no-prediction-process"),
                                 what_if=True))
        if kd_tree_model is not None:
            listed.append(ServerCase("what-if-uncached-kd-tree", "what-if: kd_tree artifact, cache miss", servers.WEBHOOK,
                                     ("--model", str(kd_tree_model), "--kube-access", "off", "--cache-entries", "0"),
                                     what_if=True))
    return listed


def _check_and_prime(server: WebhookProcess, bodies: list[bytes], case: ServerCase) -> None:
    """Post every variant once: answers must be 200 with the request's uid (and a patch from the
    webhook). For cached cases this also fills the cache, so the run measures hits only. First, a
    webhook's prediction process (`webhook.model.process`) must serve, so that no miss measured
    runs in a worker thread for want of it."""
    with server.client() as client:
        deadline = time.monotonic() + PREDICTION_PROCESS_START_SECONDS
        while case.is_webhook and client.get("/readyz").json()["prediction_process"]["state"] not in ("ready", "off"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{case.key}: the prediction process did not start: {client.get('/readyz').text}")
            time.sleep(0.1)
        for body in bodies:
            uid = str(uuid.uuid4())
            answer = client.post("/mutate", content=body.replace(UID_PLACEHOLDER.encode(), uid.encode()),
                                 headers={"content-type": "application/json"})
            response = answer.json().get("response", {}) if answer.status_code == 200 else {}
            if response.get("uid") != uid or (case.is_webhook and "patch" not in response):
                raise RuntimeError(f"{case.key}: bad answer {answer.status_code} {answer.text[:300]}")


def _webhook_metrics(server: WebhookProcess) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    with server.client() as client:
        text = client.get("/metrics").text
    cache: dict[str, float] = {}
    basis: dict[str, float] = {}
    collections: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("energetiscope_prediction_cache_lookups{"):
            cache[line.split('result="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("energetiscope_predictions_total{"):
            basis[line.split('basis="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("python_gc_collections_total{"):
            collections[line.split('generation="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return cache, basis, collections


def run_case(case: ServerCase, certs: Path, workdir: Path, bodies: list[bytes], bodies_file: Path,
             durations: Durations, profile: bool) -> CaseResult:
    with servers.server_process(case.module, certs, workdir / f"{case.key}.log", *case.extra_args) as server:
        assert server.process is not None
        pid = server.process.pid
        _check_and_prime(server, bodies, case)
        url = f"https://127.0.0.1:{server.port}"
        run_wrk(url, bodies_file, CONNECTIONS, durations.warmup_seconds)
        cache_before, _, gc_before = _webhook_metrics(server) if case.is_webhook else ({}, {}, {})
        # The server's CPU is its own and its prediction process's (the child does a miss's model work).
        children = child_pids(pid)
        cpu_before = family_cpu_seconds(pid, children)
        _, delay_before = scheduler_seconds(pid, pid)  # the main thread: the event loop
        wrk = run_wrk(url, bodies_file, CONNECTIONS, durations.wrk_seconds)
        _, delay_after = scheduler_seconds(pid, pid)
        cpu_per_request = (family_cpu_seconds(pid, children) - cpu_before) / max(wrk.requests, 1) * 1e6
        cache_after, basis, gc_after = _webhook_metrics(server) if case.is_webhook else ({}, {}, {})
        fixed = [run_fixed_rate("127.0.0.1", server.port, str(certs / "ca.crt"), bodies, rate,
                                durations.fixed_rate_seconds, CONNECTIONS) for rate in FIXED_RATES_PER_SECOND]
        recorded: Profile | None = None
        if profile and case.profile:
            folded = workdir / f"{case.key}.folded"
            spy = start_recording(pid, durations.profile_seconds, folded, 100, "--subprocesses")
            time.sleep(0.5)  # py-spy attaches before the load starts
            run_wrk(url, bodies_file, CONNECTIONS, durations.profile_seconds)
            spy.wait(timeout=durations.profile_seconds + 60)
            recorded = summarise(folded)
        result = CaseResult(
            key=case.key, label=case.label, what_if=case.what_if, wrk=wrk, fixed_rate=fixed,
            cpu_microseconds_per_request=round(cpu_per_request, 1),
            peak_rss_mib=round(peak_rss_mib(pid) + sum(peak_rss_mib(child) for child in children), 1),
            cache={k: cache_after.get(k, 0.0) - cache_before.get(k, 0.0) for k in cache_after},
            predictions_by_basis=basis, profile=recorded,
            server_run_delay_share=round((delay_after - delay_before) / wrk.duration_seconds, 4),
            wrk_run_delay_share=round(wrk.wrk_run_delay_seconds / wrk.duration_seconds, 4),
            wrk_cpu_microseconds_per_request=round(wrk.wrk_cpu_seconds / max(wrk.requests, 1) * 1e6, 1),
            gc_collections={k: gc_after[k] - gc_before.get(k, 0.0) for k in gc_after},
        )
    return result


def print_tables(results: list[CaseResult], stages: list[StageCost] | None) -> None:
    header = ["server", "req/s (16 conn)", "share of echo", "p50 ms", "p99 ms"]
    header += [f"{rate:g}/s p50 / p99 ms" for rate in FIXED_RATES_PER_SECOND]
    header += ["CPU us/req", "peak RSS MiB"]
    rows = []
    for r in results:
        fixed = [f"{cell(f.p50_ms, 2)} / {cell(f.p99_ms, 2)}" for f in r.fixed_rate]
        share = "1.00" if r.key == "echo" else cell(r.share_of_echo, 3)
        rows.append([r.label, cell(r.wrk.requests_per_second), share, cell(r.wrk.p50_ms, 2), cell(r.wrk.p99_ms, 2),
                     *fixed, cell(r.cpu_microseconds_per_request, 0), cell(r.peak_rss_mib, 0)])
    print(markdown_table(header, rows))
    print("\nwhat the closed loop's tail was made of, during the wrk run:")
    print(markdown_table(
        ["server", "p99 / p50", "server loop waiting for a core", "wrk waiting for a core", "wrk CPU us/req",
         "GC collections gen0/1/2"],
        [[r.label, cell(r.wrk.p99_ms / r.wrk.p50_ms if r.wrk.p50_ms else None, 2),
          f"{100 * r.server_run_delay_share:.1f}%", f"{100 * r.wrk_run_delay_share:.1f}%",
          cell(r.wrk_cpu_microseconds_per_request, 0),
          "/".join(f"{r.gc_collections.get(g, 0):.0f}" for g in "012") if r.gc_collections else "-"]
         for r in results]))
    for r in results:
        if r.profile is not None:
            print(f"\nprofile of {r.label} ({r.profile.samples - r.profile.idle_samples} busy samples):")
            print(markdown_table(["component", "share of busy CPU samples"],
                                 [[s.component, f"{100 * s.share:.1f}%"] for s in r.profile.shares[:10]]))
    if stages:
        print("\nin-process cost of each step of mutate():")
        print(markdown_table(["step", "us"], [[s.stage, cell(s.microseconds, 1)] for s in stages]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not for the README)")
    parser.add_argument("--rows", type=int, default=TRAINING_ROWS, help="training rows of the served model")
    parser.add_argument("--no-what-if", action="store_true", help="skip the what-if (kd_tree) row")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy and the per-step costs")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/admission_load.json)")
    args = parser.parse_args()
    record = RunRecord("admission_load", quick=args.quick)
    durations = Durations.for_mode(args.quick)
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-") as tmp:
        workdir = Path(tmp)
        certs = create_certs(workdir / "certs")
        print(f"training a {args.rows}-row model ...", flush=True)
        outputs = {"auto": workdir / "model.esmodel"}
        if not args.no_what_if:
            outputs["kd_tree"] = workdir / "model-kd-tree.esmodel"
        artifacts = build_artifacts(args.rows, outputs)
        artifact: ArtifactInfo = artifacts["auto"]
        kd_tree: ArtifactInfo | None = artifacts.get("kd_tree")
        bodies = review_bodies(VARIANTS)
        bodies_file = workdir / "bodies.ndjson"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        results: list[CaseResult] = []
        for case in cases(workdir / "model.esmodel", workdir / "model-kd-tree.esmodel" if kd_tree else None,
                          not args.no_what_if):
            print(f"measuring {case.label} ...", flush=True)
            results.append(run_case(case, certs, workdir, bodies, bodies_file, durations, not args.no_profile))
        echo_rps = results[0].wrk.requests_per_second
        for r in results:
            r.share_of_echo = round(r.wrk.requests_per_second / echo_rps, 4)
        stages = None if args.no_profile else stage_costs(bodies, workdir / "model.esmodel")
    print_tables(results, stages)
    stock = {r.key: r for r in results}
    targets = {
        f"throughput >= {TARGET_SHARE_OF_ECHO:.0%} of echo, cache hit": stock["webhook-cached"].share_of_echo >= TARGET_SHARE_OF_ECHO,
        f"throughput >= {TARGET_SHARE_OF_ECHO:.0%} of echo, cache miss": stock["webhook-uncached"].share_of_echo >= TARGET_SHARE_OF_ECHO,
        f"p99 <= {TARGET_P99_MS:g} ms at {CONNECTIONS} connections, cache hit": stock["webhook-cached"].wrk.p99_ms <= TARGET_P99_MS,
        f"p99 <= {TARGET_P99_OVER_P50:g} x p50 at {CONNECTIONS} connections, cache hit":
            stock["webhook-cached"].wrk.p99_ms <= TARGET_P99_OVER_P50 * stock["webhook-cached"].wrk.p50_ms,
        f"p99 < {TARGET_P99_MS:g} ms at {CONNECTIONS} connections, cache miss": stock["webhook-uncached"].wrk.p99_ms < TARGET_P99_MS,
        f"p99 < {TARGET_P99_MS:g} ms at {CONNECTIONS} connections, echo server itself": stock["echo"].wrk.p99_ms < TARGET_P99_MS,
    }
    print("\ntargets:", json.dumps(targets, indent=1))
    path = record.write({
        "mode": "quick" if args.quick else "default",
        "durations": asdict(durations),
        "connections": CONNECTIONS,
        "variants": VARIANTS,
        "body_bytes": {"min": min(map(len, bodies)), "median": sorted(map(len, bodies))[len(bodies) // 2],
                       "max": max(map(len, bodies))},
        "artifact": {k: v for k, v in asdict(artifact).items() if k != "path"},
        "kd_tree_artifact": {k: v for k, v in asdict(kd_tree).items() if k != "path"} if kd_tree else None,
        "prototype": PROTOTYPE,
        "targets_met": targets,
        "results": [_jsonable(r) for r in results],
        "mutate_stage_microseconds": [asdict(s) for s in stages] if stages else None,
    }, args.json)
    print(f"-> {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name}")


def _jsonable(result: CaseResult) -> dict[str, Any]:
    data = asdict(result)
    data["wrk"]["command"] = result.wrk.command
    return data


if __name__ == "__main__":
    main()
