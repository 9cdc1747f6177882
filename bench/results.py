"""Result files and printed tables shared by the benchmarks.

Every benchmark writes `bench/results/NAME.json` holding its rows, the command that produced
it, the machine (`bench.machine`), the load average before and after, and the git commit: a
result can always be traced to what ran, where, and how busy the machine was.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.machine import describe_machine, load_average

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
REPO_ROOT = Path(__file__).resolve().parent.parent
INVOKED_BY_VARIABLE = "ENERGETISCOPE_BENCH_INVOKED_BY"  # set by `python -m bench` for its children


def _portable(argument: str) -> str:
    """Paths inside the repository become relative; other absolute paths (temporary
    directories) keep only their last part, so results hold no machine-specific paths."""
    if not argument.startswith("/"):
        return argument
    path = Path(argument)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return f"<tmp>/{path.name}"


def command_line() -> str:
    """How this process was started, relative to the repository (no machine paths)."""
    argv = list(sys.argv)
    module = Path(argv[0]).resolve()
    try:
        relative = module.relative_to(REPO_ROOT).with_suffix("")
        head = ["python", "-m", ".".join(relative.parts).removesuffix(".__main__")]
    except ValueError:
        head = ["python", Path(argv[0]).name]
    return shlex.join(head + [_portable(a) for a in argv[1:]])


def git_commit() -> str | None:
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                               check=False)
    return completed.stdout.strip() or None


class RunRecord:
    """Started at the beginning of a benchmark; `write` adds the machine and the load at the end.
    Quick runs (smoke tests) go to results/quick/, which git ignores, never over real results."""

    def __init__(self, name: str, quick: bool = False) -> None:
        self.name = name
        self.quick = quick
        self.started = datetime.now(timezone.utc)
        self.load_before = load_average()
        self.command = command_line()

    def write(self, payload: dict[str, Any], path: Path | None = None) -> Path:
        path = path or (QUICK_RESULTS_DIR if self.quick else RESULTS_DIR) / f"{self.name}.json"
        record = {
            "benchmark": self.name,
            "command": self.command,
            "invoked_by": os.environ.get(INVOKED_BY_VARIABLE),
            "started_utc": self.started.isoformat(timespec="seconds"),
            "wall_seconds": round((datetime.now(timezone.utc) - self.started).total_seconds(), 1),
            "git_commit": git_commit(),
            "load_average_before": self.load_before,
            "load_average_after": load_average(),
            "machine": describe_machine(),
            **payload,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
