"""Run the benchmarks: `python -m bench [--only NAME ...] [--quick | --full]`.

    admission_load   the webhook against an echo server over TLS (wrk, fixed rate), profile
    predictor_scale  prediction latency and memory as the training set grows, per KNN algorithm
    trainer_scale    labels, dataset and fit on a simulated cluster in a real Prometheus
    accuracy         grouped-CV error and coverage on that cluster, against baselines and the truth
    mutate_latency   sequential /mutate round trips on one connection (embedded prior)
    diff_scale       `energetiscope diff` over 500 workloads, end to end, against a 5 s budget
    soak             (only with --only soak: 11 minutes) the webhook at 100 reviews/s for 10 minutes
                     while its model is replaced and its certificate rotated; RSS, fds, threads

Each runs in its own process and writes bench/results/NAME.json (the --full sizes write
NAME_full.json). trainer_scale keeps its datasets in a temporary directory for accuracy, which
otherwise simulates its own cluster. The default fits `make bench`'s 20 minutes on 2 cores;
--quick is a smoke test (its numbers are not for the README), --full adds the issue's large
sizes (1M training rows, 2,000 workloads x 7 days) and takes about an hour.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import load_average
from bench.results import INVOKED_BY_VARIABLE

BENCHMARKS = ("admission_load", "predictor_scale", "trainer_scale", "accuracy", "mutate_latency", "diff_scale")
ON_REQUEST = ("soak",)  # run only when named with --only: it would take over half of make bench's 20 minutes
REPO_ROOT = Path(__file__).resolve().parent.parent
BUSY_LOAD_AVERAGE = 1.5


def command_for(name: str, quick: bool, full: bool, keep_dir: Path | None) -> list[str]:
    command = [sys.executable, "-m", f"bench.{name}"]
    if name == "mutate_latency":
        results = REPO_ROOT / "bench" / "results" / ("quick" if quick else "")
        return command + ["--calls", "200" if quick else "1000", "--json", str(results / "mutate_latency.json")]
    if quick:
        command.append("--quick")
    elif full and name in ("predictor_scale", "trainer_scale"):
        command.append("--full")
    if name == "trainer_scale" and keep_dir is not None:
        command += ["--keep", str(keep_dir)]
    if name == "accuracy" and keep_dir is not None and any(keep_dir.iterdir()):
        command = [sys.executable, "-m", "bench.accuracy", "--from", str(keep_dir)] + (["--quick"] if quick else [])
        if full:
            command += ["--json", str(REPO_ROOT / "bench" / "results" / "accuracy_full.json")]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=BENCHMARKS + ON_REQUEST, default=None,
                        help="run only this benchmark (repeatable)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test")
    mode.add_argument("--full", action="store_true", help="also the issue's large sizes (about an hour)")
    args = parser.parse_args()
    selected = [name for name in BENCHMARKS + ON_REQUEST
                if (args.only is None and name in BENCHMARKS) or (args.only is not None and name in args.only)]
    one_minute_load = load_average()[0]
    if one_minute_load > BUSY_LOAD_AVERAGE:
        print(f"note: load average {one_minute_load} > {BUSY_LOAD_AVERAGE}: the machine is busy; absolute numbers "
              "will be low (ratios measured side by side still hold)", flush=True)
    timings: list[tuple[str, float, int]] = []
    invoked_by = " ".join(["python -m bench", *sys.argv[1:]])
    environment = {**os.environ, INVOKED_BY_VARIABLE: invoked_by,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-keep-") as keep:
        keep_dir = Path(keep) if "trainer_scale" in selected and "accuracy" in selected else None
        for name in selected:
            command = command_for(name, args.quick, args.full, keep_dir)
            print(f"\n=== {name}: {' '.join(['python', *command[1:]])}", flush=True)
            started = time.perf_counter()
            completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, check=False)
            timings.append((name, time.perf_counter() - started, completed.returncode))
    print("\n=== summary")
    for name, seconds, code in timings:
        print(f"{name:16s} {seconds:7.1f} s  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    print(f"{'total':16s} {sum(t for _, t, _ in timings):7.1f} s; load average now {load_average()}")
    if any(code != 0 for _, _, code in timings):
        sys.exit(1)


if __name__ == "__main__":
    main()
