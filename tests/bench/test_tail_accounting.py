"""What the latency-tail measurements count: a process's CPU and run delay from the kernel, and an
event loop's long gaps told apart as busy (its own work) or waiting (off the core: the machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.tail_probe import _gap_summary, _request_summary
from bench.wrk_runner import scheduler_seconds

_SPIN_THEN_WAIT = """
import sys, time
while time.process_time() < 0.2:
    pass
print("spun", flush=True)
sys.stdin.read()
"""


def test_scheduler_seconds_counts_a_threads_cpu_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", _SPIN_THEN_WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "spun"
        cpu, delay = scheduler_seconds(child.pid)
        main_cpu, main_delay = scheduler_seconds(child.pid, child.pid)
    finally:
        child.communicate("")
    assert 0.2 <= main_cpu <= cpu
    assert 0.0 <= main_delay <= delay


def test_long_loop_gaps_are_told_apart_by_cpu_time() -> None:
    # A 1 ms monitor: 1 ms gaps, then one 6 ms gap with 5.5 ms of CPU (busy) and one of 6 ms
    # with 0.5 ms of CPU (waiting for a core), a collection starting inside the busy one.
    walls, cpus, now, cpu = [], [], 0.0, 0.0
    for step_wall, step_cpu in [(0.001, 0.001)] * 50 + [(0.006, 0.0055)] + [(0.001, 0.001)] * 10 + [(0.006, 0.0005)]:
        now += step_wall
        cpu += step_cpu
        walls.append(now)
        cpus.append(cpu)
    busy_start = walls[49]
    summary = _gap_summary(walls, cpus, [[busy_start + 0.001, 0.002, 0.002, 2, 0]])
    span = walls[-1] - walls[0]
    assert summary["long_per_second"] == round(2 / span, 2)
    assert summary["long_busy_per_second"] == round(1 / span, 2)
    assert summary["long_mostly_waiting_per_second"] == round(1 / span, 2)
    assert summary["long_with_gc_per_second"] == round(1 / span, 2)
    assert summary["wall_ms_max"] == 6.0


def test_request_summary_splits_wall_time_into_cpu_and_off_core() -> None:
    recorded = {
        "request_arrival": [0.0, 1.0], "request_done": [0.002, 1.010],
        "request_cpu_arrival": [0.0, 0.5], "request_cpu_done": [0.002, 0.501],
    }
    assert _request_summary({key: [] for key in recorded}) == {}
    summary = _request_summary(recorded)
    assert summary["requests"] == 2
    assert summary["wall_ms_max"] == 10.0
    assert summary["loop_cpu_ms_p99"] == 2.0
    assert summary["off_core_ms_p99"] == 9.0  # 10 ms in the server, 1 ms of it on the core


def test_canary_times_identical_chunks_in_cpu_time() -> None:
    from bench.tail_probe import canary

    result = canary(0.05)
    assert result["chunks"] > 0
    assert 0 < result["cpu_us_p50"] <= result["cpu_us_p99"] <= result["cpu_us_max"]
    assert 0.0 <= result["share_over_5x_median"] < 1.0


def test_wrk_runner_counts_the_worker_threads_cpu(tmp_path: Path) -> None:
    """wrk's own CPU comes from its threads' scheduler statistics; its worker thread, which does
    the work, ends before the process does and must still be counted (its main thread sleeps)."""
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from bench.wrk_runner import run_wrk

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")

    class Answer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    bodies = tmp_path / "bodies.ndjson"
    bodies.write_text('{"request": {"uid": "00000000-0000-4000-8000-000000000000"}}\n')
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_wrk(f"http://127.0.0.1:{server.server_address[1]}", bodies, 2, 1)
    finally:
        server.shutdown()
    assert result.requests > 100 and not result.errors["status"]
    assert result.wrk_cpu_seconds > 0.01
    assert result.wrk_run_delay_seconds >= 0
