"""Closed-loop load with `wrk` (Debian's package): N connections, each sending its next request
as soon as the previous answer arrives.

wrk varies the body per request through `bench/wrk_mutate.lua` (fresh uid, random spec from the
bodies file). Its latency percentiles are those of a closed loop, i.e. they leave out the time a
request would have waited while its connection was busy (coordinated omission): the fixed-rate
generator (`bench.fixed_rate`) measures that. `ensure_wrk` installs wrk with apt-get when it is
missing and we are root, and otherwise says how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_mutate.lua"
RESULT_MARKER = "WRK_RESULT "


class WrkMissing(RuntimeError):
    """wrk is not installed and cannot be installed here."""


def ensure_wrk() -> str:
    """Path of wrk, installing Debian's package first when it is missing (root only)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise WrkMissing("wrk is not installed: run `apt-get install -y wrk` as root")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    completed = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "wrk"], capture_output=True,
                               text=True, env=environment, check=False)
    if completed.returncode != 0:
        # A fresh container may have no package lists yet.
        subprocess.run(["apt-get", "update"], capture_output=True, env=environment, check=False)
        completed = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "wrk"], capture_output=True,
                                   text=True, env=environment, check=False)
    found = shutil.which("wrk")
    if completed.returncode != 0 or not found:
        raise WrkMissing(f"apt-get install wrk failed: {completed.stderr[-500:]}")
    return found


def wrk_version() -> str:
    path = shutil.which("wrk")
    if not path:
        return "not installed"
    completed = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return (completed.stdout or completed.stderr).splitlines()[0].split(" Copyright")[0].strip()


@dataclass(frozen=True)
class WrkResult:
    connections: int
    threads: int
    duration_seconds: float
    requests: int
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]
    command: str
    # wrk's own threads, from the kernel's scheduler statistics: CPU time, and time runnable but
    # waiting for a core (a load generator that waits makes latency the server did not).
    wrk_cpu_seconds: float = 0.0
    wrk_run_delay_seconds: float = 0.0


def scheduler_seconds(pid: int, thread: int | None = None) -> tuple[float, float]:
    """(CPU seconds, run delay seconds) of one thread of a process, or of all its threads
    (/proc/PID/task/TID/schedstat: time on a core, time runnable and waiting for one)."""
    tasks = [Path(f"/proc/{pid}/task/{thread}")] if thread is not None else list(Path(f"/proc/{pid}/task").iterdir())
    cpu = delay = 0.0
    for task in tasks:
        try:
            on_core, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        cpu += int(on_core) / 1e9
        delay += int(waiting) / 1e9
    return cpu, delay


def run_wrk(url: str, bodies_file: Path, connections: int, duration_seconds: int, threads: int = 1,
            timeout_seconds: int = 10) -> WrkResult:
    wrk = ensure_wrk()
    args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_seconds}s", f"--timeout={timeout_seconds}s",
            "-s", str(LUA_SCRIPT), url, "--", str(bodies_file)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + duration_seconds + 60
    # Each thread's last reading (cumulative): wrk's worker thread ends before its process does.
    by_thread: dict[str, tuple[float, float]] = {}
    while process.poll() is None and time.monotonic() < deadline:
        try:
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                cpu, delay = scheduler_seconds(process.pid, int(task.name))  # (0, 0) once it is gone
                seen = by_thread.get(task.name, (0.0, 0.0))
                by_thread[task.name] = (max(cpu, seen[0]), max(delay, seen[1]))
        except OSError:
            pass
        time.sleep(0.05)
    scheduled = (sum(cpu for cpu, _ in by_thread.values()), sum(delay for _, delay in by_thread.values()))
    try:
        stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (exit {process.returncode}): {stderr[-1000:]}{stdout[-1000:]}")
    raw = json.loads(lines[-1][len(RESULT_MARKER):])
    seconds = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    shown = " ".join(a if a not in (str(LUA_SCRIPT), str(bodies_file)) else Path(a).name for a in args[1:])
    return WrkResult(
        connections=connections, threads=threads, duration_seconds=round(seconds, 3), requests=raw["requests"],
        requests_per_second=round(raw["requests"] / seconds, 1), p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000, p99_ms=latency["p99"] / 1000, max_ms=latency["max"] / 1000,
        mean_ms=round(latency["mean"] / 1000, 3), errors=raw["errors"], command=f"wrk {shown}",
        wrk_cpu_seconds=round(scheduled[0], 3), wrk_run_delay_seconds=round(scheduled[1], 3),
    )
