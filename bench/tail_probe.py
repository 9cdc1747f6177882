"""Where a closed loop's latency tail comes from, measured so that the machine's load cannot fake it.

    python -m bench.tail_probe --model FILE [--rounds 3] [--seconds 8] [--servers echo,webhook]
                               [--before-tree DIR] [--no-monitor] [--json FILE]

wrk (1 thread, 16 connections, the admission_load bodies) runs against each server in turn,
alternating them round by round, while each server runs inside a recorder (``serve`` below)
that notes, with CPU time as well as wall time:

* every garbage collection (``gc.callbacks``): when, generation, wall and thread CPU time,
  objects collected;
* an event-loop monitor: a 1 ms timer whose every firing records the wall clock and the loop
  thread's CPU clock. A gap between firings is a loop iteration (or several); its wall length
  against its CPU time says whether the loop was busy (its own work) or waiting for a core
  (the machine): a gap of 6 ms wall with 1 ms of CPU was 5 ms of preemption.

Around each wrk run the driver also reads, from the kernel: the server thread's run delay (time
runnable but not running, ``/proc/PID/task/TID/schedstat``) and involuntary context switches,
wrk's own CPU and involuntary switches (``getrusage`` of children), the machine's steal and busy
time (``/proc/stat``) and the load average. ``--before-tree DIR`` adds, after each server, the same
server run from another checkout (``git archive COMMIT webhook bench certs harness | tar -x -C DIR``):
before/after rounds, alternating.

``python -m bench.tail_probe canary [SECONDS]`` times the same ~100 us of pure-Python arithmetic
over and over in thread CPU time: how much this machine alone stretches identical work.

``python -m bench.tail_probe serve OUT [--tree DIR] MODULE [ARGS...]`` is the recorder itself:
it runs ``python -m MODULE ARGS...`` with the probes installed; SIGUSR1 writes what was recorded
since the previous SIGUSR1 to OUT (JSON) and starts afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import runpy
import signal
import sys
import tempfile
import time
import uuid
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MONITOR_PERIOD_SECONDS = 0.001
LONG_MS = 2.0
CONNECTIONS = 16


# ----------------------------------------------------------------------------------------------
# The recorder, inside the server process.


class Recorder:
    def __init__(self, out: Path, monitor: bool) -> None:
        import contextvars

        self.arrival: contextvars.ContextVar[tuple[float, float]] = contextvars.ContextVar("arrival")
        self.out = out
        self.monitor = monitor
        self._reset()
        self._gc_started: dict[int, tuple[float, float]] = {}

    def _reset(self) -> None:
        self.gc_events: list[tuple[float, float, float, int, int]] = []
        self.tick_wall = array("d")
        self.tick_cpu = array("d")
        # Per request: its bytes handed to the HTTP parser (after TLS), its task's start, its answer
        # written; wall clock and the loop thread's CPU clock at arrival and at the end.
        self.request_arrival = array("d")
        self.request_started = array("d")
        self.request_done = array("d")
        self.request_cpu_arrival = array("d")
        self.request_cpu_done = array("d")

    def wrap_app(self, app: Any) -> Any:
        arrival = self.arrival
        clock, cpu = time.perf_counter, time.thread_time
        recorder = self

        async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = clock()
            came = arrival.get((started, cpu()))

            async def timed_send(message: dict[str, Any]) -> None:
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    recorder.request_arrival.append(came[0])
                    recorder.request_started.append(started)
                    recorder.request_done.append(clock())
                    recorder.request_cpu_arrival.append(came[1])
                    recorder.request_cpu_done.append(cpu())

            await app(scope, receive, timed_send)

        return timed

    def full_collection(self, signum: int, frame: Any) -> None:
        gc.collect()

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        import threading

        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = (time.perf_counter(), time.thread_time())
            return
        started = self._gc_started.pop(ident, None)
        if started is not None:
            wall0, cpu0 = started
            self.gc_events.append((wall0, time.perf_counter() - wall0, time.thread_time() - cpu0,
                                   info["generation"], info["collected"]))

    async def tick(self) -> None:
        clock, cpu = time.perf_counter, time.thread_time
        while True:
            await asyncio.sleep(MONITOR_PERIOD_SECONDS)
            self.tick_wall.append(clock())
            self.tick_cpu.append(cpu())

    def dump(self, signum: int, frame: Any) -> None:
        data = {
            "gc": self.gc_events,
            "request_arrival": self.request_arrival.tolist(),
            "request_started": self.request_started.tolist(),
            "request_done": self.request_done.tolist(),
            "request_cpu_arrival": self.request_cpu_arrival.tolist(),
            "request_cpu_done": self.request_cpu_done.tolist(),
            "tick_wall": self.tick_wall.tolist(),
            "tick_cpu": self.tick_cpu.tolist(),
            "gc_threshold": gc.get_threshold(),
            "gc_count": gc.get_count(),
            "gc_frozen": gc.get_freeze_count(),
            "gc_enabled": gc.isenabled(),
            "gc_stats": gc.get_stats(),
            "gc_tracked_by_generation": [len(gc.get_objects(g)) for g in range(3)],
            "gc_oldest_types": _type_counts(gc.get_objects(2), 12),
        }
        self._reset()
        temporary = self.out.with_suffix(".part")
        temporary.write_text(json.dumps(data))
        temporary.replace(self.out)


def _type_counts(objects: list[Any], top: int) -> list[tuple[str, int]]:
    from collections import Counter

    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects).most_common(top)


def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tail_probe serve")
    parser.add_argument("out", type=Path)
    parser.add_argument("--tree", type=Path, default=None, help="import the server's code from this checkout")
    parser.add_argument("--no-monitor", action="store_true")
    parser.add_argument("module")
    args, rest = parser.parse_known_args(argv)
    if args.tree is not None:
        sys.path.insert(0, str(args.tree.resolve()))
        for name in [n for n in sys.modules if n.partition(".")[0] in ("webhook", "bench", "certs", "harness")]:
            del sys.modules[name]  # the server's modules (the echo server's too) come from the other checkout
    recorder = Recorder(args.out, not args.no_monitor)
    gc.callbacks.append(recorder.on_gc)
    signal.signal(signal.SIGUSR1, recorder.dump)
    signal.signal(signal.SIGUSR2, recorder.full_collection)
    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    received = httptools_impl.HttpToolsProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        # The task uvicorn creates for a request copies this context, so it sees when its bytes came.
        recorder.arrival.set((time.perf_counter(), time.thread_time()))
        received(self, data)

    httptools_impl.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]
    loaded = uvicorn.Config.load

    def load(self: Any) -> None:
        loaded(self)
        self.loaded_app = recorder.wrap_app(self.loaded_app)

    uvicorn.Config.load = load  # type: ignore[method-assign]
    if recorder.monitor:
        original = uvicorn.Server.serve

        async def serve_with_monitor(self: Any, sockets: Any = None) -> None:
            task = asyncio.get_running_loop().create_task(recorder.tick())
            try:
                await original(self, sockets)
            finally:
                task.cancel()

        uvicorn.Server.serve = serve_with_monitor  # type: ignore[method-assign]
    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


# ----------------------------------------------------------------------------------------------
# The driver.


def _switches(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])


def _proc_stat() -> list[int]:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


@dataclass
class RunProbe:
    server: str
    round: int
    load_before: float
    load_after: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us_per_request: float
    server_run_delay_share: float  # of the run's wall time, the loop thread runnable but not on a core
    server_preemptions_per_second: float
    wrk_cpu_share: float  # of one core
    wrk_preemptions_per_second: float
    wrk_run_delay_share: float  # of the run's wall time, wrk's threads runnable but not on a core
    machine_busy_share: float  # of all cores
    machine_steal_share: float
    gc_by_generation: dict[str, dict[str, float]] = field(default_factory=dict)
    gc_max_wall_ms: float = 0.0
    loop_gaps: dict[str, float] = field(default_factory=dict)
    in_server: dict[str, float] = field(default_factory=dict)


def _gc_summary(events: list[list[float]], requests: int) -> tuple[dict[str, dict[str, float]], float]:
    by_generation: dict[str, dict[str, float]] = {}
    for _, wall, cpu, generation, collected in events:
        entry = by_generation.setdefault(str(int(generation)), {"count": 0, "wall_ms_total": 0.0, "cpu_ms_total": 0.0,
                                                                "wall_ms_max": 0.0, "collected": 0})
        entry["count"] += 1
        entry["wall_ms_total"] += wall * 1e3
        entry["cpu_ms_total"] += cpu * 1e3
        entry["wall_ms_max"] = max(entry["wall_ms_max"], wall * 1e3)
        entry["collected"] += collected
    for entry in by_generation.values():
        entry["per_1000_requests"] = round(1000 * entry["count"] / max(requests, 1), 3)
        for key in ("wall_ms_total", "cpu_ms_total", "wall_ms_max"):
            entry[key] = round(entry[key], 3)
    return by_generation, round(max((e[1] for e in events), default=0.0) * 1e3, 3)


def _gap_summary(walls: list[float], cpus: list[float], gc_events: list[list[float]]) -> dict[str, float]:
    """Gaps between the monitor's firings: each one or more loop iterations."""
    if len(walls) < 2:
        return {}
    gaps = [(walls[i] - walls[i - 1], cpus[i] - cpus[i - 1], walls[i - 1], walls[i]) for i in range(1, len(walls))]
    long_s = LONG_MS / 1e3
    long_gaps = [g for g in gaps if g[0] > long_s]
    gc_starts = sorted(e[0] for e in gc_events)

    def has_gc(start: float, end: float) -> bool:
        import bisect

        i = bisect.bisect_left(gc_starts, start)
        return i < len(gc_starts) and gc_starts[i] < end

    busy_long = [g for g in long_gaps if g[1] > long_s]  # the loop's own CPU alone exceeds 2 ms
    waited = [g for g in long_gaps if g[1] <= 0.5 * g[0]]  # at least half the gap off the core
    walls_sorted = sorted(g[0] * 1e3 for g in gaps)
    cpus_sorted = sorted(g[1] * 1e3 for g in gaps)
    span = walls[-1] - walls[0]
    return {
        "gaps": len(gaps),
        **_spread("wall_ms", walls_sorted),
        **_spread("cpu_ms", cpus_sorted),
        "long_per_second": round(len(long_gaps) / span, 2),
        "long_busy_per_second": round(len(busy_long) / span, 2),
        "long_mostly_waiting_per_second": round(len(waited) / span, 2),
        "long_with_gc_per_second": round(sum(has_gc(g[2], g[3]) for g in long_gaps) / span, 2),
        "share_of_wall_in_long_gaps": round(sum(g[0] for g in long_gaps) / span, 4),
    }


