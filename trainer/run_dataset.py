"""The run model's dataset: Job runs (`trainer.runs`) joined to the specs `train collect` wrote,
one row per finished run, with the targets `run_seconds` and `energy_joules_per_run`.

A run joins with the rules of `trainer.dataset` (`SpecIndex`, `resolve`): a CronJob's run to the
CronJob's spec (kube-state-metrics' `kube_job_owner`, or a collected Job marked with its
CronJob controller), a standalone Job's run to the Job's spec. Several different specs of one
workload are `ambiguous`, not joined to a guess. The `group` column is the joined spec's hash:
the runs of one Job template (all runs of one CronJob spec) are one cross-validation group, so a
model is never scored on a run of a template it trained on.

What does not become a row is counted by reason with runs, workloads and examples:
`not-finished` (running at the end of the range, or vanished without an outcome: its wall time
is not known), `no-spec`, `owner-without-spec`, `ambiguous`. A joined run whose energy is not
complete (pods Kepler does not have, see `trainer.runs`) keeps its row for `run_seconds` with
`energy_joules_per_run` NaN, never 0 J, and is counted under `energy-incomplete`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainer.collect import read_requests
from trainer.dataset import EXAMPLES_PER_REASON, SpecIndex, Tally, request_json, resolve, write_summary
from trainer.runs import read_runs
from webhook.files import write_atomically
from webhook.model.schema import InferenceRequest

RUN_DATASET_COLUMNS: tuple[str, ...] = (
    "namespace",
    "workload_kind",
    "workload_name",
    "job_name",
    "outcome",
    "start_time",
    "join_rule",
    "spec_hash",
    "group",
    "request_json",
    "run_seconds",
    "energy_joules_per_run",
    "pod_seconds",
    "pods",
    "pods_failed",
    "energy_complete",
)
FINISHED_OUTCOMES = ("succeeded", "failed")


@dataclass
class RunJoinSummary:
    runs: int
    joined: Tally
    by_rule: dict[str, Tally]
    unjoined: dict[str, Tally]
    energy_incomplete: Tally
    groups: int
    specs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lines = [f"runs: {self.runs}; joined: {self.joined.rows} runs of {self.joined.workloads} workloads in "
                 f"{self.groups} groups ({', '.join(f'{rule}: {t.rows}' for rule, t in sorted(self.by_rule.items()))})"]
        for reason, tally in sorted(self.unjoined.items()):
            lines.append(f"not joined, {reason}: {tally.rows} runs, {tally.workloads} workloads, "
                         f"e.g. {'; '.join(tally.examples[:3])}")
        if self.energy_incomplete.rows:
            lines.append(f"energy-incomplete (joined, energy target NaN): {self.energy_incomplete.rows} runs, e.g. "
                         f"{'; '.join(self.energy_incomplete.examples[:3])}")
        lines.append(f"specs: {self.specs} workloads collected")
        return "\n".join(lines)


def _count(tallies: dict[str, Tally], reason: str, workload: tuple[str, str, str], example: str,
           seen: dict[str, set[tuple[str, str, str]]], pods: int) -> None:
    """One run under `reason`: its rows count runs, its pods the runs' pods."""
    tally = tallies.setdefault(reason, Tally())
    tally.rows += 1
    tally.pods += pods
    if workload not in seen.setdefault(reason, set()):
        seen[reason].add(workload)
        tally.workloads += 1
    if len(tally.examples) < EXAMPLES_PER_REASON:
        tally.examples.append(example)


def build_run_dataset(runs: pd.DataFrame, requests: Iterable[InferenceRequest]) -> tuple[pd.DataFrame, RunJoinSummary]:
    """The run dataset and its join summary (see the module docstring)."""
    index = SpecIndex(requests)
    records: list[dict[str, Any]] = []
    unjoined: dict[str, Tally] = {}
    by_rule: dict[str, Tally] = {}
    joined: dict[str, Tally] = {}
    incomplete: dict[str, Tally] = {}
    seen: dict[str, set[tuple[str, str, str]]] = {}
    for run in runs.itertuples(index=False):
        workload = (str(run.namespace), str(run.workload_kind), str(run.workload_name))
        example = f"{run.namespace}/{run.job_name} ({run.workload_kind}/{run.workload_name}, {run.outcome})"
        if run.outcome not in FINISHED_OUTCOMES:
            _count(unjoined, "not-finished", workload, example, seen, int(run.pods))
            continue
        resolution = resolve(index, workload, "", None, False)
        if resolution.request is None:
            _count(unjoined, resolution.reason, workload, f"{example}: {resolution.detail}", seen, int(run.pods))
            continue
        assert resolution.workload is not None
        _count(joined, "joined", resolution.workload, example, seen, int(run.pods))
        _count(by_rule, resolution.rule, resolution.workload, example, seen, int(run.pods))
        complete = bool(run.energy_complete)
        if not complete:
            _count(incomplete, "energy-incomplete", resolution.workload, f"{example}: {run.missing_energy_pods}", seen, int(run.pods))
        records.append({
            "namespace": run.namespace,
            "workload_kind": resolution.workload[1],
            "workload_name": resolution.workload[2],
            "job_name": run.job_name,
            "outcome": run.outcome,
            "start_time": run.start_time,
            "join_rule": resolution.rule,
            "spec_hash": resolution.spec_hash,
            "group": resolution.spec_hash,
            "request_json": request_json(resolution.request),
            "run_seconds": float(run.run_seconds),
            "energy_joules_per_run": float(run.energy_joules) if complete else float("nan"),
            "pod_seconds": float(run.pod_seconds),
            "pods": int(run.pods),
            "pods_failed": int(run.pods_failed),
            "energy_complete": complete,
        })
    frame = pd.DataFrame.from_records(records, columns=list(RUN_DATASET_COLUMNS))
    frame["request_json"] = frame["request_json"].astype("category")
    frame["start_time"] = pd.to_datetime(frame["start_time"], utc=True)
    for column in ("run_seconds", "energy_joules_per_run", "pod_seconds"):
        frame[column] = frame[column].astype("float64")
    frame["energy_complete"] = frame["energy_complete"].astype("bool")
    summary = RunJoinSummary(
        runs=len(runs),
        joined=joined.get("joined", Tally()),
        by_rule=by_rule,
        unjoined=unjoined,
        energy_incomplete=incomplete.get("energy-incomplete", Tally()),
        groups=int(frame["group"].nunique()),
        specs=len(index),
    )
    return frame, summary


def write_run_dataset(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Parquet, atomically, request_json dictionary-encoded (one copy per distinct spec)."""
    return write_atomically(path, lambda temp: frame[list(RUN_DATASET_COLUMNS)].to_parquet(temp, index=False))


def run_run_dataset(runs_path: str | os.PathLike[str], requests_paths: Sequence[str | os.PathLike[str]],
                    out: str | os.PathLike[str]) -> RunJoinSummary:
    """`energetiscope train dataset --runs`: read runs and NDJSON specs, join, write the dataset
    and its join summary (`<out>.summary.json`)."""
    runs = read_runs(runs_path)
    requests = [r for path in requests_paths for r in read_requests(path)]
    frame, summary = build_run_dataset(runs, requests)
    write_run_dataset(frame, out)
    write_summary(summary.to_dict(), out)
    return summary

