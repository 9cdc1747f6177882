"""The model card: what a model was trained on, how, and how well it did, as JSON and Markdown."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from webhook.files import write_text_atomically
from trainer.metrics import MethodMetrics, metrics_table

LIBRARIES = ("numpy", "scikit-learn", "pandas", "pyarrow", "joblib", "pydantic")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def card_paths(artifact: str | os.PathLike[str]) -> tuple[Path, Path]:
    """`model.joblib` -> `model.card.json`, `model.card.md` beside it."""
    path = Path(artifact)
    stem = path.name.removesuffix(path.suffix) if path.suffix else path.name
    return path.with_name(f"{stem}.card.json"), path.with_name(f"{stem}.card.md")


def card_metrics(card: Mapping[str, Any], section: str) -> list[MethodMetrics]:
    return [MethodMetrics(**m) for m in card.get(section, {}).get("metrics", [])]


def render_markdown(card: Mapping[str, Any]) -> str:
    data, model = card["data"], card["model"]
    cv = card["cross_validation"]
    lines = [
        f"# Model card: {card['model_id']}",
        "",
        f"Created {card['created_at']}. Artifact `{card['artifact']['file']}`, sha256 `{card['artifact']['sha256']}`, "
        f"feature version {card['artifact']['feature_version']}.",
        "",
        *(f"> warning: {w}" for w in card.get("warnings", [])),
        "",
        "## Data",
        "",
        f"- pod-windows from {data['first_window_start']} to {data['last_window_start']} "
        f"(training data sha256 `{data['training_data_sha256']}`)",
        f"- targets: {data['target']}",
        f"- {data['targets']} targets from {data['pod_windows']} pod-windows, {data['pods']} pods, "
        f"{data['workloads']} workloads; {data['excluded_pods']} pods left out with fewer than "
        f"{data['min_active_windows']} windows with energy",
        f"- join rules: {', '.join(f'{k}: {v} pods' for k, v in data['join_rules'].items()) or '-'}",
        "",
        "## Model",
        "",
        f"- {model['description']}",
        f"- parameters: {model['params']}",
        f"- calibrated prior: {model['calibrated_prior']}",
        f"- features: physics {', '.join(model['features']['physics'])}; {', '.join(model['features']['numeric'])}; "
        f"one-hot {', '.join(model['features']['categorical'])}; {model['features']['text_dimensions']} hashed token "
        "dimensions",
        "- trust radius " + (f"{model['trust_radius']:.4g}: farther queries get the calibrated prior"
                             if model["trust_radius"] is not None else "none: every query gets the model"),
        f"- interval: {model['interval']['method']}",
    ]
    if model["interval"].get("log_offsets_p10_p90"):
        low, high = model["interval"]["log_offsets_p10_p90"]
        lines.append(f"  - log offsets p10 {low:.4f}, p90 {high:.4f}")
    lines += ["", "## Grouped cross-validation", ""]
    if "skipped" in cv:
        lines.append(f"Not run: {cv['skipped']}")
    else:
        lines += [
            f"{cv['scheme']}; served: {cv['chosen_description']}, chosen by {cv['selection']}.",
            "",
            metrics_table(card_metrics(card, "cross_validation")),
            "",
            f"Grid (mean absolute error of log power, out of fold{_grid_rows(cv)}):",
            "",
            "| candidate | error |",
            "| --- | --- |",
            *(f"| {g['description']} | {g['mean_abs_log_error']:.4f} |" for g in cv["grid"]),
        ]
    lines += ["", "## Libraries", "", ", ".join(f"{k} {v}" for k, v in card["libraries"].items()), ""]
    return "\n".join(lines)


def _grid_rows(cv: Mapping[str, Any]) -> str:
    """Where the grid was scored, when not on every group (`trainer.crossval.Selection`)."""
    rows = cv.get("selection_rows") or {}
    if not rows.get("sampled"):
        return ""
    return (f", on a seeded sample of {rows['groups']:,} of the {rows['of_groups']:,} groups: {rows['targets']:,} of "
            f"{rows['of_targets']:,} targets; the table above is on all of them")


def write_card(card: Mapping[str, Any], artifact: str | os.PathLike[str]) -> tuple[Path, Path]:
    json_path, markdown_path = card_paths(artifact)
    write_text_atomically(json_path, json.dumps(card, indent=2, default=str) + "\n")
    write_text_atomically(markdown_path, render_markdown(card))
    return json_path, markdown_path
