"""`energetiscope train ...` end to end: real Prometheus (backfilled seed measurements) -> labels
-> dataset joined with the seed's real InferenceRequests -> fit -> evaluate -> the artifact loads
in the webhook's loader and predicts with basis "model" for a training spec. Plus `collect` and
`run` against the recorded Kubernetes API (a real kube-apiserver version comes with the e2e
harness in tests/e2e)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.trainer.conftest import KeplerPrometheus
from tests.trainer.kube_api_server import RecordedKubeApi, load_recorded
from trainer.cli import train
from trainer.collect import read_requests
from trainer.dataset import read_dataset
from trainer.seed_report import DEFAULT_SEED_DIR, SEED_REQUESTS_FILE
from webhook.model.artifact import load_model
from webhook.model.prior import PriorPredictor
from webhook.model.schema import spec_hash

REPO_ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> str:
    result = CliRunner().invoke(train, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.prometheus
def test_labels_dataset_fit_evaluate_on_the_seed_measurements(kepler_prometheus: KeplerPrometheus, tmp_path: Path) -> None:
    seed = kepler_prometheus.seed
    requests_path = DEFAULT_SEED_DIR / SEED_REQUESTS_FILE
    if not requests_path.is_file():
        pytest.fail(f"seed specs not found at {requests_path}", pytrace=False)
    labels_path, dataset_path, model_path = tmp_path / "labels.parquet", tmp_path / "dataset.parquet", tmp_path / "model.joblib"

    output = invoke("labels", "--prometheus", kepler_prometheus.url, "--start", str(seed.start_seconds),
                    "--end", str(seed.end_seconds), "--step", "60s", "--out", str(labels_path), "--no-progress")
    assert "17640 rows, 49 pods" in output

    output = invoke("dataset", "--labels", str(labels_path), "--requests", str(requests_path), "--out", str(dataset_path))
    assert "not joined, no-spec" in output
    dataset = read_dataset(dataset_path)
    joined = set(map(tuple, dataset[["namespace", "workload_kind", "workload_name"]].drop_duplicates().to_numpy().tolist()))
    assert joined == {("kube-system", "Deployment", "coredns"), ("ingress-nginx", "Deployment", "ingress-nginx-controller"),
                      ("local-path-storage", "Deployment", "local-path-provisioner"), ("energy", "Job", "collect-snapshot")}
    assert not dataset.duplicated(["window_start", "namespace", "pod"]).any()

    output = invoke("fit", "--dataset", str(dataset_path), "--out", str(model_path), "--no-progress")
    assert "leave-one-group-out (3 folds)" in output and "prototype: " in output
    card = json.loads((tmp_path / "model.card.json").read_text())
    assert re.fullmatch(r"knn-\d{14}-[0-9a-f]{8}", card["model_id"])
    # coredns (2 pods), ingress-nginx-controller, local-path-provisioner; collect-snapshot has too few windows with energy.
    assert card["data"]["workloads"] == 3 and card["data"]["pods"] == 4 and card["data"]["excluded_pods"] == 1
    assert card["model"]["interval"]["log_offsets_p10_p90"] is not None
    assert any("too few for the conformal finite-sample guarantee" in w for w in card["warnings"])
    assert {m["method"].split(":")[0] for m in card["cross_validation"]["metrics"]} >= {
        "served", "prior ccf-prior-v1 (first shipped)", "prior ccf-prior-v2 (CCF's 50% CPU utilisation)",
        "prior ccf-prior-v3 (embedded)", "constant", "prototype"}
    assert set(card["libraries"]) >= {"python", "numpy", "scikit-learn", "pandas"}
    assert card["artifact"]["sha256"] in output
    assert "## Grouped cross-validation" in (tmp_path / "model.card.md").read_text()

    # evaluate through `python -m trainer.cli`, the module's own entry point.
    completed = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "evaluate", "--model", str(model_path), "--dataset", str(dataset_path),
         "--out-dir", str(tmp_path / "evaluation"), "--model-sha256", card["artifact"]["sha256"]],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert completed.returncode == 0, completed.stderr
    assert "in-sample" in completed.stdout
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["in_sample"] and report["metrics"][0]["targets"] == 3
    for name in ("predicted_vs_measured.png", "residuals.png"):
        assert (tmp_path / "evaluation" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model = load_model(model_path, expected_sha256=card["artifact"]["sha256"])
    assert model.model_id == card["model_id"]
    coredns = next(r for r in read_requests(requests_path) if (r.workload_kind, r.workload_name) == ("Deployment", "coredns"))
    prediction = model.predict([coredns])[0]
    assert prediction.basis == "model" and prediction.model_id == card["model_id"]
    # On these three workloads the embedded prior is closer out of fold than any fitted candidate
    # (bench/README.md, `seed, strict join`), so it serves, and the model's point is the prior's.
    assert card["cross_validation"]["versus_priors"]["served"].startswith("served: embedded prior")
    assert prediction.power_watts == pytest.approx(PriorPredictor().predict_one(coredns).power_watts, rel=1e-6)
    measured = pd.read_parquet(dataset_path).query("workload_name == 'coredns' and energy_joules > 0")["power_watts"]
    assert prediction.power_watts_p10 < measured.groupby(dataset["pod"]).mean().mean() < prediction.power_watts_p90
    assert prediction.power_watts_p10 <= prediction.power_watts <= prediction.power_watts_p90


def test_collect_command_reads_the_recorded_api_through_a_kubeconfig(tmp_path: Path) -> None:
    lists, _ = load_recorded()
    with RecordedKubeApi(lists) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        result = CliRunner().invoke(train, ["collect", "--kubeconfig", str(kubeconfig), "--out", str(tmp_path / "r.ndjson"),
                                            "--report", str(tmp_path / "report.json"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "collected 15 requests (8 controller-owned)" in result.output
    assert "not readable: shop/Deployment/broken: spec.template.spec.containers[0].resources.requests.cpu" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["failures"] == 1
    assert len(read_requests(tmp_path / "r.ndjson")) == 15


@pytest.mark.prometheus
def test_run_chains_labels_dataset_fit_with_collected_specs(kepler_prometheus: KeplerPrometheus, tmp_path: Path) -> None:
    """Kepler 0.10 data and specs collected from the recorded API: the Deployment `web` and the
    bare Pod `web` are different workloads; each pod joins its owner's spec."""
    lists, _ = load_recorded()
    pods = kepler_prometheus.pods
    with RecordedKubeApi(lists) as api:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        invoke("collect", "--kubeconfig", kubeconfig, "--out", str(tmp_path / "requests.ndjson"), "--no-progress")
        output = invoke("run", "--prometheus", kepler_prometheus.url, "--start", str(pods.start_seconds),
                        "--end", str(pods.end_seconds), "--requests", str(tmp_path / "requests.ndjson"),
                        "--workdir", str(tmp_path / "work"), "--min-active-windows", "1", "--no-progress",
                        "--kube-owner-fallback", "--kubeconfig", kubeconfig)
    assert "owner fallback: 1 Kubernetes API reads" in output  # debug-shell, unknown to kube-state-metrics
    assert "leave-one-group-out (4 folds)" in output
    dataset = read_dataset(tmp_path / "work" / "dataset.parquet")
    owners = dict(zip(dataset["pod"], zip(dataset["workload_kind"], dataset["workload_name"], dataset["spec_hash"])))
    requests = {(r.namespace, r.workload_kind, r.workload_name): r for r in read_requests(tmp_path / "requests.ndjson")}
    assert owners["web-5f7d8c9b6d-abcde"] == ("Deployment", "web", spec_hash(requests[("shop", "Deployment", "web")]))
    assert owners["nightly-report-28930000-xk2p9"][:2] == ("CronJob", "nightly-report")
    assert owners["debug-shell"][:2] == ("Pod", "debug-shell")
    assert owners["pg-0"][:2] == ("StatefulSet", "pg")
    assert len(dataset) == len(dataset.drop_duplicates(["window_start", "namespace", "pod"]))
    model = load_model(tmp_path / "work" / "model.joblib")
    assert model.predict([requests[("db", "StatefulSet", "pg")]])[0].basis == "model"


def test_cli_usage_errors_are_reported_not_raised(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    result = CliRunner().invoke(train, ["collect", "--kubeconfig", str(missing), "--no-progress"])
    assert result.exit_code == 1 and "cannot configure the Kubernetes client" in result.output
    result = CliRunner().invoke(train, ["fit", "--dataset", str(tmp_path / "missing.parquet")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(train, ["labels", "--prometheus", "http://127.0.0.1:9", "--start", "yesterday",
                                        "--end", "now", "--no-progress"])
    assert result.exit_code == 2 and "not a time" in result.output
    completed = subprocess.run([sys.executable, "-m", "trainer.cli", "--help"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 0 and all(c in completed.stdout for c in ("collect", "labels", "dataset", "fit", "evaluate", "run"))
