"""`energetiscope train dataset --measurements`: a measurement table (CSV or Parquet) joined to
manifests (a file, a directory, stdin) or NDJSON specs, on the real ML.ENERGY files in
../shared/data/mlenergy (897 GPU Deployments and their measured power), then `train fit` and
`energetiscope predict` on the result; and every kind of bad row, refused with file, row and column.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner, Result

from trainer.cli import train
from trainer.dataset import read_dataset, summary_path
from trainer.measurements import DEFAULT_WINDOW_COUNT
from trainer.targets import build_targets
from webhook.model.extract import to_inference_request

REPO_ROOT = Path(__file__).resolve().parents[2]
MLENERGY_DIR = REPO_ROOT.parent / "shared" / "data" / "mlenergy"
MEASUREMENTS_CSV = MLENERGY_DIR / "measurements.csv"
MANIFESTS_YAML = MLENERGY_DIR / "manifests.yaml"
KEY = ("namespace", "workload_kind", "workload_name")


@pytest.fixture(scope="module")
def mlenergy_rows() -> list[dict[str, str]]:
    if not MEASUREMENTS_CSV.is_file() or not MANIFESTS_YAML.is_file():
        pytest.fail(f"ML.ENERGY data not found at {MLENERGY_DIR} (shared/ must sit beside the repository)", pytrace=False)
    with open(MEASUREMENTS_CSV, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mlenergy_manifests(mlenergy_rows: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """The Deployments by name."""
    return {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(MANIFESTS_YAML.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def subset(mlenergy_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """A few rows of every model family, in file order."""
    per_group: dict[str, int] = {}
    chosen = []
    for row in mlenergy_rows:
        if per_group.get(row["group"], 0) < 4:
            per_group[row["group"]] = per_group.get(row["group"], 0) + 1
            chosen.append(row)
    assert len(per_group) == 7
    return chosen


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or rows[0].keys())
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_manifests(path: Path, manifests: dict[str, dict[str, Any]], rows: Sequence[dict[str, str]]) -> Path:
    path.write_text(yaml.safe_dump_all([manifests[r["workload_name"]] for r in rows]), encoding="utf-8")
    return path


def run_dataset(*args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(train, ["dataset", *args], input=stdin)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def failure(result: Result) -> str:
    """The message of a refused command: a click error (exit 1, 'Error: ...'), not a traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


def targets_by_name(dataset_path: Path, min_active_windows: int = DEFAULT_WINDOW_COUNT) -> pd.DataFrame:
    table = build_targets(read_dataset(dataset_path), min_active_windows=min_active_windows)
    return table.frame.assign(groups=table.groups).set_index("workload_name")


# -- the real files, end to end -------------------------------------------------------------------


def test_the_full_mlenergy_table_builds_a_dataset_whose_targets_are_the_measured_power(
        mlenergy_rows: list[dict[str, str]], tmp_path: Path) -> None:
    out = tmp_path / "d.parquet"
    output = ok(run_dataset("--measurements", str(MEASUREMENTS_CSV), "--manifests", str(MANIFESTS_YAML), "--out", str(out)))
    assert "measurements: 897 rows from measurements.csv (csv), power from power_watts, 7 groups" in output
    assert "ignored columns: model_id, gpu_product, gpus, task, benchmark" in output
    assert "joined: 897 rows, 897 pods, 897 workloads" in output

    dataset = read_dataset(out)
    assert len(dataset) == 897 and set(dataset["join_rule"]) == {"workload"}
    targets = targets_by_name(out)
    assert len(targets) == 897
    for row in mlenergy_rows:
        target = targets.loc[row["workload_name"]]
        assert target["power_watts"] == float(row["power_watts"])  # exactly, not approximately
        assert target["groups"] == row["group"] and target["pods"] == 1
    summary = json.loads(summary_path(out).read_text())
    assert summary["join"]["joined"]["rows"] == 897 and summary["join"]["unjoined"] == {}
    assert summary["groups"] == 7 and summary["ignored_columns"] == ["model_id", "gpu_product", "gpus", "task", "benchmark"]