def _request_summary(recorded: dict[str, Any]) -> dict[str, float]:
    """Each request from its bytes reaching the HTTP parser to its answer written: wall and CPU."""
    arrival, done = recorded["request_arrival"], recorded["request_done"]
    if not arrival:
        return {}
    residence = sorted((d - a) * 1e3 for a, d in zip(arrival, done))
    cpu = sorted((d - a) * 1e3 for a, d in zip(recorded["request_cpu_arrival"], recorded["request_cpu_done"]))
    off_core = sorted(((d - a) - (cd - ca)) * 1e3 for a, d, ca, cd in
                      zip(arrival, done, recorded["request_cpu_arrival"], recorded["request_cpu_done"]))
    return {
        "requests": len(residence),
        **_spread("wall_ms", residence),
        **_spread("loop_cpu_ms", cpu, with_max=False),
        **_spread("off_core_ms", off_core, with_max=False),
    }


def _spread(name: str, ascending: list[float], with_max: bool = True) -> dict[str, float]:
    """`name`_p50, _p99 (and _max) of sorted values, in ms to the microsecond."""
    from bench.stats import percentile

    spread = {f"{name}_p50": round(percentile(ascending, 50), 3), f"{name}_p99": round(percentile(ascending, 99), 3)}
    if with_max:
        spread[f"{name}_max"] = round(ascending[-1], 3)
    return spread


