"""`bench.proc_stats.run_measured` reports a command's own peak memory, not the measuring
process's: Linux carries the forking process's high-water mark into a child's `ru_maxrss`, so a
trainer step started from a benchmark holding a simulated cluster in memory reported at least the
benchmark's RSS (labels and runs at 20,000 workloads both showed 1,117 MiB)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.proc_stats import run_measured

MIB = 2**20


@pytest.fixture(scope="module")
def resident_ballast() -> bytearray:
    """400 MiB resident in the measuring process while the children run."""
    ballast = bytearray(400 * MIB)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    return ballast


def test_a_small_command_from_a_large_process_reports_its_own_peak(tmp_path: Path, resident_ballast: bytearray) -> None:
    run = run_measured([sys.executable, "-S", "-c", "pass"], tmp_path / "small.log")
    assert run.exit_code == 0
    assert run.peak_rss_mib < 100, run.peak_rss_mib  # ~10 MiB, far below the measuring process's 400+


def test_a_command_peak_is_seen(tmp_path: Path, resident_ballast: bytearray) -> None:
    code = "b = bytearray(250 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('done')"
    run = run_measured([sys.executable, "-S", "-c", code], tmp_path / "large.log")
    assert run.exit_code == 0 and run.output.strip() == "done"
    assert 250 <= run.peak_rss_mib < 350, run.peak_rss_mib
    assert run.cpu_seconds > 0


def test_exit_codes_output_and_the_address_space_limit(tmp_path: Path) -> None:
    run = run_measured([sys.executable, "-S", "-c", "import sys; print('out'); sys.stderr.write('err\\n'); sys.exit(3)"],
                       tmp_path / "exit.log")
    assert run.exit_code == 3 and "out" in run.output and "err" in run.output
    limited = run_measured([sys.executable, "-S", "-c", "b = bytearray(600 * 2**20)"], tmp_path / "limit.log",
                           address_space_limit_bytes=300 * MIB)
    assert limited.exit_code == 1 and "MemoryError" in limited.output
    killed = run_measured([sys.executable, "-S", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                          tmp_path / "killed.log")
    assert killed.exit_code == -9
    missing = run_measured(["no-such-command-energetiscope"], tmp_path / "missing.log")
    assert missing.exit_code != 0 and "no-such-command-energetiscope" in missing.output
