"""A model's evaluation as one self-contained HTML page, written by `train fit` and `train evaluate`.

The page is what a platform team attaches to a change request before switching budgets to
enforce: the model card (warnings, data, model), the comparison of every method on every
evaluation set there is (the card's grouped cross-validation, the run model's, and an
evaluation on a dataset), the predicted-against-measured and residual plots (log axes), interval
coverage, the workloads with the largest errors, and the dataset's join summary (what did not
join, and why). It is one file: the plots are PNGs embedded as data URIs, the style is inline,
there is no script and no external asset, so it opens anywhere, offline. Every text from the
data (workload names, join examples, warnings) is HTML-escaped. Each number in a table carries
its exact value in ``data-value``, so a reader (or a test) can check it against the JSON.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.files import write_text_atomically

LARGEST_ERRORS = 15

# (key in MethodMetrics.to_dict(), column title, decimals, scale, suffix)
METRIC_COLUMNS: tuple[tuple[str, str, int, float, str], ...] = (
    ("mae_watts", "MAE W", 4, 1.0, ""),
    ("median_ape_percent", "median APE", 1, 1.0, "%"),
    ("coverage_p10_p90", "p10-p90 coverage", 0, 100.0, "%"),
    ("mean_abs_log_error", "mean |log error|", 3, 1.0, ""),
    ("namespace_total_error_percent", "namespace total error", 1, 1.0, "%"),
    ("prior_fallback_share", "prior fallback", 0, 100.0, "%"),
    ("targets", "targets", 0, 1.0, ""),
    ("pod_windows", "pod-windows", 0, 1.0, ""),
    ("pods", "pods", 0, 1.0, ""),
    ("workloads", "workloads", 0, 1.0, ""),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.served td { font-weight: bold; }
.warning { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; margin: 0.4em 0; }
.note { color: #555; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
code { font-size: 0.95em; }
"""