def _signal_and_read(pid: int, out: Path, timeout: float = 10.0) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no probe dump from {pid}")
        time.sleep(0.02)
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def measure(name: str, round_: int, server: Any, out: Path, bodies: list[bytes], bodies_file: Path,
            seconds: int, warmup: int, keep: Path | None = None) -> tuple[RunProbe, dict[str, Any]]:
    from bench.admission_load import _check_and_prime, ServerCase
    from bench.wrk_runner import run_wrk, scheduler_seconds

    pid = server.process.pid
    _check_and_prime(server, bodies, ServerCase(name, name, (), is_webhook=not name.startswith("echo")))
    url = f"https://127.0.0.1:{server.port}"
    run_wrk(url, bodies_file, CONNECTIONS, warmup)
    _signal_and_read(pid, out)  # forget the warm-up
    load_before = os.getloadavg()[0]
    sched0, switches0, stat0 = scheduler_seconds(pid, pid), _switches(pid), _proc_stat()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    wrk = run_wrk(url, bodies_file, CONNECTIONS, seconds)  # also wrk's threads' run delay, read until it exits
    wall = time.perf_counter() - started
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sched1, switches1, stat1 = scheduler_seconds(pid, pid), _switches(pid), _proc_stat()
    recorded = _signal_and_read(pid, out)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"r{round_}-{name}.json").write_text(out.read_text())
    load_after = os.getloadavg()[0]
    delta = [b - a for a, b in zip(stat0, stat1)]
    total = sum(delta[:8]) or 1
    busy = total - delta[3] - delta[4]
    requests = max(wrk.requests, 1)
    gc_by_generation, gc_max = _gc_summary(recorded["gc"], requests)
    probe = RunProbe(
        server=name, round=round_, load_before=round(load_before, 2), load_after=round(load_after, 2),
        requests_per_second=wrk.requests_per_second, p50_ms=wrk.p50_ms, p90_ms=wrk.p90_ms, p99_ms=wrk.p99_ms,
        max_ms=wrk.max_ms,
        server_cpu_us_per_request=round((sched1[0] - sched0[0]) / requests * 1e6, 1),
        server_run_delay_share=round((sched1[1] - sched0[1]) / wall, 4),
        server_preemptions_per_second=round((switches1[1] - switches0[1]) / wall, 1),
        wrk_cpu_share=round((children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime) / wall, 3),
        wrk_preemptions_per_second=round((children1.ru_nivcsw - children0.ru_nivcsw) / wall, 1),
        wrk_run_delay_share=round(wrk.wrk_run_delay_seconds / wall, 4),
        machine_busy_share=round(busy / total, 3),
        machine_steal_share=round(delta[7] / total, 4),
        gc_by_generation=gc_by_generation, gc_max_wall_ms=gc_max,
        loop_gaps=_gap_summary(recorded["tick_wall"], recorded["tick_cpu"], recorded["gc"]),
        in_server=_request_summary(recorded),
    )
    extra = {k: recorded[k] for k in ("gc_threshold", "gc_count", "gc_frozen", "gc_enabled")}
    return probe, extra


