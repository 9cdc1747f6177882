"""`energetiscope diff` over 500 workloads: end to end, as CI runs it, against a 5 s budget.

A pull request against a large repository diffs every manifest on both sides, so the command's
cost grows with the repository, not the change. This writes 500 synthetic workloads
(`bench.workloads`, the catalogue the other benchmarks draw from) with a Service beside each
into 25 files, and a HEAD copy where one in ten scales up, one in twenty is removed and 25 are
new; then runs the installed command in a fresh process per call (interpreter start-up, imports,
YAML, predictions and rendering all counted) and records the wall time of each format, and
times the same diff in process, which leaves out start-up (importing scikit-learn, through the
model service, is most of it).

    python -m bench.diff_scale [--workloads 500] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.results import RunRecord
from bench.workloads import draw_workloads
from webhook.model.kinds import KINDS_BY_NAME

BUDGET_SECONDS = 5.0
FILES = 25
FORMATS = ("json", "markdown", "github", "table")


def _service(manifest: dict[str, Any]) -> dict[str, Any]:
    metadata = manifest["metadata"]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
            "spec": {"selector": metadata.get("labels", {}), "ports": [{"port": 80}]}}


def _scaled(manifest: dict[str, Any]) -> dict[str, Any]:
    """The workload with its pod count doubled (a DaemonSet or Pod has none: it gets a second container)."""
    kind = KINDS_BY_NAME[manifest["kind"]]
    copy = json.loads(json.dumps(manifest))
    if not kind.count_fields:
        spec: Any = copy
        for key in kind.pod_spec_path:
            spec = spec[key]
        spec["containers"].append({**spec["containers"][0], "name": "extra"})
        return copy
    holder: Any = copy
    for key in kind.count_path:
        holder = holder[key]
    for field in kind.count_fields:  # parallelism and completions both: completions cap the pods at once
        if field == kind.count_fields[0] or holder.get(field) is not None:
            holder[field] = 2 * int(holder.get(field) or 1)
    return copy


def write_sides(root: Path, workloads: int, seed: int) -> tuple[Path, Path, dict[str, int]]:
    draws = draw_workloads(workloads + 25, seed)
    base_objects = [d.manifest for d in draws[:workloads]]
    head_objects: list[dict[str, Any]] = []
    counts = {"changed": 0, "removed": 0, "added": 25}
    for index, manifest in enumerate(base_objects):
        if index % 20 == 7:
            counts["removed"] += 1
            continue
        if index % 10 == 3:
            counts["changed"] += 1
            manifest = _scaled(manifest)
        head_objects.append(manifest)
    head_objects += [d.manifest for d in draws[workloads:]]
    for side, objects in (("base", base_objects), ("head", head_objects)):
        for number in range(FILES):
            part = objects[number::FILES]
            documents = [doc for manifest in part for doc in (_service(manifest), manifest)]
            path = root / side / f"team-{number:02d}" / "manifests.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return root / "base", root / "head", counts


def _in_process_seconds(base: Path, head: Path, repeats: int) -> float:
    """Read, predict, match and render JSON, in this process: the diff's own work."""
    from webhook.diff import diff_manifests, read_side, render
    from webhook.model.carbon import CarbonSettings, grid_intensity
    from webhook.model.prior import PriorPredictor
    from webhook.model.service import PredictionService

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        service = PredictionService(PriorPredictor())  # a fresh cache, as each command starts with
        carbon = CarbonSettings(default=grid_intensity("us-east-1"))
        sides = [read_side(str(path), side, service, carbon) for path, side in ((base, "before"), (head, "after"))]
        render(diff_manifests(sides[0], sides[1], carbon, service.status().model_id), "json", [])
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--quick", action="store_true", help="one repeat: a smoke test")
    args = parser.parse_args()
    record = RunRecord("diff_scale", quick=args.quick)
    repeats = 1 if args.quick else args.repeats
    command = [str(Path(sys.executable).parent / "energetiscope"), "diff"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="energetiscope-diff-") as tmp:
        base, head, expected = write_sides(Path(tmp), args.workloads, args.seed)
        for output in FORMATS:
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                completed = subprocess.run([*command, str(base), str(head), "--region", "us-east-1", "-o", output],
                                           capture_output=True, text=True, check=False)
                seconds.append(time.perf_counter() - started)
                if completed.returncode != 0:
                    raise SystemExit(f"diff -o {output} failed ({completed.returncode}): {completed.stderr}")
            if output == "json":
                totals = json.loads(completed.stdout)["totals"]
                found = {key: totals[key] for key in expected}
                if found != expected:
                    raise SystemExit(f"diff counted {found}, expected {expected}")
            row = {"output": output, "workloads": args.workloads, "median_seconds": round(statistics.median(seconds), 3),
                   "max_seconds": round(max(seconds), 3), "repeats": repeats,
                   "within_budget": max(seconds) < BUDGET_SECONDS}
            rows.append(row)
            print(f"diff -o {output:8s} {args.workloads} workloads: median {row['median_seconds']:.2f} s, "
                  f"max {row['max_seconds']:.2f} s (budget {BUDGET_SECONDS:g} s)", flush=True)
        in_process = _in_process_seconds(base, head, repeats)
        print(f"in process (no start-up): median {in_process:.2f} s", flush=True)
    path = record.write({"budget_seconds": BUDGET_SECONDS, "files_per_side": FILES, "expected": expected, "rows": rows,
                         "in_process_median_seconds": round(in_process, 3)})
    print(f"wrote {path}")
    if not all(row["within_budget"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