@dataclass(frozen=True)
class EvaluationSet:
    """One table of methods scored on the same targets: ``metrics`` are ``MethodMetrics.to_dict()``s."""

    key: str
    title: str
    description: str
    metrics: Sequence[Mapping[str, Any]]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_number(value: Any, decimals: int, scale: float = 1.0, suffix: str = "") -> str:
    """How the report writes a number; ``-`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value) * scale:,.{decimals}f}{suffix}"


def _number_cell(value: Any, decimals: int, scale: float = 1.0, suffix: str = "") -> str:
    exact = "" if value is None else f' data-value="{_e(repr(value))}"'
    return f'<td class="number"{exact}>{_e(format_number(value, decimals, scale, suffix))}</td>'


def metrics_table(evaluation: EvaluationSet) -> str:
    head = "".join(f"<th>{_e(title)}</th>" for _, title, *_ in METRIC_COLUMNS)
    rows = []
    for index, metric in enumerate(evaluation.metrics):
        cells = "".join(_number_cell(metric.get(key), decimals, scale, suffix)
                        for key, _, decimals, scale, suffix in METRIC_COLUMNS)
        css = ' class="served"' if index == 0 else ""
        rows.append(f'<tr{css}><td class="method">{_e(metric["method"])}</td>{cells}</tr>')
    return (f'<table class="metrics" data-set="{_e(evaluation.key)}"><thead><tr><th>method</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"


def _pairs(rows: Sequence[tuple[str, Any]]) -> str:
    return ("<table class=\"pairs\"><tbody>"
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</tbody></table>")


def card_section(card: Mapping[str, Any]) -> str:
    """The model card: warnings, data, model, libraries."""
    parts = ["<h2>Model card</h2>"]
    artifact = card.get("artifact", {})
    parts.append(f"<p>Created {_e(card.get('created_at', '-'))}. Artifact <code>{_e(artifact.get('file') or '-')}</code>, "
                 f"sha256 <code>{_e(artifact.get('sha256') or '-')}</code>, feature version "
                 f"{_e(artifact.get('feature_version', '-'))}.</p>")
    parts += [f'<p class="warning">{_e(w)}</p>' for w in card.get("warnings", [])]
    data = card.get("data") or {}
    if data:
        parts.append("<h3>Data</h3>")
        parts.append(_pairs([
            ("windows", f"{data.get('first_window_start')} to {data.get('last_window_start')}"),
            ("target", data.get("target")),
            ("targets", data.get("targets")), ("pod-windows", data.get("pod_windows")), ("pods", data.get("pods")),
            ("workloads", data.get("workloads")),
            ("left out", f"{data.get('excluded_pods')} pods with fewer than {data.get('min_active_windows')} windows "
                         "with energy"),
            ("join rules", ", ".join(f"{k}: {v} pods" for k, v in (data.get("join_rules") or {}).items()) or "-"),
            ("training data sha256", data.get("training_data_sha256")),
        ]))
    model = card.get("model") or {}
    if model:
        features = model.get("features") or {}
        interval = model.get("interval") or {}
        trust = model.get("trust_radius")
        parts.append("<h3>Model</h3>")
        parts.append(_pairs([
            ("description", model.get("description")),
            ("parameters", model.get("params")),
            ("calibrated prior", model.get("calibrated_prior")),
            ("features", f"physics {', '.join(features.get('physics', []))}; {', '.join(features.get('numeric', []))}; "
                         f"one-hot {', '.join(features.get('categorical', []))}; "
                         f"{features.get('text_dimensions')} hashed token dimensions"),
            ("trust radius", "none: every query gets the model" if trust is None
             else f"{trust:.4g}: farther queries get the calibrated prior"),
            ("interval", interval.get("method")),
            ("interval log offsets p10, p90", interval.get("log_offsets_p10_p90") or "-"),
        ]))
    cv = card.get("cross_validation") or {}
    if "skipped" in cv:
        parts.append(f"<p>Grouped cross-validation not run: {_e(cv['skipped'])}</p>")
    elif cv.get("grid"):
        parts.append("<h3>Candidates (out-of-fold mean |log error|)</h3>")
        rows = "".join(f"<tr><td>{_e(g['description'])}</td>{_number_cell(g['mean_abs_log_error'], 4)}</tr>"
                       for g in cv["grid"])
        parts.append(f'<table class="grid"><thead><tr><th>candidate</th><th>error</th></tr></thead>'
                     f"<tbody>{rows}</tbody></table>")
    libraries = card.get("libraries") or {}
    if libraries:
        parts.append(f"<p class=\"note\">Libraries: {_e(', '.join(f'{k} {v}' for k, v in libraries.items()))}</p>")
    return "\n".join(parts)


def card_evaluation_sets(card: Mapping[str, Any]) -> list[EvaluationSet]:
    """The evaluation sets a model card holds: grouped CV of the pod model, and of the run model."""
    sets = []
    cv = card.get("cross_validation") or {}
    if cv.get("metrics"):
        sets.append(EvaluationSet("cross_validation", "Grouped cross-validation, out of fold",
                                  f"{cv.get('scheme')}; served: {cv.get('chosen_description')}, chosen by "
                                  f"{cv.get('selection')}.", cv["metrics"]))
    runs = card.get("runs") or {}
    if runs.get("run_seconds"):
        sets.append(EvaluationSet("runs_run_seconds", "Run model: wall time of a Job run, out of fold",
                                  f"{runs.get('scheme')}; {runs.get('description')}", runs["run_seconds"]))
    if runs.get("energy_joules_per_run"):
        sets.append(EvaluationSet("runs_energy_joules_per_run", "Run model: energy per Job run, out of fold",
                                  f"{runs.get('scheme')}; pod model W x run time against measured joules",
                                  runs["energy_joules_per_run"]))
    return sets


def _coverage_breakdown(targets: Sequence[Mapping[str, Any]]) -> str:
    with_interval = [t for t in targets if t.get("p10_watts") is not None and t.get("p90_watts") is not None]
    if not with_interval:
        return "<p>The served predictions have no interval.</p>"
    n = len(with_interval)
    below = sum(t["power_watts"] < t["p10_watts"] for t in with_interval)
    above = sum(t["power_watts"] > t["p90_watts"] for t in with_interval)
    inside = n - below - above
    rows = "".join(f"<tr><td>{_e(label)}</td>{_number_cell(count, 0)}{_number_cell(count / n, 1, 100.0, '%')}"
                   f"<td>{_e(goal)}</td></tr>"
                   for label, count, goal in (("below p10", below, "10%"), ("inside p10-p90", inside, "80%"),
                                              ("above p90", above, "10%")))
    return (f'<table class="coverage"><thead><tr><th>measured power</th><th>targets</th><th>share</th><th>goal</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


def _log_error(target: Mapping[str, Any]) -> float:
    predicted, measured = float(target["predicted_watts"]), float(target["power_watts"])
    if predicted <= 0 or measured <= 0:
        return math.inf
    return abs(math.log(predicted / measured))


def largest_errors_table(targets: Sequence[Mapping[str, Any]], limit: int = LARGEST_ERRORS) -> str:
    worst = sorted(targets, key=_log_error, reverse=True)[:limit]
    rows = []
    for t in worst:
        workload = f"{t.get('namespace')}/{t.get('workload_kind')}/{t.get('workload_name')}"
        rows.append(f"<tr><td>{_e(workload)}</td><td>{_e(t.get('pod') or '-')}</td>"
                    f"{_number_cell(t['power_watts'], 3)}{_number_cell(t['predicted_watts'], 3)}"
                    f"{_number_cell(t.get('p10_watts'), 3)}{_number_cell(t.get('p90_watts'), 3)}"
                    f"{_number_cell(_log_error(t), 3)}<td>{_e(t.get('basis') or '-')}</td></tr>")
    return ('<table class="largest-errors"><thead><tr><th>workload</th><th>pod</th><th>measured W</th>'
            "<th>predicted W</th><th>p10 W</th><th>p90 W</th><th>|log error|</th><th>basis</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _tally_row(name: str, tally: Mapping[str, Any]) -> str:
    examples = "; ".join(str(e) for e in tally.get("examples", [])) or "-"
    return (f"<tr><td>{_e(name)}</td>{_number_cell(tally.get('rows'), 0)}{_number_cell(tally.get('pods'), 0)}"
            f"{_number_cell(tally.get('workloads'), 0)}<td>{_e(examples)}</td></tr>")


def join_section(summary: Mapping[str, Any] | None, source: str) -> str:
    """The dataset's join summary (`<dataset>.summary.json`): joined by rule, not joined by reason."""
    parts = ["<h2>Join summary</h2>"]
    if summary is None:
        parts.append(f"<p>No join summary: {_e(source)} was not found beside the dataset.</p>")
        return "\n".join(parts)
    parts.append(f"<p class=\"note\">From <code>{_e(source)}</code>.</p>")
    join = summary.get("join", summary)  # a measurement table's summary nests the join
    if "measurements_file" in summary:
        parts.append(_pairs([
            ("measurements", f"{summary.get('rows')} rows from {summary.get('measurements_file')} "
                             f"({summary.get('file_format')}), power from {summary.get('power_from')}"),
            ("ignored columns", ", ".join(summary.get("ignored_columns") or []) or "none"),
            ("specs", f"{summary.get('specs')} from {summary.get('manifest_files')} manifest files and "
                      f"{summary.get('requests_files')} NDJSON files; {summary.get('skipped_documents')} documents "
                      "skipped (not workloads)"),
        ]))
    parts.append(f"<p>{_e(join.get('label_rows'))} rows, {_e(join.get('label_pods'))} pods, "
                 f"{_e(join.get('label_workloads'))} workloads measured; {_e(join.get('specs'))} workload specs "
                 f"collected, {_e(join.get('specs_joined'))} joined.</p>")
    head = "<thead><tr><th>{}</th><th>rows</th><th>pods</th><th>workloads</th><th>examples</th></tr></thead>"
    joined = [_tally_row("all joined", join.get("joined") or {})]
    joined += [_tally_row(rule, tally) for rule, tally in sorted((join.get("by_rule") or {}).items())]
    parts.append(f'<h3>Joined</h3><table class="joined">{head.format("rule")}<tbody>{"".join(joined)}</tbody></table>')
    unjoined = join.get("unjoined") or {}
    parts.append("<h3>Not joined</h3>")
    if unjoined:
        rows = "".join(_tally_row(reason, tally) for reason, tally in sorted(unjoined.items()))
        parts.append(f'<table class="unjoined">{head.format("reason")}<tbody>{rows}</tbody></table>')
    else:
        parts.append("<p>Every measured row joined a spec.</p>")
    unused = join.get("specs_unused_examples") or []
    if unused:
        parts.append(f"<p>Specs without measurements, e.g.: {_e('; '.join(unused))}</p>")
    return "\n".join(parts)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"><figcaption>{_e(alt)}</figcaption></figure>'


