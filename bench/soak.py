"""Soak: the real webhook at a fixed admission rate for minutes, its model replaced and its
serving certificate rotated on disk all the while; do memory, file descriptors and threads stay
flat, and does every review get a valid answer?

    python -m bench.soak [--minutes 10] [--rate 100] [--quick] [--server-env NAME=VALUE ...]

* Server: `energetiscope serve` (TLS, one uvicorn worker, `--kube-access off`, the shipped
  `--watch-interval` of 5 s) with a trained model (`bench.model_artifact`'s synthetic training
  set, 20,000 rows by default).
* Load: `bench.soak_load`, in a process of its own: `--rate` AdmissionReviews a second, open
  loop, over 16 keep-alive TLS connections that are each opened afresh every 100 requests (so
  new handshakes meet each new certificate); one request in 10 has a spec never sent before
  (a cache miss), the rest repeat 256 specs. Every answer that is not HTTP 200 with the
  request's uid, `allowed: true` and a JSONPatch writing `energetiscope.io/model` is a failure,
  and so is every broken or timed-out connection. Before the timed load, 4,352 reviews of new
  specs (closed loop) fill the prediction cache and the memo of objects read to their bound
  (`--cache-entries 4096`, the default): filled at the timed load's 10 new specs a second they
  would grow for 7 minutes, bounded growth a slope would take for a leak.
* Model reloads: every `model_every_seconds` a model is written over the served artifact the way
  `train fit` writes it (`save_model`: a temporary file in the same directory, fsync, rename),
  under a new model id. The models are fitted before the run, each on its own draw of the
  training set, and taken in turn: fitting one takes the 2 cores for 30 s, which a trainer
  does on another machine. Picked up when `/readyz` names the new id, and the answers'
  patches are counted by the model id they write.
* Certificate rotations: every `certificate_every_seconds` a new key and certificate from the
  same CA (`certs.authority.create_serving_bundle`, each file written atomically, key first).
  Picked up when a new TLS handshake presents the new serial.
* Samples: the server process's resident memory (VmRSS), open file descriptors (/proc/PID/fd)
  and threads every `sample_every_seconds`. After `warmup_seconds` (the first reloads, the
  worker threads and the allocator settling) a least-squares line through each gives its slope per hour;
  the resident memory just before each model reload gives the growth per reload.
* Latency (from when each request was due) and failures, overall and in the 15 s after each
  model reload (the cache is cold then: its key holds the model id).

At most 30 minutes (`--minutes`); `--quick` is a one-minute smoke test (a 5,000-row model, 50
reviews a second) writing to bench/results/quick/.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import ssl
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from bench import servers
from bench.machine import load_average
from bench.model_artifact import TRAINING_SEED, calibrated_knn, fit_encoder, training_set
from bench.proc_stats import children_sample, resident_sample
from bench.report import soak_tables
from bench.results import RunRecord, cell, markdown_table
from bench.soak_load import LoadOutcome, LoadPlan, LoadProcess
from bench.stats import linear_fit, percentile
from certs.authority import create_serving_bundle
from harness.webhook_process import WebhookProcess, create_certs
from webhook.model.artifact import save_model

MAX_MINUTES = 30.0
SECONDS_PER_HOUR = 3600.0
AFTER_RELOAD_SECONDS = 15.0  # latency "just after a model reload": the cache is cold then
PICKUP_GRACE_SECONDS = 60.0  # beyond the watch interval: a reload not seen by then failed
SERVER_NAMES = (["localhost"], ["127.0.0.1"])


@dataclass(frozen=True)
class SoakSettings:
    duration_seconds: float
    rate_per_second: float
    rows: int
    models: int  # fitted before the run, written in turn
    model_every_seconds: float
    certificate_every_seconds: float
    sample_every_seconds: float
    warmup_seconds: float
    watch_interval_seconds: float = 5.0  # the server's shipped default
    connections: int = 16
    requests_per_connection: int = 100
    variants: int = 256
    new_spec_every: int = 10
    cache_entries: int = 4096  # the server's default, passed explicitly: the fill depends on it

    @property
    def fill_specs(self) -> int:
        """Enough new specs to fill the prediction cache and the memo of objects read."""
        return self.cache_entries + self.variants

    @classmethod
    def for_mode(cls, quick: bool, minutes: float | None, rate: float | None, rows: int | None) -> SoakSettings:
        if quick:
            base = cls(60.0, 50.0, 5_000, 2, model_every_seconds=15.0, certificate_every_seconds=10.0,
                       sample_every_seconds=1.0, warmup_seconds=20.0)
        else:
            base = cls(600.0, 100.0, 20_000, 3, model_every_seconds=45.0, certificate_every_seconds=30.0,
                       sample_every_seconds=2.0, warmup_seconds=120.0)
        duration = base.duration_seconds if minutes is None else minutes * 60.0
        if not 0 < duration <= MAX_MINUTES * 60.0:
            raise SystemExit(f"--minutes must be above 0 and at most {MAX_MINUTES:g}")
        warmup = min(base.warmup_seconds, duration / 3)
        return cls(**{**asdict(base), "duration_seconds": duration, "warmup_seconds": warmup,
                      "rate_per_second": rate or base.rate_per_second, "rows": rows or base.rows})


# What is sampled and fitted a slope: the server's memory, descriptors and threads, and its children.
TRENDS = ("rss_mib", "open_fds", "threads", "child_processes", "children_rss_mib")


@dataclass
class Sample:
    seconds: float  # since the first request was due
    rss_mib: float
    open_fds: int
    threads: int
    load_average_1m: float
    child_processes: int  # the prediction process and multiprocessing's resource tracker
    children_rss_mib: float


@dataclass
class Event:
    kind: str  # "model" or "certificate"
    number: int
    due_seconds: float
    written_seconds: float  # when the new file was in place
    write_seconds: float  # how long writing it took
    identity: str  # the model id, or the certificate's serial in hex
    picked_up_seconds: float | None  # after written_seconds; None when never seen
    rss_mib_before: float


class Sampler(threading.Thread):
    """The server process's resident memory, open file descriptors and threads, while the load runs."""

    def __init__(self, pid: int, start_monotonic: float, duration_seconds: float, every_seconds: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.start_monotonic, self.every_seconds = pid, start_monotonic, every_seconds
        self.duration_seconds = duration_seconds
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.monotonic()
            if self.start_monotonic <= now <= self.start_monotonic + self.duration_seconds:
                taken = resident_sample(self.pid)
                children, children_rss_mib = children_sample(self.pid)
                self.samples.append(Sample(round(now - self.start_monotonic, 2), round(taken.rss_mib, 2),
                                           taken.open_fds, taken.threads, load_average()[0], children,
                                           round(children_rss_mib, 2)))
            self.halt.wait(self.every_seconds - (time.monotonic() - now) % self.every_seconds)


def fit_models(settings: SoakSettings) -> tuple[list[Pipeline], float]:
    """`settings.models` pipelines, each on its own draw of the training set; and the seconds it took."""
    started = time.perf_counter()
    pipelines = []
    for number in range(settings.models):
        data = training_set(settings.rows, seed=TRAINING_SEED + 1000 * number)
        encoder, features, _ = fit_encoder(data.requests)
        knn, _ = calibrated_knn(features, data.power_watts, "auto")
        pipelines.append(Pipeline([("features", encoder), ("knn", knn)]))
        print(f"  model {number + 1} of {settings.models} fitted ({time.perf_counter() - started:.0f} s)", flush=True)
    return pipelines, time.perf_counter() - started


def write_model(path: Path, pipeline: Pipeline, model_id: str, rows: int) -> str:
    """As `train fit` writes its artifact: atomically, with a model card in the metadata."""
    metadata = {"source": "bench.soak", "rows": rows, "created_at": datetime.now(timezone.utc).isoformat()}
    return save_model(path, pipeline, model_id, metadata=metadata)


def served_serial(server: WebhookProcess) -> int:
    """The serial of the certificate a new TLS handshake is shown."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with server.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls:
            certificate = tls.getpeercert()
    assert certificate is not None
    return int(str(certificate["serialNumber"]), 16)


def certificate_serial(cert_dir: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes()).serial_number


def _wait_for(condition: Any, timeout_seconds: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, ssl.SSLError, ValueError, KeyError):
            pass  # a handshake during a rotation, a busy server: try again
        time.sleep(0.1)
    return None


def run_schedule(server: WebhookProcess, settings: SoakSettings, model_path: Path, pipelines: list[Pipeline],
                 start: float) -> list[Event]:
    """Reload and rotate on schedule until the load ends; each waits until the server serves it."""
    assert server.process is not None
    pid = server.process.pid
    margin = settings.watch_interval_seconds + 10.0  # each change is seen before the load ends
    planned = [("model", settings.model_every_seconds / 2 + k * settings.model_every_seconds)
               for k in range(int(settings.duration_seconds // settings.model_every_seconds) + 1)]
    planned += [("certificate", settings.certificate_every_seconds / 3 + k * settings.certificate_every_seconds)
                for k in range(int(settings.duration_seconds // settings.certificate_every_seconds) + 1)]
    planned = sorted((due, kind) for kind, due in planned if due <= settings.duration_seconds - margin)
    events: list[Event] = []
    numbers = {"model": 0, "certificate": 0}
    timeout = settings.watch_interval_seconds + PICKUP_GRACE_SECONDS
    with server.client() as client:
        for due, kind in planned:
            time.sleep(max(0.0, start + due - time.monotonic()))
            numbers[kind] += 1
            number = numbers[kind]
            rss_before = resident_sample(pid).rss_mib
            began = time.monotonic()
            if kind == "model":
                identity = f"soak-model-{number:03d}"
                write_model(model_path, pipelines[number % len(pipelines)], identity, settings.rows)
                written = time.monotonic()
                picked = _wait_for(lambda: client.get("/readyz").json()["model"]["id"] == identity, timeout)
            else:
                create_serving_bundle(server.cert_dir, *SERVER_NAMES)
                serial = certificate_serial(server.cert_dir)
                identity = f"{serial:x}"
                written = time.monotonic()
                picked = _wait_for(lambda: served_serial(server) == serial, timeout)
            events.append(Event(kind, number, due, round(written - start, 3), round(written - began, 3), identity,
                                None if picked is None else round(picked, 2), round(rss_before, 2)))
            seen = "NOT picked up" if picked is None else f"served after {picked:.1f} s"
            print(f"  {written - start:6.1f} s: {kind} {number} ({identity[:16]}) {seen}", flush=True)
    return events


def model_runs_by_place(server: WebhookProcess) -> dict[str, float]:
    """energetiscope_model_runs_total by where the model ran: {"process": ..., "thread": ...}."""
    with server.client() as client:
        text = client.get("/metrics").text
    return {line.split('where="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("energetiscope_model_runs_total{")}


def reload_counters(server: WebhookProcess) -> dict[str, float]:
    """energetiscope_reloads_total by what and result, e.g. {"certificate/ok": 20.0}."""
    with server.client() as client:
        text = client.get("/metrics").text
    counters = {}
    for line in text.splitlines():
        if line.startswith("energetiscope_reloads_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            counters[f"{labels['what']}/{labels['result']}"] = float(line.rsplit(" ", 1)[1])
    return counters


def _trend(samples: list[Sample], name: str, warmup_seconds: float, measured_hours: float) -> dict[str, Any]:
    kept = [s for s in samples if s.seconds >= warmup_seconds]
    values = [float(getattr(s, name)) for s in kept]
    fit = linear_fit([s.seconds / SECONDS_PER_HOUR for s in kept], values)
    all_values = [float(getattr(s, name)) for s in samples]
    return {
        "at_start": all_values[0] if all_values else math.nan,
        "first": values[0] if values else math.nan,
        "last": values[-1] if values else math.nan,
        "min": min(values, default=math.nan),
        "max": max(values, default=math.nan),
        "slope_per_hour": round(fit.slope, 3),
        "slope_standard_error_per_hour": round(fit.slope_standard_error, 3),
        "growth_over_window": round(fit.slope * measured_hours, 3),
        "samples": fit.points,
    }


def _latency(values_ms: np.ndarray) -> dict[str, float]:
    ordered = sorted(float(v) for v in values_ms if not math.isnan(v))
    return {"answered": len(ordered), "p50_ms": round(percentile(ordered, 50), 2),
            "p90_ms": round(percentile(ordered, 90), 2), "p99_ms": round(percentile(ordered, 99), 2),
            "max_ms": round(ordered[-1], 2) if ordered else math.nan}


def summarise(settings: SoakSettings, outcome: LoadOutcome, samples: list[Sample], events: list[Event],
              counters: dict[str, float]) -> dict[str, Any]:
    measured_hours = (settings.duration_seconds - settings.warmup_seconds) / SECONDS_PER_HOUR
    after_warmup = outcome.due_seconds >= settings.warmup_seconds
    model_events = [e for e in events if e.kind == "model"]
    just_after_reload = np.zeros(len(outcome.due_seconds), dtype=bool)
    for event in model_events:
        just_after_reload |= (outcome.due_seconds >= event.written_seconds) & \
                             (outcome.due_seconds < event.written_seconds + AFTER_RELOAD_SECONDS)
    served = {model_id: int(np.count_nonzero(outcome.model_index == i)) for i, model_id in enumerate(outcome.model_ids)}
    before_reload = [(e.written_seconds, e.rss_mib_before) for e in model_events if e.written_seconds >= settings.warmup_seconds]
    per_reload = linear_fit(list(range(len(before_reload))), [rss for _, rss in before_reload])
    return {
        "requests": {
            "scheduled": len(outcome.due_seconds),
            "answered": int(np.count_nonzero(~np.isnan(outcome.latency_ms))),
            "failed": int(outcome.failed.sum()),
            "failed_after_warmup": int(outcome.failed[after_warmup].sum()),
            "new_specs": int(outcome.new_spec.sum()),
            "failures_by_reason": outcome.failures_by_reason,
            "failure_examples": outcome.failure_examples,
            "connections_opened": outcome.connections_opened,
            "max_send_lag_ms": outcome.max_send_lag_ms,
            "late_sends": outcome.late_sends,
        },
        "latency_after_warmup": _latency(outcome.latency_ms[after_warmup]),
        "latency_within_15s_of_a_model_reload": _latency(outcome.latency_ms[after_warmup & just_after_reload]),
        "latency_otherwise": _latency(outcome.latency_ms[after_warmup & ~just_after_reload]),
        "trends": {name: _trend(samples, name, settings.warmup_seconds, measured_hours)
                   for name in TRENDS},
        "rss_mib_before_each_model_reload": [{"seconds": s, "rss_mib": r} for s, r in before_reload],
        "rss_mib_per_model_reload": round(per_reload.slope, 3),
        "reloads": {
            kind: {
                "count": len([e for e in events if e.kind == kind]),
                "picked_up": len([e for e in events if e.kind == kind and e.picked_up_seconds is not None]),
                "pickup_seconds_max": max((e.picked_up_seconds for e in events if e.kind == kind
                                           and e.picked_up_seconds is not None), default=None),
                "pickup_seconds_median": _median([e.picked_up_seconds for e in events if e.kind == kind
                                                  and e.picked_up_seconds is not None]),
            } for kind in ("model", "certificate")
        },
        "every_new_model_answered": all(served.get(e.identity, 0) > 0 for e in model_events),
        "answers_by_model_id": served,
        "server_reload_counters": counters,
        "load_average_1m": {"mean": round(float(np.mean([s.load_average_1m for s in samples])), 2) if samples else None,
                            "max": max((s.load_average_1m for s in samples), default=None)},
    }


def _error_kind(line: str) -> str:
    """A log line's message without what varies (times, paths, numbers), to count them by kind."""
    logger, _, message = line.split("ERROR", 1)[1].strip(" :").partition(": ")
    return re.sub(r"\d+", "N", f"{logger}: {message.split(': ', 1)[0]}")[:120]


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=None, help=f"how long the load runs (default 10, at most {MAX_MINUTES:g})")
    parser.add_argument("--rate", type=float, default=None, help="admission reviews a second (default 100)")
    parser.add_argument("--rows", type=int, default=None, help="training rows of each model (default 20,000)")
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke test (results/quick/, not for the README)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server only, e.g. MALLOC_MMAP_THRESHOLD_=65536 (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/soak.json)")
    args = parser.parse_args()
    server_env = dict(item.split("=", 1) for item in args.server_env)
    settings = SoakSettings.for_mode(args.quick, args.minutes, args.rate, args.rows)
    record = RunRecord("soak", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="energetiscope-soak-") as tmp:
        workdir = Path(tmp)
        certs = create_certs(workdir / "certs")
        print(f"fitting {settings.models} models of {settings.rows:,} rows ...", flush=True)
        pipelines, fit_seconds = fit_models(settings)
        model_path = workdir / "model" / "model.esmodel"
        write_model(model_path, pipelines[0], "soak-model-000", settings.rows)
        args_for_server = ("--model", str(model_path), "--kube-access", "off",
                           "--watch-interval", f"{settings.watch_interval_seconds:g}",
                           "--cache-entries", str(settings.cache_entries))
        plan = LoadPlan("127.0.0.1", 0, str(certs / "ca.crt"), settings.rate_per_second, settings.duration_seconds,
                        settings.connections, settings.requests_per_connection, settings.variants,
                        settings.new_spec_every, fill_specs=settings.fill_specs)
        with servers.server_process(servers.WEBHOOK, certs, workdir / "webhook.log", *args_for_server,
                                    env=server_env) as server:
            assert server.process is not None
            load = LoadProcess(LoadPlan(**{**asdict(plan), "port": server.port}))
            print(f"soak: {settings.duration_seconds / 60:g} min at {settings.rate_per_second:g}/s ...", flush=True)
            before_fill = resident_sample(server.process.pid)
            children_before_fill = children_sample(server.process.pid)
            try:
                fill, start = load.start()
                print(f"  filled the caches: {fill.reviews:,} new specs in {fill.seconds:.0f} s, {fill.failed} failed",
                      flush=True)
                sampler = Sampler(server.process.pid, start, settings.duration_seconds, settings.sample_every_seconds)
                sampler.start()
                events = run_schedule(server, settings, model_path, pipelines, start)
                outcome = load.result(timeout_seconds=max(0.0, start + settings.duration_seconds - time.monotonic()) + 120)
                sampler.halt.set()
                sampler.join()
            finally:
                load.stop()
            counters = reload_counters(server)
            model_runs = model_runs_by_place(server)
        exit_code = server.process.returncode
        log_errors = Counter(_error_kind(line) for line in server.log_path.read_text(errors="replace").splitlines()
                             if " ERROR " in line or line.startswith("ERROR"))
    summary = summarise(settings, outcome, sampler.samples, events, counters)
    summary["fill"] = {**asdict(fill), "before": {**asdict(before_fill), "child_processes": children_before_fill[0],
                                                 "children_rss_mib": round(children_before_fill[1], 2)}}
    summary["model_runs"] = model_runs
    summary["server_exit_code"] = exit_code
    print(soak_tables({"settings": asdict(settings), **summary}))
    path = record.write({
        "mode": "quick" if args.quick else "default",
        "settings": asdict(settings),
        "server_env": server_env,
        "model_fit_seconds": round(fit_seconds, 1),
        **summary,
        "events": [asdict(e) for e in events],
        "samples": [asdict(s) for s in sampler.samples],
        "server_log_errors": dict(log_errors),
    }, args.json)
    print(f"-> {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name}")


if __name__ == "__main__":
    main()