def _energetiscope() -> list[str]:
    script = Path(sys.executable).parent / "energetiscope"
    if not script.is_file():
        pytest.fail(f"the energetiscope command is not installed beside {sys.executable}", pytrace=False)
    return [str(script)]


def test_dataset_fit_predict_commands_as_a_user_types_them(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The three commands of issue 12, as processes, in a directory of the user's files; and
    `train evaluate` on the same dataset."""
    write_csv(tmp_path / "m.csv", subset)
    write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    other = dict(mlenergy_manifests[subset[0]["workload_name"]])
    other["metadata"] = {**other["metadata"], "name": "not-in-the-training-data"}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other), encoding="utf-8")

    def run(*args: str) -> str:
        done = subprocess.run([*_energetiscope(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # the code under test
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    run("train", "dataset", "--measurements", "m.csv", "--manifests", "m.yaml", "--out", "d.parquet")
    fit_output = run("train", "fit", "--dataset", "d.parquet", "--out", "model.joblib", "--no-progress")
    assert "(7 folds)" in fit_output  # grouped by family: 7 groups, not 28 workloads
    run("train", "evaluate", "--model", "model.joblib", "--dataset", "d.parquet", "--out-dir", "evaluation")
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["in_sample"] is True and evaluation["metrics"][0]["targets"] == len(subset)
    assert (tmp_path / "evaluation" / "residuals.png").is_file()
    prediction = json.loads(run("predict", "other.yaml", "--model", "model.joblib", "-o", "json"))
    [row] = prediction["predictions"]
    assert row["workload_name"] == "not-in-the-training-data"
    assert row["model"] == json.loads((tmp_path / "model.card.json").read_text())["model_id"]
    assert row["model"] != "ccf-prior-v1" and row["pod_power_watts"] > 0


def test_a_model_that_never_saw_a_gpu_product_predicts_it_better_than_the_embedded_prior(
        mlenergy_rows: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Generalisation, not recall: trained on the A100 and H100 servers only, the served model predicts
    every B200 server (a product it has no measurement of) closer than the embedded prior, whose
    product table is the only thing that knows a B200, in mean |log error| and in MAE."""
    train_rows = [r for r in mlenergy_rows if r["gpu_product"] != "NVIDIA-B200"]
    held_out = [r for r in mlenergy_rows if r["gpu_product"] == "NVIDIA-B200"]
    assert len(held_out) > 50 and len(train_rows) > 300
    write_csv(tmp_path / "m.csv", train_rows)
    write_manifests(tmp_path / "m.yaml", mlenergy_manifests, train_rows)
    write_manifests(tmp_path / "b200.yaml", mlenergy_manifests, held_out)
    ok(run_dataset("--measurements", str(tmp_path / "m.csv"), "--manifests", str(tmp_path / "m.yaml"),
                   "--out", str(tmp_path / "d.parquet")))
    ok(CliRunner().invoke(train, ["fit", "--dataset", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "model.joblib"),
                                  "--no-progress"]))

    def errors(*model: str) -> tuple[float, float]:
        done = subprocess.run([*_energetiscope(), "predict", str(tmp_path / "b200.yaml"), *model, "-o", "json"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert done.returncode == 0, done.stderr
        predicted = {p["workload_name"]: p["pod_power_watts"] for p in json.loads(done.stdout)["predictions"]}
        measured = {r["workload_name"]: float(r["power_watts"]) for r in held_out}
        assert predicted.keys() == measured.keys()
        pairs = np.array([(predicted[name], measured[name]) for name in measured])
        return float(np.mean(np.abs(np.log(pairs[:, 0] / pairs[:, 1])))), float(np.mean(np.abs(pairs[:, 0] - pairs[:, 1])))

    served_log, served_mae = errors("--model", str(tmp_path / "model.joblib"))
    prior_log, prior_mae = errors()  # no model: the embedded prior
    assert served_log < prior_log and served_mae < prior_mae, (served_log, prior_log, served_mae, prior_mae)


# -- inputs ------------------------------------------------------------------------------------------


def test_parquet_input_gives_the_same_dataset_as_csv(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    table = pd.DataFrame(subset).astype({"power_watts": "float64", "gpus": "int64"})
    table.to_parquet(tmp_path / "m.parquet", index=False)
    write_csv(tmp_path / "m.csv", subset)
    output = ok(run_dataset("--measurements", str(tmp_path / "m.parquet"), "--manifests", str(manifests),
                            "--out", str(tmp_path / "p.parquet")))
    assert f"{len(subset)} rows from m.parquet (parquet)" in output
    ok(run_dataset("--measurements", str(tmp_path / "m.csv"), "--manifests", str(manifests), "--out", str(tmp_path / "c.parquet")))
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "p.parquet").drop(columns="source"),
                                  read_dataset(tmp_path / "c.parquet").drop(columns="source"))
    assert set(read_dataset(tmp_path / "p.parquet")["source"]) == {"m.parquet"}


def test_energy_and_duration_give_power_as_their_quotient(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    rows = [{**{c: r[c] for c in (*KEY, "group")}, "energy_joules": f"{float(r['power_watts']) * 37.3:.6f}",
             "duration_seconds": "37.3"} for r in subset]
    measurements = write_csv(tmp_path / "m.csv", rows)
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert "power from energy_joules / duration_seconds" in output
    targets = targets_by_name(tmp_path / "d.parquet")
    for row in rows:
        assert targets.loc[row["workload_name"], "power_watts"] == float(row["energy_joules"]) / 37.3


def test_manifests_from_stdin(subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]],
                              tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", subset)
    text = yaml.safe_dump_all([mlenergy_manifests[r["workload_name"]] for r in subset])
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", "-", "--out", str(tmp_path / "d.parquet"),
                            stdin=text))
    assert f"joined: {len(subset)} rows" in output
    assert len(read_dataset(tmp_path / "d.parquet")) == len(subset)


