"""`energetiscope diff`: matching, the numbers, the four formats, carbon, bad input and the gates.

The manifests are the real ones in ../shared/fixtures/manifests; the expected power follows from
the embedded prior's formula (README, "Predictors"), written out here rather than called.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from markdown_it import MarkdownIt

from webhook.cli import main
from webhook.model.prior import PriorCoefficients

GUESTBOOK = "k8s-examples__guestbook-all-in-one_multidoc.yaml"
WEB = "k8s-website__web_statefulset_multidoc.yaml"
GUESTBOOK_WORKLOADS = {("Deployment", "default", n) for n in ("redis-master", "redis-replica", "frontend")}
HOURS_PER_MONTH = 730
CARBON_DATA = Path(__file__).resolve().parents[2] / "webhook" / "model" / "data" / "codecarbon"


def prior_pod_watts(vcpu: float, memory_bytes: float) -> float:
    """The embedded prior for a pod without GPUs, from its published formula."""
    c = PriorCoefficients()
    per_vcpu = c.cpu_min_watts_per_vcpu + c.utilisation * (c.cpu_max_watts_per_vcpu - c.cpu_min_watts_per_vcpu)
    return c.pue * (vcpu * per_vcpu + memory_bytes / 1e9 * 0.392)


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, ["diff", *args], input=stdin, catch_exceptions=False)


def diff_json(*args: str, stdin: str | None = None) -> dict[str, Any]:
    result = run(*args, "-o", "json", stdin=stdin)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in report["workloads"]}


def edited(source: Path, target: Path, double_replicas: bool = True, double_cpu_of: str | None = "frontend") -> Path:
    """A copy of a manifest with every replica count doubled and one container's CPU request doubled."""
    documents = list(yaml.safe_load_all(source.read_text(encoding="utf-8")))
    for document in documents:
        spec = document.get("spec") or {}
        if double_replicas and "replicas" in spec:
            spec["replicas"] *= 2
        if document["kind"] != "Service" and document["metadata"]["name"] == double_cpu_of:
            container = spec["template"]["spec"]["containers"][0]
            assert container["resources"]["requests"]["cpu"] == "100m"
            container["resources"]["requests"]["cpu"] = "200m"
    target.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return target


