"""``energetiscope diff BASE HEAD``: what a change to manifests does to predicted power, energy and carbon.

A pull request changes manifests; a reviewer wants its cost in W, kWh and kg CO2e before it
merges, as Infracost shows cloud cost. Each side is read by the same path as ``predict``
(``webhook.model.manifests`` for the YAML, ``PredictionService`` for the numbers), workloads are
matched by kind, namespace and name, and the result renders as a table, the JSON contract
(README, "energetiscope diff"), a Markdown pull-request comment or GitHub workflow annotations.
Gates on the total increase turn it into a CI check: exit 1 with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook.files import STDIN_NAME
from webhook.model.carbon import HOURS_PER_MONTH, CarbonSettings, GridIntensity
from webhook.model.manifests import ManifestError, Located, manifest_texts, read_manifests
from webhook.model.service import PredictionService, WorkloadPrediction
from webhook.textable import align_columns

WATTS_PER_KILOWATT = 1000.0
GRAMS_PER_KILOGRAM = 1000.0
# Relative tolerance under which two predictions are the same number: floating-point noise
# from summing the same containers in another order must not make a workload "changed".
SAME_WATTS_RELATIVE = 1e-9

Change = Literal["added", "removed", "changed", "unchanged"]
Side = Literal["before", "after"]


class DiffInputError(ValueError):
    """A side cannot be read at all (no such path, invalid YAML); the message names file, line and column."""


@dataclass(frozen=True, order=True)
class WorkloadKey:
    kind: str
    namespace: str
    name: str

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Found:
    """One workload as one side has it: where it is, its prediction, the grid its pods draw from."""

    file: str
    line: int | None
    prediction: WorkloadPrediction
    grid: GridIntensity | None
    carbon: CarbonSettings

    @property
    def pod_watts(self) -> float:
        return self.prediction.pod.power_watts

    @property
    def workload_watts(self) -> float:
        return self.prediction.workload_power_watts

    @property
    def kwh_per_month(self) -> float:
        return self.workload_watts * HOURS_PER_MONTH / WATTS_PER_KILOWATT

    @property
    def kg_co2e_per_month(self) -> float | None:
        if self.grid is None:
            return None
        return self.carbon.grams(self.kwh_per_month, self.grid) / GRAMS_PER_KILOGRAM


@dataclass
class Manifests:
    """Everything one side holds: its workloads by key, and the workloads it could not read."""

    workloads: dict[WorkloadKey, Found] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    unreadable: set[WorkloadKey] = field(default_factory=set)
    skipped_documents: int = 0


def _namespace(obj: Mapping[str, Any] | None) -> str:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return namespace if isinstance(namespace, str) and namespace else "default"


def _texts(path: str) -> Iterable[tuple[str, str]]:
    try:
        yield from manifest_texts(path)
    except ManifestError as exc:
        raise DiffInputError(str(exc)) from None


def read_side(path: str, side: Side, service: PredictionService, carbon: CarbonSettings) -> Manifests:
    """Read and predict every workload under ``path`` (a file, a directory, or ``-``)."""
    result = Manifests()
    for file, text in _texts(path):
        try:
            report = read_manifests(text, max_documents=None)  # files of any size, like the trainer's
        except ManifestError as exc:
            raise DiffInputError(f"{file}: {exc}") from None
        result.skipped_documents += len(report.skipped)
        for (where, request), obj in zip(report.requests, report.objects):
            key = WorkloadKey(request.workload_kind, request.namespace, request.workload_name)
            found = Found(file, where.line, service.predict(request), carbon.for_object(obj), carbon)
            if key in result.workloads:
                first = result.workloads[key]
                result.errors.append(_error(side, file, where, key, "metadata.name",
                                            f"duplicate: also at {first.file}:{first.line}"))
                continue
            result.workloads[key] = found
        for problem, (where, obj) in zip(report.errors, report.error_sources):
            key = WorkloadKey(str(problem.get("kind") or ""), _namespace(obj), str(problem.get("name") or ""))
            result.unreadable.add(key)
            result.errors.append(_error(side, file, where, key, problem["field"], problem["problem"]))
    return result


def _error(side: Side, file: str, where: Located, key: WorkloadKey, field_: str, problem: str) -> dict[str, Any]:
    return {"side": side, "file": file, "line": where.line, "document": where.document, "item": where.item,
            "kind": key.kind, "namespace": key.namespace, "name": key.name, "field": field_, "problem": problem}


@dataclass(frozen=True)
class WorkloadDiff:
    key: WorkloadKey
    before: Found | None
    after: Found | None

    @property
    def change(self) -> Change:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        same = (self.before.prediction.pods == self.after.prediction.pods
                and math.isclose(self.before.pod_watts, self.after.pod_watts, rel_tol=SAME_WATTS_RELATIVE)
                and self.before.kg_co2e_per_month == self.after.kg_co2e_per_month)
        return "unchanged" if same else "changed"

    @property
    def scope(self) -> str:
        return (self.after or self.before).prediction.scope  # type: ignore[union-attr]

    def as_dict(self) -> dict[str, Any]:
        """One workload of the JSON contract (README, "energetiscope diff")."""
        row: dict[str, Any] = {"kind": self.key.kind, "namespace": self.key.namespace, "name": self.key.name,
                               "change": self.change, "scope": self.scope}
        for side, found in (("before", self.before), ("after", self.after)):
            row[f"{side}_file"] = None if found is None else found.file
            row[f"{side}_line"] = None if found is None else found.line
            row[f"{side}_pods"] = None if found is None else found.prediction.pods
            row[f"{side}_pod_watts"] = None if found is None else found.pod_watts
        for name, value in _measures(self.before, self.after).items():
            row[name] = value
        for side, found in (("before", self.before), ("after", self.after)):
            grid = None if found is None else found.grid
            row[f"{side}_region"] = None if grid is None else grid.region
            row[f"{side}_grid_grams_per_kwh"] = None if grid is None else grid.grams_per_kwh
        return row


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _percent(before: float | None, after: float | None) -> float | None:
    """The change as a percentage of ``before``; None when there is no finite one (from 0 to more)."""
    if before is None or after is None:
        return None
    if before == 0:
        return 0.0 if after == 0 else None
    return (after - before) / before * 100.0


def _measures(before: Found | None, after: Found | None) -> dict[str, Any]:
    """Workload W, kWh and kg CO2e per month, before, after and the change; null where a side is absent."""
    values: dict[str, Any] = {}
    for measure in ("workload_watts", "kwh_per_month", "kg_co2e_per_month"):
        old = None if before is None else getattr(before, measure)
        new = None if after is None else getattr(after, measure)
        values[f"before_{measure}"], values[f"after_{measure}"] = old, new
        values[f"delta_{measure}"] = _delta(0.0 if before is None and new is not None else old,
                                            0.0 if after is None and old is not None else new)
    values["delta_percent"] = _percent(values["before_workload_watts"], values["after_workload_watts"])
    return values


@dataclass
class Diff:
    workloads: list[WorkloadDiff]
    errors: list[dict[str, Any]]
    carbon: CarbonSettings
    model_id: str

    def count(self, change: Change) -> int:
        return sum(1 for w in self.workloads if w.change == change)

    def _side_total(self, side: Side, measure: str) -> float | None:
        found = [getattr(w, side) for w in self.workloads if getattr(w, side) is not None]
        values = [getattr(f, measure) for f in found]
        # A carbon total over part of the workloads would pass for the whole: null unless all have one.
        return None if any(v is None for v in values) else float(sum(values))

    def totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = {
            "workloads": len(self.workloads),
            **{change: self.count(change) for change in ("added", "removed", "changed", "unchanged")},
            "unreadable": len(self.errors),
            "per_node_workloads": sum(1 for w in self.workloads if w.scope == "per-node"),
        }
        for measure in ("workload_watts", "kwh_per_month", "kg_co2e_per_month"):
            before, after = self._side_total("before", measure), self._side_total("after", measure)
            totals[f"before_{measure}"], totals[f"after_{measure}"] = before, after
            totals[f"delta_{measure}"] = _delta(before, after)
        totals["delta_percent"] = _percent(totals["before_workload_watts"], totals["after_workload_watts"])
        return totals

    def gate_failures(self, fail_above_watts: float | None, fail_above_percent: float | None) -> list[str]:
        """Why the change fails the gates (empty when it passes)."""
        if fail_above_watts is None and fail_above_percent is None:
            return []
        totals = self.totals()
        before, after = totals["before_workload_watts"], totals["after_workload_watts"]
        increase = after - before
        reasons = []
        if fail_above_watts is not None and increase > fail_above_watts:
            reasons.append(f"total power rises by {increase:.2f} W ({before:.2f} -> {after:.2f} W), "
                           f"above --fail-above-watts {fail_above_watts:g}")
        if fail_above_percent is not None and increase > 0:
            percent = totals["delta_percent"]
            if percent is None or percent > fail_above_percent:
                shown = "from 0 W" if percent is None else f"{percent:+.1f}%"
                reasons.append(f"total power rises {shown} ({before:.2f} -> {after:.2f} W), "
                               f"above --fail-above-percent {fail_above_percent:g}")
        if self.errors:
            # An unreadable workload's power is unknown, so the gate cannot vouch for the total.
            reasons.append(f"{len(self.errors)} workload(s) could not be read, so the gate cannot check them")
        return reasons

    def as_json(self, gate_failures: list[str] | None = None) -> dict[str, Any]:
        return {
            "workloads": [w.as_dict() for w in self.workloads],
            "totals": self.totals(),
            "errors": self.errors,
            "carbon": {"hours_per_month": HOURS_PER_MONTH, "pue": self.carbon.pue,
                       "default_grid": None if self.carbon.default is None else self.carbon.default.as_dict()},
            "model": self.model_id,
            "gate_failures": gate_failures or [],
        }


def diff_manifests(base: Manifests, head: Manifests, carbon: CarbonSettings, model_id: str) -> Diff:
    """Match the sides by kind, namespace and name. A workload either side cannot read is left
    out of the rows (listed in ``errors`` instead), so it is never mistaken for added or removed."""
    unreadable = base.unreadable | head.unreadable
    keys = sorted((base.workloads.keys() | head.workloads.keys()) - unreadable)
    rows = [WorkloadDiff(key, base.workloads.get(key), head.workloads.get(key)) for key in keys]
    return Diff(rows, base.errors + head.errors, carbon, model_id)


# -- rendering -----------------------------------------------------------------------------------


def _number(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def _signed(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:+.{decimals}f}"


def _span(before: float | None, after: float | None, decimals: int) -> str:
    """``before -> after``, one side only when the other is absent."""
    return f"{_number(before, decimals)} -> {_number(after, decimals)}"


def _percent_text(percent: float | None, delta: float | None) -> str:
    if percent is None:
        return "new" if delta else "-"
    return f"{percent:+.1f}%"


def _cells(row: Mapping[str, Any], arrow: str) -> list[str]:
    """The figures of one workload (or the totals) as the table and Markdown show them."""
    cells = [
        _span(row.get("before_pods"), row.get("after_pods"), 0) if "before_pods" in row else "",
        _span(row.get("before_pod_watts"), row.get("after_pod_watts"), 2) if "before_pod_watts" in row else "",
        _span(row["before_workload_watts"], row["after_workload_watts"], 2),
        f"{_signed(row['delta_workload_watts'], 2)} ({_percent_text(row['delta_percent'], row['delta_workload_watts'])})",
        _span(row["before_kwh_per_month"], row["after_kwh_per_month"], 2),
        _span(row["before_kg_co2e_per_month"], row["after_kg_co2e_per_month"], 3),
    ]
    return [cell.replace(" -> ", arrow) for cell in cells]


HEADER = ("WORKLOAD", "CHANGE", "PODS", "POD W", "WORKLOAD W", "DELTA W", "kWh/MONTH", "kg CO2e/MONTH")


def _shown(diff: Diff) -> list[WorkloadDiff]:
    return [w for w in diff.workloads if w.change != "unchanged"]


def _summary(diff: Diff) -> str:
    totals = diff.totals()
    counts = ", ".join(f"{totals[c]} {c}" for c in ("changed", "added", "removed", "unchanged"))
    text = (f"{counts}; total {_number(totals['before_workload_watts'], 2)} -> "
            f"{_number(totals['after_workload_watts'], 2)} W "
            f"({_signed(totals['delta_workload_watts'], 2)} W, "
            f"{_percent_text(totals['delta_percent'], totals['delta_workload_watts'])}), "
            f"{_signed(totals['delta_kwh_per_month'], 2)} kWh/month")
    if totals["delta_kg_co2e_per_month"] is not None:
        text += f", {_signed(totals['delta_kg_co2e_per_month'], 3)} kg CO2e/month"
    return text


def _carbon_note(diff: Diff) -> str:
    grid = diff.carbon.default
    if grid is None:
        return ("carbon: only for workloads with a topology.kubernetes.io/region node selector "
                "(give --region or --grid-intensity for the rest)")
    where = f"{grid.region} ({grid.location})" if grid.location else grid.region
    year = f", {grid.year}" if grid.year else ""
    return f"carbon: {where} at {grid.grams_per_kwh:.1f} g CO2e/kWh ({grid.source}{year}), PUE {diff.carbon.pue:g}"


def render_table(diff: Diff) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    for w in _shown(diff):
        rows.append((w.key.describe(), w.change, *_cells(w.as_dict(), " -> ")))
    totals = diff.totals()
    rows.append(("TOTAL", "", *_cells(totals, " -> ")))
    lines = align_columns(rows)
    lines += ["", _summary(diff), f"{HOURS_PER_MONTH:g} h per month; {_carbon_note(diff)}"]
    if totals["per_node_workloads"]:
        lines.append(f"{totals['per_node_workloads']} DaemonSet(s) counted at one node (their node count is not in the spec)")
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(diff: Diff) -> str:
    """A pull-request comment: a summary, the workloads that changed, the totals, unreadable ones."""
    totals = diff.totals()
    lines = ["### EnergetiScope: predicted energy and carbon of this change", "",
             _summary(diff) + ".", ""]
    header = ("Workload", "Change", "Pods", "Pod W", "Workload W", "Δ W", "kWh/month", "kg CO2e/month")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for w in _shown(diff):
        cells = [f"`{w.key.kind}` {w.key.namespace}/{w.key.name}", w.change, *_cells(w.as_dict(), " → ")]
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    lines.append("| " + " | ".join(_markdown_cell(c) for c in ["**Total**", "", *_cells(totals, " → ")]) + " |")
    lines += ["", f"{HOURS_PER_MONTH:g} h per month; {_carbon_note(diff)}. Model: `{diff.model_id}`."]
    if totals["per_node_workloads"]:
        lines.append(f"{totals['per_node_workloads']} DaemonSet(s) counted at one node.")
    if diff.errors:
        lines += ["", "**Workloads that could not be read** (not counted):", ""]
        lines += [f"- {_error_text(e)}" for e in diff.errors]
    return "\n".join(lines) + "\n"


def _error_text(error: Mapping[str, Any]) -> str:
    where = f"{error['file']}" + (f":{error['line']}" if error.get("line") else "")
    return (f"{error['side']} {where}: {error['kind']} {error['namespace']}/{error['name']}: "
            f"{error['field']}: {error['problem']}")


def _escape_data(text: str) -> str:
    # GitHub's workflow-command escaping (actions/toolkit, command.ts).
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, message: str, file: str | None = None, line: int | None = None,
             title: str | None = None) -> str:
    properties = []
    if file is not None and file != STDIN_NAME:
        properties.append(f"file={_escape_property(file)}")
        if line is not None:
            properties.append(f"line={line}")
    if title is not None:
        properties.append(f"title={_escape_property(title)}")
    return f"::{level}{' ' + ','.join(properties) if properties else ''}::{_escape_data(message)}"


def render_github(diff: Diff, gate_failures: list[str]) -> str:
    """GitHub Actions workflow commands: a warning at each workload whose power rises, a notice
    where it falls or a workload is removed, an error at each unreadable workload and gate."""
    lines = []
    for w in _shown(diff):
        row = w.as_dict()
        cells = _cells(row, " -> ")
        message = (f"{w.key.describe()} {w.change}: pods {cells[0]}, workload {cells[2]} W ({cells[3]}), "
                   f"{cells[4]} kWh/month" + ("" if row["after_kg_co2e_per_month"] is None and
                                              row["before_kg_co2e_per_month"] is None
                                              else f", {cells[5]} kg CO2e/month"))
        rising = (row["delta_workload_watts"] or 0) > 0
        found = w.after or w.before
        at_file = w.after.file if w.after is not None else None  # a removed workload has no line in HEAD
        lines.append(_command("warning" if rising else "notice", message, at_file,
                              None if at_file is None else found.line,  # type: ignore[union-attr]
                              title=f"energy {_signed(row['delta_workload_watts'], 2)} W"))
    for error in diff.errors:
        lines.append(_command("error", _error_text(error), error["file"] if error["side"] == "after" else None,
                              error.get("line"), title="workload not read"))
    lines.append(_command("notice", _summary(diff), title="EnergetiScope"))
    for reason in gate_failures:
        lines.append(_command("error", reason, title="EnergetiScope gate"))
    return "\n".join(lines)


def render(diff: Diff, output: str, gate_failures: list[str]) -> str:
    if output == "json":
        return json.dumps(diff.as_json(gate_failures), indent=2)
    if output == "markdown":
        text = render_markdown(diff)
        if gate_failures:
            text += "\n" + "\n".join(f"**Gate failed:** {_markdown_cell(r)}" for r in gate_failures) + "\n"
        return text.rstrip("\n")
    if output == "github":
        return render_github(diff, gate_failures)
    return render_table(diff)