def render_report(*, title: str, note: str, card: Mapping[str, Any], sets: Sequence[EvaluationSet],
                  targets: Sequence[Mapping[str, Any]], targets_title: str, plots: Mapping[str, Path],
                  join_summary: Mapping[str, Any] | None, join_source: str) -> str:
    """The page. ``targets`` are the served model's per-target predictions the plots, coverage and
    largest errors are about (``evaluation.json``'s ``targets``, or out of fold for `fit`)."""
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No script, no external asset: even a data URI may only be an image.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(note)}</p>',
        "<h2>Comparison of methods</h2>",
    ]
    for evaluation in sets:
        parts += [f'<h3 id="{_e(evaluation.key)}">{_e(evaluation.title)}</h3>', f"<p>{_e(evaluation.description)}</p>",
                  metrics_table(evaluation)]
    if not sets:
        parts.append("<p>No evaluation set: cross-validation was not run.</p>")
    parts.append(f"<h2>Predicted against measured: {_e(targets_title)}</h2>")
    if plots:
        parts += [_image(path, label) for label, path in plots.items()]
    else:
        parts.append("<p>No plots: there are no predictions to show.</p>")
    if targets:
        parts += ["<h2>Interval coverage</h2>",
                  f"<p>Where the measured power of the {len(targets)} targets falls against the served p10-p90 "
                  "interval.</p>", _coverage_breakdown(targets),
                  f"<h2>Largest errors</h2><p>The {min(len(targets), LARGEST_ERRORS)} targets with the largest "
                  "|log(predicted / measured)|.</p>", largest_errors_table(targets)]
    parts.append(card_section(card))
    parts.append(join_section(join_summary, join_source))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike[str], **parts: Any) -> Path:
    """`render_report(**parts)` written atomically to ``path``."""
    return write_text_atomically(path, render_report(**parts))