@pytest.fixture()
def guestbook(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "manifests" / GUESTBOOK


def test_doubled_replicas_and_one_cpu_request(guestbook: Path, tmp_path: Path) -> None:
    head = edited(guestbook, tmp_path / "head.yaml")
    report = diff_json(str(guestbook), str(head))
    rows = by_name(report)
    # Only the three Deployments: the three Services are never workloads.
    assert {(w["kind"], w["namespace"], w["name"]) for w in report["workloads"]} == GUESTBOOK_WORKLOADS
    assert all(w["change"] == "changed" for w in report["workloads"])
    memory = 100 * 2**20
    small, large = prior_pod_watts(0.1, memory), prior_pod_watts(0.2, memory)
    for name, pods in (("redis-master", 1), ("redis-replica", 2)):
        assert rows[name]["before_pods"] == pods and rows[name]["after_pods"] == 2 * pods
        assert rows[name]["after_workload_watts"] / rows[name]["before_workload_watts"] == pytest.approx(2.0, rel=1e-12)
        assert rows[name]["before_pod_watts"] == pytest.approx(small, rel=1e-9)
    frontend = rows["frontend"]
    assert frontend["after_pod_watts"] == pytest.approx(large, rel=1e-9)
    assert frontend["after_workload_watts"] / frontend["before_workload_watts"] == pytest.approx(2 * large / small)
    totals = report["totals"]
    assert (totals["changed"], totals["added"], totals["removed"], totals["unchanged"]) == (3, 0, 0, 0)
    before_watts = 6 * small
    after_watts = 2 * small + 4 * small + 6 * large
    assert totals["before_workload_watts"] == pytest.approx(before_watts)
    assert totals["after_workload_watts"] == pytest.approx(after_watts)
    assert totals["delta_percent"] == pytest.approx((after_watts - before_watts) / before_watts * 100)
    assert totals["after_kwh_per_month"] == pytest.approx(after_watts * HOURS_PER_MONTH / 1000)
    # No region: carbon is null, never guessed.
    assert totals["after_kg_co2e_per_month"] is None and frontend["after_kg_co2e_per_month"] is None


def test_only_the_changed_workload_is_changed(guestbook: Path, tmp_path: Path) -> None:
    head = edited(guestbook, tmp_path / "head.yaml", double_replicas=False)
    report = diff_json(str(guestbook), str(head))
    changes = {w["name"]: w["change"] for w in report["workloads"]}
    assert changes == {"frontend": "changed", "redis-master": "unchanged", "redis-replica": "unchanged"}
    table = run(str(guestbook), str(head)).stdout
    assert "frontend" in table and "redis-master" not in table  # the table lists what changed
    assert "1 changed, 0 added, 0 removed, 2 unchanged" in table


def test_statefulset_added_and_removed_across_a_directory_and_stdin(shared_dir: Path, guestbook: Path,
                                                                     tmp_path: Path) -> None:
    web = shared_dir / "fixtures" / "manifests" / WEB
    base = tmp_path / "base"
    (base / "nested").mkdir(parents=True)
    (base / "app.yml").write_text(guestbook.read_text(encoding="utf-8"), encoding="utf-8")
    # JSON is read too (a List of one Pod), and files of other types are not.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "tools"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    (base / "nested" / "pod.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod]}))
    (base / "nested" / "notes.txt").write_text("kind: Deployment\n")
    head_text = guestbook.read_text(encoding="utf-8") + "---\n" + web.read_text(encoding="utf-8")
    report = diff_json(str(base), "-", stdin=head_text)
    changes = {(w["kind"], w["namespace"], w["name"]): w["change"] for w in report["workloads"]}
    assert changes == {**{k: "unchanged" for k in GUESTBOOK_WORKLOADS},
                       ("StatefulSet", "default", "web"): "added", ("Pod", "tools", "p"): "removed"}
    web_row = by_name(report)["web"]
    assert web_row["before_workload_watts"] is None and web_row["after_pods"] == 2
    assert web_row["after_file"] == "<stdin>"
    # No requests: 100 millicores and 128 MiB per pod (README).
    assert web_row["after_pod_watts"] == pytest.approx(prior_pod_watts(0.1, 128 * 2**20))
    removed = by_name(report)["p"]
    assert removed["after_workload_watts"] is None
    assert removed["delta_workload_watts"] == pytest.approx(-removed["before_workload_watts"])
    assert removed["before_file"].endswith("pod.json") and removed["before_line"] == 1


def markdown_table(text: str) -> list[list[str]]:
    """The cells of the first table in ``text``, parsed by markdown-it-py (GFM tables)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and rows and token.map is not None and token.level > 0:
            rows[-1].append(MarkdownIt().renderInline(token.content).strip())
    assert rows, f"no table in:\n{text}"
    return rows


def test_markdown_is_a_table_a_parser_reads(guestbook: Path, tmp_path: Path) -> None:
    head = edited(guestbook, tmp_path / "head.yaml", double_replicas=False)
    text = run(str(guestbook), str(head), "-o", "markdown", "--region", "europe-west4").stdout
    rows = markdown_table(text)
    assert rows[0] == ["Workload", "Change", "Pods", "Pod W", "Workload W", "Δ W", "kWh/month", "kg CO2e/month"]
    memory = 100 * 2**20
    small, large = prior_pod_watts(0.1, memory), prior_pod_watts(0.2, memory)
    kwh = lambda watts: watts * HOURS_PER_MONTH / 1000  # noqa: E731
    kg = lambda watts: kwh(watts) * 236 / 1000  # noqa: E731 (europe-west4 in codecarbon's impact.csv)
    percent = (large - small) / small * 100
    assert rows[1] == [
        "<code>Deployment</code> default/frontend", "changed", "3 → 3", f"{small:.2f} → {large:.2f}",
        f"{3 * small:.2f} → {3 * large:.2f}", f"{3 * (large - small):+.2f} ({percent:+.1f}%)",
        f"{kwh(3 * small):.2f} → {kwh(3 * large):.2f}", f"{kg(3 * small):.3f} → {kg(3 * large):.3f}",
    ]
    total_before, total_after = 6 * small, 3 * small + 3 * large
    assert rows[2][0] == "<strong>Total</strong>"
    assert rows[2][4] == f"{total_before:.2f} → {total_after:.2f}"
    assert len(rows) == 3  # unchanged workloads are counted above the table, not listed in it
    assert "1 changed, 0 added, 0 removed, 2 unchanged" in text


def _impact_csv_grams(region: str) -> float:
    with open(CARBON_DATA / "impact.csv", encoding="utf-8-sig", newline="") as handle:
        return next(float(r["impact"]) for r in csv.DictReader(handle) if r["region"] == region)


def test_carbon_is_energy_times_the_regions_intensity(guestbook: Path, tmp_path: Path) -> None:
    head = edited(guestbook, tmp_path / "head.yaml")
    grams = _impact_csv_grams("europe-west4")
    report = diff_json(str(guestbook), str(head), "--region", "europe-west4")
    for row in report["workloads"]:
        for side in ("before", "after"):
            assert row[f"{side}_kg_co2e_per_month"] == pytest.approx(row[f"{side}_kwh_per_month"] * grams / 1000)
            assert row[f"{side}_region"] == "europe-west4"
    totals = report["totals"]
    assert totals["delta_kg_co2e_per_month"] == pytest.approx(totals["delta_kwh_per_month"] * grams / 1000)
    assert report["carbon"]["default_grid"]["grams_per_kwh"] == grams
    # A US AWS region: EPA eGRID's lb/MWh for its state, in g/kWh.
    egrid = json.loads((CARBON_DATA / "usa_emissions.json").read_text(encoding="utf-8"))
    virginia = next(r["emissions"] for r in egrid.values() if isinstance(r, dict) and r.get("regionCode") == "VA")
    aws = diff_json(str(guestbook), str(head), "--region", "us-east-1", "--pue", "1.2")["totals"]
    assert aws["after_kg_co2e_per_month"] == pytest.approx(aws["after_kwh_per_month"] * 1.2 * virginia * 0.45359237 / 1000)
    custom = diff_json(str(guestbook), str(head), "--grid-intensity", "500")["totals"]
    assert custom["after_kg_co2e_per_month"] == pytest.approx(custom["after_kwh_per_month"] * 0.5)


def test_a_region_node_selector_beats_the_default_and_a_missing_one_leaves_carbon_null(tmp_path: Path) -> None:
    def deployment(name: str, region: str | None) -> dict[str, Any]:
        pod: dict[str, Any] = {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}
        if region:
            pod["nodeSelector"] = {"topology.kubernetes.io/region": region}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": 1, "template": {"spec": pod}}}

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump_all([deployment("pinned", "europe-north1"), deployment("free", None)]))
    rows = by_name(diff_json(str(base), str(base), "--region", "europe-west4"))
    assert rows["pinned"]["after_region"] == "europe-north1"
    assert rows["pinned"]["after_grid_grams_per_kwh"] == _impact_csv_grams("europe-north1")
    assert rows["free"]["after_region"] == "europe-west4"
    report = diff_json(str(base), str(base))  # no default region
    assert by_name(report)["pinned"]["after_kg_co2e_per_month"] is not None
    assert by_name(report)["free"]["after_kg_co2e_per_month"] is None
    assert report["totals"]["after_kg_co2e_per_month"] is None  # a partial sum would pass for the whole


def test_invalid_yaml_names_file_line_and_column(guestbook: Path, tmp_path: Path) -> None:
    head = tmp_path / "broken.yaml"
    head.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n   bad: [\n")
    result = run(str(guestbook), str(head))
    assert result.exit_code == 2
    assert re.search(rf"{re.escape(str(head))}: invalid YAML at line 5, column \d+", result.stderr), result.stderr


def test_unreadable_workloads_are_listed_and_the_rest_still_diffed(guestbook: Path, tmp_path: Path) -> None:
    text = guestbook.read_text(encoding="utf-8")
    broken = text.replace("cpu: 100m", "cpu: lots", 1)  # redis-master
    head = edited(guestbook, tmp_path / "doubled.yaml")
    (tmp_path / "head.yaml").write_text(broken + "\n---\n" + head.read_text().split("---\n", 1)[0])
    head = tmp_path / "head.yaml"
    report = diff_json(str(guestbook), str(head))
    # redis-master cannot be read in HEAD: listed as an error, never as removed.
    assert {w["name"] for w in report["workloads"]} == {"redis-replica", "frontend"}
    [error] = report["errors"]
    assert error["side"] == "after" and error["name"] == "redis-master" and error["namespace"] == "default"
    assert error["field"] == "spec.template.spec.containers[0].resources.requests.cpu"
    assert "lots" in error["problem"] and error["line"] == 18 and error["file"] == str(head)
    github = run(str(guestbook), str(head), "-o", "github").stdout
    assert f"::error file={head},line=18,title=workload not read::" in github
    gated = run(str(guestbook), str(head), "--fail-above-watts", "1000")
    assert gated.exit_code == 1 and "could not be read" in gated.stderr


def test_gates_and_exit_codes(guestbook: Path, tmp_path: Path) -> None:
    head = edited(guestbook, tmp_path / "head.yaml")
    totals = diff_json(str(guestbook), str(head))["totals"]
    increase, percent = totals["delta_workload_watts"], totals["delta_percent"]
    failed = run(str(guestbook), str(head), "--fail-above-watts", f"{increase - 0.01:.2f}")
    assert failed.exit_code == 1
    assert "above --fail-above-watts" in failed.stderr
    assert run(str(guestbook), str(head), "--fail-above-watts", f"{increase + 0.01:.2f}").exit_code == 0
    assert run(str(guestbook), str(head), "--fail-above-percent", f"{percent - 0.1:.1f}").exit_code == 1
    assert run(str(guestbook), str(head), "--fail-above-percent", f"{percent + 0.1:.1f}").exit_code == 0
    # A decrease never trips a gate.
    assert run(str(head), str(guestbook), "--fail-above-watts", "0", "--fail-above-percent", "0").exit_code == 0
    gated_json = json.loads(run(str(guestbook), str(head), "-o", "json", "--fail-above-watts", "0").stdout)
    assert len(gated_json["gate_failures"]) == 1
    # Usage errors are 2, never 1.
    for args in (["-", "-"], [str(guestbook), str(tmp_path / "missing")],
                 [str(guestbook), str(head), "--region", "moon-1"],
                 [str(guestbook), str(head), "--region", "eastus", "--grid-intensity", "100"],
                 [str(guestbook), str(head), "-o", "yaml"]):
        result = run(*args, stdin="")
        assert result.exit_code == 2, (args, result.output)
    unknown = run(str(guestbook), str(head), "--region", "moon-1")
    assert "energetiscope regions" in unknown.stderr


def test_github_annotations_point_at_the_workloads_lines(guestbook: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.yaml"
    head.write_text(guestbook.read_text(encoding="utf-8").replace("replicas: 3", "replicas: 1"))
    base = tmp_path / "base.yaml"
    base.write_text(guestbook.read_text(encoding="utf-8").replace("replicas: 2", "replicas: 4"))
    lines = run(str(base), str(head), "-o", "github").stdout.splitlines()
    annotations = [re.match(r"::(\w+) file=([^,]+),line=(\d+),title=[^:]*::(.*)", line) for line in lines]
    found = {m.group(4).split(" changed")[0]: m for m in annotations if m}
    head_lines = head.read_text().splitlines()
    for name, level in (("frontend", "notice"), ("redis-replica", "notice")):
        match = found[f"Deployment default/{name}"]
        assert match.group(1) == level and match.group(2) == str(head)
        # The line starts the workload's document: its kind and name follow within a few lines.
        start = int(match.group(3)) - 1
        assert "kind: Deployment" in head_lines[start:start + 3] and f"  name: {name}" in head_lines[start:start + 4]
    assert lines[-1].startswith("::notice title=EnergetiScope::")