def test_a_directory_of_manifests_is_read_recursively_with_lists_and_json(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", subset)
    docs = [mlenergy_manifests[r["workload_name"]] for r in subset]
    third = len(docs) // 3
    root = tmp_path / "manifests"
    (root / "nested" / "deeper").mkdir(parents=True)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "vllm", "namespace": "llm-serving"}}
    (root / "a.yaml").write_text(yaml.safe_dump_all([*docs[:third], service]), encoding="utf-8")
    (root / "nested" / "b.yml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs[third:2 * third]}),
                                           encoding="utf-8")
    (root / "nested" / "deeper" / "c.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs[2 * third:]}),
                                                       encoding="utf-8")
    (root / "nested" / "notes.txt").write_text("kind: Deployment\nnot: read\n", encoding="utf-8")
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", str(root), "--out", str(tmp_path / "d.parquet")))
    assert f"specs: {len(subset)} from 3 manifest files and 0 NDJSON files; 1 documents skipped" in output
    assert f"joined: {len(subset)} rows" in output
    summary = json.loads(summary_path(tmp_path / "d.parquet").read_text())
    assert summary["skipped_examples"] == [f"{root / 'a.yaml'}: document {third + 1}: v1/Service is not a workload kind"]


def test_a_manifest_stream_of_more_documents_than_a_webhook_request_may_hold(
        mlenergy_rows: list[dict[str, str]], tmp_path: Path) -> None:
    """The webhook caps a request at 1000 documents; a file for the trainer has no cap: the
    897 Deployments twice over (renamed) on stdin, and the doubled table, all join."""
    text = MANIFESTS_YAML.read_text(encoding="utf-8")
    renamed = re.sub(r"(?m)^  name: ", "  name: again-", text)  # metadata.name, the only key at this depth
    assert renamed.count("name: again-") == 897
    rows = [*mlenergy_rows, *({**r, "workload_name": "again-" + r["workload_name"]} for r in mlenergy_rows)]
    measurements = write_csv(tmp_path / "m.csv", rows)
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", "-", "--out", str(tmp_path / "d.parquet"),
                            stdin=text + "---\n" + renamed))
    assert "joined: 1794 rows, 1794 pods, 1794 workloads" in output


