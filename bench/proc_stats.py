"""Time, CPU and peak memory of processes, from Linux's own accounting (no extra dependency).

`run_measured` runs a command to completion and reads its peak RSS from `wait4`'s rusage (the
kernel's high-water mark of the child, so nothing between two polls is missed). Linux carries the
high-water mark of the process that forks into the child: fork copies the memory map with its
mark, and exec records the old map's mark in the process's maximum (`exec_mmap`), so a child
started straight from a benchmark holding GBs (the simulated cluster) reported at least the
benchmark's own RSS however little it used. The command is therefore started by a small launcher
(`python -S`, ~10 MiB) that waits for it and passes its rusage back. For a server
that keeps running, `peak_rss_mib` reads VmHWM from /proc/PID/status and `cpu_seconds` its
user + system time from /proc/PID/stat; `resident_sample` reads what a soak watches for leaks:
resident memory now (VmRSS), open file descriptors (/proc/PID/fd) and threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


# Started from the measuring process; spawns the command, waits for it and writes its status,
# peak RSS (KiB) and CPU seconds to the file descriptor it is given; RLIMIT_AS set first, so the
# command inherits it.
_LAUNCHER = """
import os, resource, sys
limit, report = int(sys.argv[1]), int(sys.argv[2])
os.set_inheritable(report, False)
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.posix_spawnp(sys.argv[3], sys.argv[3:], os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{status} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}".encode())
os.close(report)
"""


def run_measured(command: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, address_space_limit_bytes: int | None = None) -> MeasuredRun:
    """Run to completion; with `address_space_limit_bytes` the child gets RLIMIT_AS, so that
    outgrowing it is a MemoryError in the child, not the kernel's OOM killer picking a victim.
    The peak RSS is the command's own (see the module docstring), above the launcher's ~10 MiB."""
    started = time.perf_counter()
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "wb") as log:
            launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(address_space_limit_bytes or 0), str(write_end),
                        *command]
            process = subprocess.Popen(launcher, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                       pass_fds=(write_end,))
            os.close(write_end)
            write_end = -1
            with os.fdopen(read_end, "rb") as report:
                read_end = -1
                answer = report.read().decode()
            launcher_exit = process.wait()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    if not answer:  # the launcher itself failed (the command not found, ...): its own words are in the log
        return MeasuredRun(command=command, exit_code=launcher_exit or 1, wall_seconds=time.perf_counter() - started,
                           cpu_seconds=0.0, peak_rss_mib=0.0, output=log_path.read_text(errors="replace"))
    status, max_rss_kib, cpu = answer.split()
    return MeasuredRun(
        command=command,
        exit_code=os.waitstatus_to_exitcode(int(status)),
        wall_seconds=time.perf_counter() - started,
        cpu_seconds=float(cpu),
        peak_rss_mib=int(max_rss_kib) / KIB_PER_MIB,  # ru_maxrss is KiB on Linux
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


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (a server's prediction process, say)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone since the listing
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def family_cpu_seconds(pid: int, children: list[int]) -> float:
    """`cpu_seconds` of `pid` and of those of `children` still alive."""
    total = cpu_seconds(pid)
    for child in children:
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


@dataclass(frozen=True)
class ResidentSample:
    rss_mib: float  # VmRSS: resident now, not the high-water mark
    open_fds: int  # entries of /proc/PID/fd: sockets, files, pipes, epoll and event fds
    threads: int


def children_sample(pid: int) -> tuple[int, float]:
    """How many live child processes `pid` has, and their VmRSS summed (MiB): a webhook's
    prediction process and multiprocessing's resource tracker."""
    count, rss_mib = 0, 0.0
    for child in child_pids(pid):
        try:
            rss_mib += resident_sample(child).rss_mib
            count += 1
        except (OSError, KeyError):  # gone since the listing, or a zombie without VmRSS
            pass
    return count, rss_mib


def resident_sample(pid: int) -> ResidentSample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ResidentSample(
        rss_mib=int(status["VmRSS"].split()[0]) / KIB_PER_MIB,
        open_fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
    )
