"""Grouped-CV comparison on the project's seed measurements (shared/data/seed-kepler).

    python -m trainer.seed_report [--seed-dir DIR] [--weight-grid] [--json FILE]

Reads the seed's Kepler labels (`kepler_labels_6h.parquet`, `kepler_labels_1h.parquet`: one
row per pod per 60 s step, `energy_step_j` the energy of the step ending at `ts`) and its 22
specs (`inference_requests.ndjson`), joins them with the dataset step's rules, and prints the
comparison table twice: with the strict join (a pod's rows join to its owner's spec only) and
with the pod-spec stand-in (`--pod-spec-fallback` of `train dataset`). The seed's specs and
labels overlap on only a few workloads: every number printed says how many it rests on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from trainer.collect import read_requests
from trainer.crossval import DEFAULT_K_GRID, NotEnoughWorkloads, describe_params
from trainer.dataset import build_dataset
from trainer.fit import FitSettings, compare
from trainer.labels import LABEL_COLUMNS
from trainer.metrics import metrics_table
from trainer.targets import build_targets

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED_DIR = REPO_ROOT.parent / "shared" / "data" / "seed-kepler"
SEED_LABEL_FILES = ("kepler_labels_6h.parquet", "kepler_labels_1h.parquet")
SEED_REQUESTS_FILE = "inference_requests.ndjson"
SEED_STEP_SECONDS = 60


def seed_labels_frame(path: Path) -> pd.DataFrame:
    """The seed's label file as a `trainer.labels` table (windows end at `ts`; the first step of
    each pod, with no earlier sample, has no energy and is left out)."""
    seed = pd.read_parquet(path)
    seed = seed[seed["energy_step_j"].notna()]
    start_ms = np.round((seed["ts"].to_numpy(dtype=np.float64) - SEED_STEP_SECONDS) * 1000).astype("int64")
    energy = seed["energy_step_j"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame({
        "window_start": pd.to_datetime(start_ms, unit="ms", utc=True).astype("datetime64[ns, UTC]"),
        "window_seconds": np.full(len(seed), SEED_STEP_SECONDS, dtype="int64"),
        "namespace": seed["namespace"].astype(str).to_numpy(),
        "pod": seed["pod"].astype(str).to_numpy(),
        "workload_kind": seed["workload_kind"].astype(str).to_numpy(),
        "workload_name": seed["workload_name"].astype(str).to_numpy(),
        "energy_joules": energy,
        "power_watts": energy / SEED_STEP_SECONDS,
        "kepler_line": "kepler-0.7",
    })
    return frame[list(LABEL_COLUMNS)]


def seed_report(seed_dir: Path, settings: FitSettings, pod_spec_fallback: bool) -> tuple[str, dict[str, Any]]:
    labels = pd.concat([seed_labels_frame(seed_dir / name) for name in SEED_LABEL_FILES], ignore_index=True)
    requests = read_requests(seed_dir / SEED_REQUESTS_FILE)
    dataset, summary = build_dataset(labels, requests, pod_spec_fallback=pod_spec_fallback)
    table = build_targets(dataset, settings.target_unit, settings.min_active_windows)
    title = "pod-spec stand-in allowed" if pod_spec_fallback else "strict join (owner's spec only)"
    lines = [f"## Seed, {title}", "", summary.describe(), "",
             f"targets: {len(table.requests)} ({table.describe_target()}); {table.pods} pods, "
             f"{table.workloads} workloads ({table.excluded_pods} pods with too few windows with energy left out):"]
    lines += [f"  {r.namespace}/{r.workload_kind}/{r.workload_name}: {r.pods} pods, mean {r.mean_power_watts:.4f} W"
              for r in table.per_workload().itertuples()]
    report: dict[str, Any] = {"join": summary.to_dict(), "targets": len(table.requests), "workloads": table.workloads}
    try:
        comparison = compare(table, settings)
    except NotEnoughWorkloads as exc:
        lines += ["", f"No cross-validation: {exc}"]
        return "\n".join(lines), report
    lines += ["", f"{comparison.scheme}; served {describe_params(comparison.chosen)}", "", metrics_table(comparison.metrics)]
    report["cross_validation"] = comparison.to_dict()
    return "\n".join(lines), report


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--seed-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_SEED_DIR,
              help="Directory with the seed's label parquet files and inference_requests.ndjson.")
@click.option("--weight-grid/--no-weight-grid", default=False, help="Also choose the encoder's block weights.")
@click.option("--k", "k_grid", default=",".join(map(str, DEFAULT_K_GRID)), help="k values to try, comma-separated.")
@click.option("--min-active-windows", type=click.IntRange(1), default=FitSettings().min_active_windows)
@click.option("--text-embedding", type=click.Choice(["auto", "tfidf", "sbert"]), default="auto",
              help="The prototype baseline's embedding (auto: SBERT when installed).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full comparison as JSON.")
def main(seed_dir: Path, weight_grid: bool, k_grid: str, min_active_windows: int, text_embedding: str,
         json_path: Path | None) -> None:
    """Print the grouped-CV comparison of the KNN with its baselines on the seed data."""
    settings = FitSettings(k_grid=tuple(int(k) for k in k_grid.split(",")), weight_grid=weight_grid,
                           min_active_windows=min_active_windows, text_embedding=text_embedding)
    reports = {}
    for fallback in (False, True):
        text, reports["pod_spec_fallback" if fallback else "strict"] = seed_report(seed_dir, settings, fallback)
        click.echo(text + "\n")
    if json_path is not None:
        json_path.write_text(json.dumps(reports, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