def test_requests_ndjson_instead_of_manifests(subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]],
                                              tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", subset)
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    requests = tmp_path / "requests.ndjson"
    requests.write_text("".join(to_inference_request(mlenergy_manifests[r["workload_name"]]).model_dump_json() + "\n"
                                for r in subset), encoding="utf-8")
    output = ok(run_dataset("--measurements", str(measurements), "--requests", str(requests), "--out", str(tmp_path / "r.parquet")))
    assert f"specs: {len(subset)} from 0 manifest files and 1 NDJSON files" in output
    ok(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "m.parquet")))
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "r.parquet"), read_dataset(tmp_path / "m.parquet"))


def test_rows_without_a_spec_are_reported_by_reason_not_dropped_silently(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    lonely = {**subset[0], "workload_name": "measured-but-never-described"}
    measurements = write_csv(tmp_path / "m.csv", [*subset, lonely])
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert "not joined, no-spec: 1 rows, 1 pods, 1 workloads, e.g. llm-serving/Deployment/measured-but-never-described" in output
    summary = json.loads(summary_path(tmp_path / "d.parquet").read_text())
    assert summary["join"]["unjoined"]["no-spec"]["rows"] == 1
    assert "measured-but-never-described" not in set(read_dataset(tmp_path / "d.parquet")["workload_name"])


def test_a_manifest_without_a_namespace_joins_the_rows_that_measure_it_in_any_namespace(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    # helm template's output sets no namespace: kubectl -n decides where it runs, the rows say where it was measured.
    rows = subset[:3]
    elsewhere = {**rows[0], "namespace": "team-b"}  # the same chart, also measured in another namespace
    measurements = write_csv(tmp_path / "m.csv", [*rows, elsewhere])
    bare = []
    for row in rows:
        manifest = json.loads(json.dumps(mlenergy_manifests[row["workload_name"]]))
        del manifest["metadata"]["namespace"]
        bare.append(manifest)
    manifests = tmp_path / "bare.yaml"
    manifests.write_text(yaml.safe_dump_all(bare), encoding="utf-8")
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert "joined: 4 rows" in output
    joined = read_dataset(tmp_path / "d.parquet")
    assert sorted(set(zip(joined["namespace"], joined["workload_name"]))) == sorted(
        {(r["namespace"], r["workload_name"]) for r in [*rows, elsewhere]})
    # The spec is the manifest's in each namespace.
    by_namespace = {ns: json.loads(text) for ns, text in zip(joined["namespace"], joined["request_json"])
                    if text and json.loads(text)["workload_name"] == rows[0]["workload_name"]}
    assert by_namespace["team-b"]["containers"] == by_namespace[rows[0]["namespace"]]["containers"]


def test_files_that_are_not_utf8_are_named(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", subset[:2])
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset[:2])
    latin = tmp_path / "latin.csv"
    latin.write_bytes(measurements.read_text(encoding="utf-8").replace("llm-serving", "llm-servé", 1).encode("latin-1"))
    message = failure(run_dataset("--measurements", str(latin), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert "latin.csv" in message and "not UTF-8 text (byte 0xe9 on line 2)" in message
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(manifests.read_text(encoding="utf-8").encode("utf-16"))
    message = failure(run_dataset("--measurements", str(measurements), "--manifests", str(utf16), "--out", str(tmp_path / "d.parquet")))
    assert f"{utf16}: not UTF-8 text" in message


def test_manifests_piped_in_are_read_as_utf8_and_named_stdin_when_not(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", subset[:2])
    text = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset[:2]).read_text(encoding="utf-8")
    out = str(tmp_path / "d.parquet")
    message = failure(run_dataset("--measurements", str(measurements), "--manifests", "-", "--out", out,
                                  stdin=text.encode("utf-16")))  # PowerShell's pipe
    assert "<stdin>: not UTF-8 text" in message and not (tmp_path / "d.parquet").exists()
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", "-", "--out", out,
                            stdin=text.encode("utf-8-sig")))
    assert "joined: 2 rows" in output


def test_two_different_specs_without_a_namespace_join_nothing_anywhere(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    # Two charts rendering the same kind and name differently: no row is joined to a guess.
    row = subset[0]
    first = json.loads(json.dumps(mlenergy_manifests[row["workload_name"]]))
    del first["metadata"]["namespace"]
    second = json.loads(json.dumps(first))
    second["spec"]["template"]["spec"]["containers"][0]["image"] = "example.org/other:1"
    manifests = tmp_path / "two.yaml"
    manifests.write_text(yaml.safe_dump_all([first, second, mlenergy_manifests[subset[1]["workload_name"]]]), encoding="utf-8")
    measurements = write_csv(tmp_path / "m.csv", [row, subset[1]])
    output = ok(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert "not joined, ambiguous: 1 rows" in output
    assert row["workload_name"] not in set(read_dataset(tmp_path / "d.parquet")["workload_name"])


def test_a_table_that_joins_no_spec_is_refused_with_what_did_not_join(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", [{**subset[0], "workload_name": "nowhere"}])
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset[1:2])
    message = failure(run_dataset("--measurements", str(measurements), "--manifests", str(manifests),
                                  "--out", str(tmp_path / "d.parquet")))
    assert "no measurement row joined a spec" in message and "no-spec: 1 rows" in message
    assert not (tmp_path / "d.parquet").exists()


# -- group, pods, windows -----------------------------------------------------------------------------


def test_group_reaches_the_training_tables_groups_and_workloads_stay_workloads(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    ok(run_dataset("--measurements", str(write_csv(tmp_path / "g.csv", subset)), "--manifests", str(manifests),
                   "--out", str(tmp_path / "g.parquet")))
    table = build_targets(read_dataset(tmp_path / "g.parquet"))
    expected = {r["workload_name"]: r["group"] for r in subset}
    assert list(table.groups) == [expected[name] for name in table.frame["workload_name"]]
    assert len(set(table.groups)) == 7 and table.workloads == len(subset)
    assert list(table.subset(table.groups == "qwen").groups) == ["qwen"] * 4

    without_group = [{k: v for k, v in r.items() if k != "group"} for r in subset]
    ok(run_dataset("--measurements", str(write_csv(tmp_path / "n.csv", without_group)), "--manifests", str(manifests),
                   "--out", str(tmp_path / "n.parquet")))
    table = build_targets(read_dataset(tmp_path / "n.parquet"))
    assert "group" not in read_dataset(tmp_path / "n.parquet").columns
    assert sorted(table.groups) == sorted(f"llm-serving/Deployment/{r['workload_name']}" for r in subset)


def test_pods_and_windows_are_counted_and_few_windows_meet_the_fit_gate(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    rows = [{**r, "pods": "3", "windows": "2" if i == 0 else "12", "source": f"lab-{i % 2}"} for i, r in enumerate(subset)]
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset)
    output = ok(run_dataset("--measurements", str(write_csv(tmp_path / "m.csv", rows)), "--manifests", str(manifests),
                            "--out", str(tmp_path / "d.parquet")))
    assert "1 rows have fewer than 5 windows: train fit's default --min-active-windows leaves them out" in output
    assert set(read_dataset(tmp_path / "d.parquet")["source"]) == {"lab-0", "lab-1"}
    table = build_targets(read_dataset(tmp_path / "d.parquet"))
    assert len(table.requests) == len(rows) - 1 and table.excluded_pods == 1
    assert table.pods == 3 * (len(rows) - 1) and table.source_rows == 12 * (len(rows) - 1)
    gated_low = targets_by_name(tmp_path / "d.parquet", min_active_windows=2)
    assert gated_low.loc[rows[0]["workload_name"], "power_watts"] == float(rows[0]["power_watts"])
    assert gated_low.loc[rows[0]["workload_name"], "pods"] == 3


# -- bad input -------------------------------------------------------------------------------------


def _bad_table(tmp_path: Path, subset: Sequence[dict[str, str]], row: int, column: str, value: str) -> Path:
    rows = [dict(r) for r in subset[:4]]
    rows[row - 1][column] = value
    return write_csv(tmp_path / "bad.csv", rows)


def _refused(tmp_path: Path, mlenergy_manifests: dict[str, dict[str, Any]], subset: Sequence[dict[str, str]],
             measurements: Path) -> str:
    manifests = write_manifests(tmp_path / "m.yaml", mlenergy_manifests, subset[:4])
    output = failure(run_dataset("--measurements", str(measurements), "--manifests", str(manifests),
                                 "--out", str(tmp_path / "d.parquet")))
    assert not (tmp_path / "d.parquet").exists()
    return output


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("power_watts", "", "empty: a value in W is needed"),
    ("power_watts", "-12.5", "'-12.5' is negative: it must be > 0 W"),
    ("power_watts", "0", "'0' is zero: it must be > 0 W"),
    ("power_watts", "NaN", "'NaN' is NaN: a value in W is needed"),
    ("power_watts", "inf", "'inf' is infinite"),
    ("power_watts", "about 300", "'about 300' is not a number"),
    ("power_watts", "1_000", "'1_000' is not a number"),
    ("power_watts", "١٢", "'١٢' is not a number"),
    ("power_watts", "350000", "350000 W is more than any one machine draws (100,000 W): the mean power of one pod, in W, "
                              "is needed"),
    ("workload_kind", "deployment", "'deployment' is not a workload kind EnergetiScope predicts for"),
    ("workload_name", "", "empty"),
    ("group", "", "empty"),
])
def test_a_bad_cell_is_refused_with_file_row_and_column(
        column: str, value: str, problem: str, subset: list[dict[str, str]],
        mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = _bad_table(tmp_path, subset, 3, column, value)
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert f"Error: {measurements}: data row 3 (1-based, header not counted; line 4 of the file): column {column}: {problem}" in output


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("energy_joules", "-1", "'-1' is negative: it must be > 0 J"),
    ("duration_seconds", "0", "'0' is zero: it must be > 0 s"),
    ("duration_seconds", "n/a", "'n/a' is not a number"),
    ("duration_seconds", "1e-300", "energy / duration is 3.6e+303 W, more than any one machine draws (100,000 W)"),
])
def test_bad_energy_or_duration_is_refused(column: str, value: str, problem: str, subset: list[dict[str, str]],
                                           mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    rows = [{**{c: r[c] for c in KEY}, "energy_joules": "3600", "duration_seconds": "10"} for r in subset[:4]]
    rows[1][column] = value
    measurements = write_csv(tmp_path / "bad.csv", rows)
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert f"{measurements}: data row 2 (1-based, header not counted; line 3 of the file): column {column}: {problem}" in output


def test_a_table_separated_by_semicolons_is_told_so(subset: list[dict[str, str]],
                                                    mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = tmp_path / "semi.csv"
    measurements.write_text("namespace;workload_kind;workload_name;power_watts\n"
                            + "".join(f"{r['namespace']};Deployment;{r['workload_name']};{r['power_watts']}\n" for r in subset[:3]),
                            encoding="utf-8")
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert "missing column: namespace, workload_kind, workload_name" in output
    assert "the header looks separated by semicolons: write the file with commas" in output


@pytest.mark.parametrize(("column", "value"), [("pods", "1.5"), ("windows", "0"), ("pods", "")])
def test_pods_and_windows_must_be_whole_numbers_of_at_least_one(
        column: str, value: str, subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]],
        tmp_path: Path) -> None:
    rows = [{**r, "pods": "1", "windows": "5"} for r in subset[:4]]
    rows[3][column] = value
    measurements = write_csv(tmp_path / "bad.csv", rows)
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert f"{measurements}: data row 4 (1-based, header not counted; line 5 of the file): column {column}: " in output
    assert ("empty: a whole number >= 1 is needed" if value == "" else f"{value!r} is not a whole number >= 1") in output


def test_a_duplicate_key_names_both_rows(subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]],
                                         tmp_path: Path) -> None:
    rows = [*subset[:4], {**subset[1], "power_watts": "999"}]
    measurements = write_csv(tmp_path / "bad.csv", rows)
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    key = "/".join(subset[1][c] for c in KEY)
    assert (f"{measurements}: data row 5 (1-based, header not counted; line 6 of the file): column workload_name: "
            f"the key {key} (namespace, workload_kind, workload_name) repeats data row 2") in output


