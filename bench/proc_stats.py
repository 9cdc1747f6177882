"""Time, CPU and peak memory of processes, from Linux's own accounting (no extra dependency).

`run_measured` runs a command to completion and reads its peak RSS from `wait4`'s rusage (the
kernel's high-water mark of the child, so nothing between two polls is missed). For a server
that keeps running, `peak_rss_mib` reads VmHWM from /proc/PID/status and `cpu_seconds` its
user + system time from /proc/PID/stat; `resident_sample` reads what a soak watches for leaks:
resident memory now (VmRSS), open file descriptors (/proc/PID/fd) and threads.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KIB_PER_MIB = 1024.0
_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MeasuredRun:
    command: list[str]
    exit_code: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    output: str  # stdout and stderr, interleaved


def run_measured(command: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, address_space_limit_bytes: int | None = None) -> MeasuredRun:
    """Run to completion; with `address_space_limit_bytes` the child gets RLIMIT_AS, so that
    outgrowing it is a MemoryError in the child, not the kernel's OOM killer picking a victim."""

    def limit() -> None:
        if address_space_limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space_limit_bytes, address_space_limit_bytes))

    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=limit)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return MeasuredRun(
        command=command,
        exit_code=process.returncode,
        wall_seconds=time.perf_counter() - started,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / KIB_PER_MIB,  # ru_maxrss is KiB on Linux
        output=log_path.read_text(errors="replace"),
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / KIB_PER_MIB
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    # Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_SECOND


@dataclass(frozen=True)
class ResidentSample:
    rss_mib: float  # VmRSS: resident now, not the high-water mark
    open_fds: int  # entries of /proc/PID/fd: sockets, files, pipes, epoll and event fds
    threads: int


def resident_sample(pid: int) -> ResidentSample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ResidentSample(
        rss_mib=int(status["VmRSS"].split()[0]) / KIB_PER_MIB,
        open_fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
    )