def canary(seconds: float) -> dict[str, float]:
    """How steady this machine's CPU is: the same ~100 us of pure-Python arithmetic, timed over and
    over in thread CPU time. No system calls, no allocation to speak of: a chunk that takes many
    times the median was slowed by the machine (a busy sibling hyperthread or host, interrupts
    charged to whatever runs), not by what it ran."""

    def work() -> int:
        total = 0
        for i in range(2000):
            total += i * i
        return total

    clock, cpu = time.perf_counter, time.thread_time
    chunks = array("d")
    end = clock() + seconds
    while clock() < end:
        started = cpu()
        work()
        chunks.append(cpu() - started)
    ordered = sorted(chunks)
    median = ordered[len(ordered) // 2]
    return {
        "chunks": len(ordered),
        "cpu_us_p50": round(median * 1e6, 1),
        "cpu_us_p99": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e6, 1),
        "cpu_us_max": round(ordered[-1] * 1e6, 1),
        "share_over_5x_median": round(sum(c > 5 * median for c in ordered) / len(ordered), 5),
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return
    if argv[:1] == ["canary"]:
        print(json.dumps(canary(float(argv[1]) if len(argv) > 1 else 8.0)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model artifact (python -m bench.model_artifact)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--servers", default="echo,webhook", help="echo, webhook (comma-separated)")
    parser.add_argument("--before-tree", type=Path, default=None,
                        help="also run each server from this checkout (NAME@before), alternating with this one")
    parser.add_argument("--no-monitor", action="store_true", help="no event-loop monitor (its own cost)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="write each run's raw recording here")
    args = parser.parse_args(argv)

    from bench import servers
    from bench.admission_body import review_bodies
    from bench.wrk_runner import ensure_wrk
    from harness.webhook_process import create_certs

    ensure_wrk()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if args.before_tree is not None:
        names = [n for name in names for n in (name, f"{name}@before")]
    env = dict(item.split("=", 1) for item in args.server_env)
    webhook_args = ("--model", str(args.model.resolve()), "--kube-access", "off")
    runs: list[RunProbe] = []
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="energetiscope-tail-") as tmp:
        workdir = Path(tmp)
        certs = create_certs(workdir / "certs")
        bodies = review_bodies(512)
        bodies_file = workdir / "bodies.ndjson"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        for round_ in range(1, args.rounds + 1):
            for name in names:
                out = workdir / f"{name}-{uuid.uuid4().hex[:6]}.json"
                recorder: tuple[str, ...] = ("bench.tail_probe", "serve", str(out))
                if args.no_monitor:
                    recorder += ("--no-monitor",)
                kind, _, before = name.partition("@")
                if before:
                    recorder += ("--tree", str(args.before_tree.resolve()))
                if kind == "echo":
                    module, extra = recorder + servers.ECHO, ()
                elif kind == "webhook":
                    module, extra = recorder + servers.WEBHOOK, webhook_args
                else:
                    raise SystemExit(f"unknown server {name}")
                with servers.server_process(module, certs, workdir / f"{name}.log", *extra, env=env) as server:
                    probe, extra_info = measure(name, round_, server, out, bodies, bodies_file, args.seconds,
                                                args.warmup, args.keep)
                runs.append(probe)
                settings[name] = extra_info
                _print_run(probe)
    summary = {"runs": [asdict(r) for r in runs], "server_gc_settings": settings, "args": vars(args) | {
        "model": args.model.name, "before_tree": str(args.before_tree) if args.before_tree else None,
        "json": None}}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))


def _print_run(p: RunProbe) -> None:
    gcs = " ".join(f"g{g}:{e['count']:.0f}x/{e['cpu_ms_total']:.1f}ms(max {e['wall_ms_max']:.2f})"
                   for g, e in sorted(p.gc_by_generation.items()))
    gaps = p.loop_gaps
    inside = p.in_server
    print(f"r{p.round} {p.server:15s} load {p.load_before:4.1f} {p.requests_per_second:7.0f} req/s "
          f"p50 {p.p50_ms:5.2f} p99 {p.p99_ms:6.2f} ({p.p99_ms / p.p50_ms:3.1f}x) max {p.max_ms:6.1f} | "
          f"cpu {p.server_cpu_us_per_request:5.0f}us/req delay {100 * p.server_run_delay_share:4.1f}% "
          f"preempt {p.server_preemptions_per_second:5.0f}/s | wrk cpu {p.wrk_cpu_share:.2f} "
          f"preempt {p.wrk_preemptions_per_second:4.0f}/s delay {100 * p.wrk_run_delay_share:4.1f}% | busy {p.machine_busy_share:.2f} "
          f"steal {p.machine_steal_share:.3f} | gc {gcs or '-'} | gaps p50 {gaps.get('wall_ms_p50', 0):.2f} "
          f"p99 {gaps.get('wall_ms_p99', 0):.2f}ms cpu p99 {gaps.get('cpu_ms_p99', 0):.2f} "
          f"long/s {gaps.get('long_per_second', 0):.1f} busy {gaps.get('long_busy_per_second', 0):.1f} "
          f"waiting {gaps.get('long_mostly_waiting_per_second', 0):.1f} gc {gaps.get('long_with_gc_per_second', 0):.1f}"
          f" | in server p50 {inside.get('wall_ms_p50', 0):.2f} p99 {inside.get('wall_ms_p99', 0):.2f} "
          f"cpu p50 {inside.get('loop_cpu_ms_p50', 0):.2f} p99 {inside.get('loop_cpu_ms_p99', 0):.2f} "
          f"off-core p99 {inside.get('off_core_ms_p99', 0):.2f}",
          flush=True)


if __name__ == "__main__":
    main()