@pytest.mark.parametrize(("dropped", "problem"), [
    ("workload_name", "column workload_name: missing column: workload_name"),
    ("power_watts", "column power_watts: missing column: power_watts (or energy_joules and duration_seconds) is needed"),
])
def test_a_missing_required_column_is_refused(dropped: str, problem: str, subset: list[dict[str, str]],
                                              mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    columns = [c for c in subset[0] if c != dropped]
    measurements = write_csv(tmp_path / "bad.csv", subset[:4], columns)
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert f"Error: {measurements}: {problem}" in output


def test_energy_without_duration_and_power_with_energy_are_refused(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    rows = [{**{c: r[c] for c in KEY}, "energy_joules": "3600", "power_watts": "1"} for r in subset[:4]]
    output = _refused(tmp_path, mlenergy_manifests, subset, write_csv(tmp_path / "both.csv", rows))
    assert "column power_watts: both power_watts and energy_joules: give power_watts, or energy_joules and duration_seconds" in output
    rows = [{k: v for k, v in r.items() if k != "power_watts"} for r in rows]
    output = _refused(tmp_path, mlenergy_manifests, subset, write_csv(tmp_path / "energy.csv", rows))
    assert "column duration_seconds: missing column: energy_joules needs duration_seconds beside it" in output


def test_blank_lines_hold_no_row_but_keep_the_numbering_and_a_short_row_is_refused(
        subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "bad.csv", subset[:4], [*KEY, "power_watts"])
    lines = measurements.read_text(encoding="utf-8").splitlines()
    lines[3:3] = ["", ",,,"]  # blank rows 3 and 4: the table's third measurement is now data row 5
    measurements.write_text("\n".join([*lines, "llm-serving,Deployment"]) + "\n", encoding="utf-8")
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert (f"{measurements}: data row 7 (1-based, header not counted; line 8 of the file): "
            f"2 cells where the header has 4 columns") in output
    measurements.write_text("\n".join([*lines[:5], lines[5].replace(subset[2]["power_watts"], "-1")]) + "\n",
                            encoding="utf-8")
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert f"{measurements}: data row 5 (1-based, header not counted; line 6 of the file): column power_watts: '-1'" in output


def test_a_bad_parquet_cell_names_its_data_row(subset: list[dict[str, str]], mlenergy_manifests: dict[str, dict[str, Any]],
                                                tmp_path: Path) -> None:
    """Parquet tells a NaN from a null (pandas would write NaN as null): both are refused, each as what it is."""
    measurements = tmp_path / "bad.parquet"

    def write(power_watts: list[float | None]) -> None:
        columns = {c: pa.array([r[c] for r in subset[:4]]) for c in KEY}
        pq.write_table(pa.table({**columns, "power_watts": pa.array(power_watts, type=pa.float64(), from_pandas=False)}),
                       measurements)

    write([300.0, float("nan"), 200.0, 100.0])
    output = _refused(tmp_path, mlenergy_manifests, subset, measurements)
    assert f"{measurements}: data row 2 (1-based, header not counted): column power_watts: nan is NaN" in output
    write([300.0, 200.0, None, 100.0])
    assert f"{measurements}: data row 3 (1-based, header not counted): column power_watts: empty" in _refused(
        tmp_path, mlenergy_manifests, subset, measurements)


def test_a_manifest_whose_workload_cannot_be_read_is_refused(subset: list[dict[str, str]], tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", subset[:1])
    manifests = tmp_path / "m.yaml"
    manifests.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, namespace: y}\nspec: {template: 3}\n",
                         encoding="utf-8")
    output = failure(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert f"{manifests}: document 1 (Deployment/x): " in output
    manifests.write_text("kind: [unclosed\n", encoding="utf-8")
    output = failure(run_dataset("--measurements", str(measurements), "--manifests", str(manifests), "--out", str(tmp_path / "d.parquet")))
    assert f"{manifests}: invalid YAML at line " in output


def test_the_options_say_which_source_of_measurements_and_specs(tmp_path: Path) -> None:
    measurements = write_csv(tmp_path / "m.csv", [{"namespace": "a", "workload_kind": "Pod", "workload_name": "p", "power_watts": "1"}])
    assert "give --labels (Kepler), --runs (Job runs) or --measurements" in run_dataset("--out", str(tmp_path / "d.parquet")).output
    assert "--measurements needs specs: --manifests PATH or --requests NDJSON" in run_dataset(
        "--measurements", str(measurements), "--out", str(tmp_path / "d.parquet")).output
