"""Benchmark 4, accuracy: grouped cross-validation of the served model against the priors, gradient-
boosted trees, the prototype and a constant, on every evaluation set, with interval coverage and
the error of namespace totals.

    python -m bench.accuracy [--sets mlenergy,seed,simulated] [--quick] [--from DIR] [--draws N]

Evaluation sets:

* `mlenergy`: real GPU-board power of vLLM serving (../shared/data/mlenergy: 897 Deployments,
  7 model families), through `train dataset --measurements`'s own code; folds grouped by model
  family, so every family is predicted by a model that never saw it, and again by GPU product, so
  every product is predicted by a model that never saw it.
* `seed`: the seed's real Kepler measurements (../shared/data/seed-kepler), strict join and the
  pod-spec stand-in (`trainer.seed_report`), where only a few workloads join, and the tables say
  so; joined to the specs the public charts of its ~30 add-ons deploy (bench/data/cluster-addons);
  and trained on one of its two clusters (6 h file) to predict the other's (1 h file) add-ons.
* `simulated`: the simulated cluster below.

For the simulated cluster the truth is `bench.power_model`, the simulator's made-up power function:
these numbers say how well the trainer recovers that function from Kepler counters in Prometheus,
not how well the model does on a real cluster.

The dataset is the trainer's own (`labels` -> `dataset` on the simulated cluster, made by
`bench.trainer_scale`; `--from` reuses its `--keep` directory, otherwise it simulates 200
workloads x 7 days itself; `--draws N` simulates N clusters from N seeds, the first the usual one,
and adds a table of the served model's scores on each draw: one draw's median APE moves by a
point or two with the draw, so a target is met reliably only when it is met on every draw). The comparison is `trainer.crossval.compare_methods`, the code
`energetiscope train fit` runs: k chosen by GroupKFold over workloads, the served KNN
(conformal p10/p90, prior beyond the trust radius), the KNN without trust radius, the research
prototype's cosine 5-NN on the spec text (TF-IDF; SBERT when installed and asked for), the
prior and the mean. Two reference rows come from the simulator, scored with the same
`trainer.metrics.score` on the same targets:

* `truth of the spec`: the power function with the profile's utilisation but without the
  workload factor: the best any spec-only model can do (the workload factor is not in the spec).
* `truth of the workload`: the workload's own mean power: what is left is measurement noise of
  the targets (per-window noise averaged over a week), so it is near 0.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from bench import power_model
from bench.results import RunRecord, cell, markdown_table
from bench.trainer_scale import SIMULATION_SEED, run_size
from trainer.baselines import from_pod_predictions
from trainer.collect import read_requests
from trainer.run_dataset import build_run_dataset, write_run_dataset
from trainer.run_fit import RunTargets, compare_runs, read_run_targets
from trainer.runs import read_runs
from webhook.model.artifact import TrainedModel
from webhook.model.runs import Spread, capped_run_seconds
from webhook.model.schema import InferenceRequest, workload_pods
from webhook.model.prior import PRIOR_MODEL_ID, PriorPredictor, shipped_priors
from trainer.crossval import NotEnoughWorkloads, best_knn_of, compare_methods, describe_params, fit_pipeline, params_json
from trainer.dataset import build_dataset, read_dataset
from trainer.measurements import build_measurement_dataset, check_measurements, read_measurement_table, read_specs
from trainer.metrics import MethodMetrics, score
from trainer.seed_report import SEED_LABEL_FILES, SEED_REQUESTS_FILE, seed_labels_frame
from trainer.targets import TrainingTable, build_targets

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLUSTER_ADDON_MANIFESTS = Path(__file__).resolve().parent / "data" / "cluster-addons" / "manifests.yaml"
SETS = ("mlenergy", "seed", "simulated")

DEFAULT_WORKLOADS, DEFAULT_DAYS = 200, 7.0
QUICK_WORKLOADS, QUICK_DAYS = 50, 2.0


DATASET_FILE = "dataset.parquet"
RUNS_FILE = "runs.parquet"
REQUESTS_FILE = "requests.ndjson"
# In-process like `train fit`; the same limit as bench.trainer_scale's steps, so that a dataset
# too large for the machine fails here with MemoryError instead of waking the OOM killer.
ADDRESS_SPACE_LIMIT_GIB = 16


# What identifies a workload rather than says what it runs: left out when asking whether two
# targets have the same spec.
IDENTITY_FIELDS = {"namespace", "workload_name", "labels", "annotations"}


def twin_references(table: TrainingTable, served_watts: np.ndarray) -> list[MethodMetrics]:
    """How far measurement noise alone puts a spec from itself: on the targets whose spec (less its
    names and labels) another target shares, each predicted by the mean power of its twins, beside
    the served model's out-of-fold error on the same targets. (ML.ENERGY's twins are the same
    server, GPUs and arguments run on another task, which no manifest states.) None without twins."""
    specs = pd.Series([r.model_dump_json(exclude=IDENTITY_FIELDS) for r in table.requests])
    count = specs.map(specs.value_counts()).to_numpy()
    twinned = count > 1
    if twinned.sum() < 2:
        return []
    power = pd.Series(table.power_watts)
    others_mean = (power.groupby(specs).transform("sum") - power) / np.maximum(count - 1, 1)
    subset = table.subset(twinned)
    rows = f"{int(twinned.sum())} targets sharing their spec with another"
    return [score(f"reference: the mean of the same spec's other measurements ({rows})", subset,
                  others_mean.to_numpy()[twinned]),
            score(f"served, on the same {int(twinned.sum())} targets", subset, served_watts[twinned])]


def compared(name: str, table: TrainingTable, text_embedding: str) -> dict[str, Any]:
    """The trainer's own comparison (`train fit` runs it) on one evaluation set, with the noise
    between twin specs where it has any (`twin_references`)."""
    started = time.perf_counter()
    try:
        comparison = compare_methods(table, text_embedding=text_embedding)
    except NotEnoughWorkloads as exc:
        return {"directory": name, "skipped": str(exc), "targets": len(table.requests)}
    references = twin_references(table, comparison.out_of_fold["served"].power_watts)
    return {
        "directory": name,
        "scheme": comparison.scheme,
        "chosen": params_json(comparison.chosen),
        "chosen_description": describe_params(comparison.chosen),
        "grid": [{"candidate": describe_params(p.params), "mean_abs_log_error": round(p.mean_abs_log_error, 4)}
                 for p in comparison.grid],
        "compare_seconds": round(time.perf_counter() - started, 1),
        "metrics": [m.to_dict() for m in comparison.metrics + references],
    }


def evaluate_mlenergy(data: Path, text_embedding: str) -> list[dict[str, Any]]:
    """Two groupings of the same rows. By model family (the file's own `group`): every family is
    predicted by a model that never saw it. By GPU product (the file's `gpu_product` column): every
    product (A100, H100, B200) is predicted from the other two, so the model must carry what it learnt
    to a GPU it has no measurement of, through the prior's product table."""
    checked = check_measurements(read_measurement_table(data / "measurements.csv"))
    dataset, _ = build_measurement_dataset(checked, read_specs([data / "manifests.yaml"]).requests)
    products = pd.read_csv(data / "measurements.csv", usecols=["workload_name", "gpu_product"])
    by_product = dataset.assign(group=dataset["workload_name"].map(
        products.set_index("workload_name")["gpu_product"]).astype("str"))
    return [{**compared(name, build_targets(frame), text_embedding), "dataset_file": "measurements.csv + manifests.yaml"}
            for name, frame in (("mlenergy (grouped by model family)", dataset),
                                ("mlenergy (grouped by GPU product)", by_product))]


def evaluate_seed(data: Path, text_embedding: str) -> list[dict[str, Any]]:
    """The seed's Kepler measurements four ways: joined strictly to the seed's own specs, with the
    pod-spec stand-in, joined to the specs the add-ons' public charts deploy
    (`bench/data/cluster-addons`: ~30 common cluster services, the set issue 12 measured the prior
    on), and trained on one of its clusters to predict the other (`evaluate_across_clusters`)."""
    cluster_labels = [seed_labels_frame(data / name) for name in SEED_LABEL_FILES]
    labels = pd.concat(cluster_labels, ignore_index=True)
    own = read_requests(data / SEED_REQUESTS_FILE)
    charts = read_specs([CLUSTER_ADDON_MANIFESTS]).requests
    results = []
    for requests, fallback, name, source in ((own, False, "seed, strict join", "seed-kepler"),
                                             (own, True, "seed, pod-spec stand-in", "seed-kepler"),
                                             (charts, False, "seed, public chart specs", "seed-kepler + bench/data/cluster-addons")):
        dataset, _ = build_dataset(labels, requests, pod_spec_fallback=fallback)
        results.append({**compared(name, build_targets(dataset), text_embedding), "dataset_file": source})
    results.append(evaluate_across_clusters(*cluster_labels, charts, text_embedding))
    return results


def evaluate_across_clusters(training_cluster: pd.DataFrame, other_cluster: pd.DataFrame, charts: list[InferenceRequest],
                             text_embedding: str) -> dict[str, Any]:
    """Trained on one real cluster, predicting another: the seed's 6-hour labels (`training_cluster`,
    a bare-metal cluster) joined to the add-ons' chart specs train `train fit`'s choice and the best
    KNN of each target; they predict the 1-hour labels' workloads (`other_cluster`, a kind cluster,
    another day) whose specs the same charts give: the kube-prometheus-stack release `prometheus`,
    installed there in namespace `monitoring`, and the kube-system, ingress-nginx and kepler
    add-ons. Grouped CV on one cluster asks how a model does on software it never saw; this asks
    how it does on software it saw running elsewhere, which is what a cluster's history mostly
    offers a new deploy."""
    train_dataset, _ = build_dataset(training_cluster, charts)
    train_table = build_targets(train_dataset)
    comparison = compare_methods(train_table, text_embedding=text_embedding)
    elsewhere = [r.model_copy(update={"namespace": "monitoring"}) for r in charts if r.namespace == "prometheus"]
    elsewhere += [r for r in charts if r.namespace in ("kube-system", "ingress-nginx", "kepler")]
    test_dataset, _ = build_dataset(other_cluster, elsewhere)
    test_table = build_targets(test_dataset)
    kinds = {"served": comparison.chosen}
    for target in ("correction", "log_power"):
        best = comparison.grid[best_knn_of(comparison.grid, target)].params
        kinds[describe_params(best)] = best
    metrics = []
    for name, params in kinds.items():
        predicted = from_pod_predictions(TrainedModel(fit_pipeline(params, train_table), "bench").predict(test_table.requests))
        label = f"served: {describe_params(params)}" if name == "served" else name
        metrics.append(score(label, test_table, predicted.power_watts, predicted.p10_watts, predicted.p90_watts))
    for predictor, why in shipped_priors():
        predicted = from_pod_predictions(predictor.predict(test_table.requests))
        metrics.append(score(f"prior {predictor.model_id} ({why})", test_table, predicted.power_watts))
    constant = float(np.exp(np.mean(np.log(train_table.power_watts))))
    metrics.append(score("constant: mean of log power of the training cluster", test_table,
                         np.full(len(test_table.requests), constant)))
    return {"directory": "seed, trained on one cluster, predicting another", "dataset_file": "seed-kepler 6 h -> 1 h + bench/data/cluster-addons",
            "scheme": f"trained on {len(train_table.requests)} workloads of the 6-hour cluster, tested on "
                      f"{len(test_table.requests)} of the 1-hour cluster", "chosen": params_json(comparison.chosen),
            "chosen_description": describe_params(comparison.chosen), "metrics": [m.to_dict() for m in metrics]}


def evaluate(directory: Path, text_embedding: str, seed: int | None = None) -> dict[str, Any]:
    source = directory / DATASET_FILE
    dataset = read_dataset(source, text_as_categories=True)  # as `train fit` reads it
    table = build_targets(dataset)
    started = time.perf_counter()
    comparison = compare_methods(table, text_embedding=text_embedding)
    compare_seconds = time.perf_counter() - started
    truth = {(t["namespace"], t["workload_kind"], t["workload_name"]): t
             for t in json.loads((directory / "truth.json").read_text())}
    keys = list(zip(table.frame["namespace"], table.frame["workload_kind"], table.frame["workload_name"]))
    spec_truth = np.array([truth[k]["spec_power_watts"] for k in keys])
    workload_truth = np.array([truth[k]["mean_power_watts"] for k in keys])
    references = [
        score("simulator: truth of the spec (no workload factor)", table, spec_truth),
        score("simulator: truth of the workload (its own mean power)", table, workload_truth),
    ]
    result = {
        "directory": directory.name,
        **({} if seed is None else {"simulation_seed": seed}),
        "dataset_file": source.name,
        "scheme": comparison.scheme,
        "chosen": params_json(comparison.chosen),
        "chosen_description": describe_params(comparison.chosen),
        "grid": [{"candidate": describe_params(p.params), "mean_abs_log_error": round(p.mean_abs_log_error, 4)}
                 for p in comparison.grid],
        "compare_seconds": round(compare_seconds, 1),
        "metrics": [m.to_dict() for m in comparison.metrics + references],
        "workload_factor_sigma": power_model.WORKLOAD_FACTOR_SIGMA,
        "irreducible_mean_abs_log_error": round(power_model.WORKLOAD_FACTOR_SIGMA * np.sqrt(2 / np.pi), 3),
    }
    runs_path = directory / RUNS_FILE
    if runs_path.exists():
        pod_model = OutOfFoldPods(dict(zip(keys, comparison.out_of_fold["served"].power_watts)),
                                  TrainedModel(fit_pipeline(comparison.chosen, table), "bench"))
        result["runs"] = evaluate_runs(runs_path, directory / REQUESTS_FILE, pod_model, truth)
    return result


@dataclass(frozen=True)
class OutOfFoldPods:
    """The served pod model's out-of-fold power of each workload, as a predictor: energy per run
    is scored with a pod power that never saw the run's workload (a pod model fitted on every
    workload would score the run model's energy with power it had learned from those very pods).
    A workload the pod dataset lacks (too few windows to be a target) is predicted by the model
    fitted on every target, which never saw it either."""

    power_watts: dict[tuple[str, str, str], float]
    unseen: TrainedModel

    def predict(self, requests: list[InferenceRequest]) -> list[SimpleNamespace]:
        keys = [(r.namespace, r.workload_kind, r.workload_name) for r in requests]
        unseen = [r for r, key in zip(requests, keys) if key not in self.power_watts]
        fallback = iter(self.unseen.predict(unseen)) if unseen else iter(())
        return [SimpleNamespace(power_watts=self.power_watts[key]) if key in self.power_watts
                else SimpleNamespace(power_watts=next(fallback).power_watts) for key in keys]


def evaluate_runs(runs_path: Path, requests_path: Path, pod_model: Any,
                  truth: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any]:
    """Energy per run on the simulated Jobs and CronJobs: `train dataset --runs`'s join, then the run
    model's comparison (`trainer.run_fit`, grouped by Job template), as `train fit --runs-dataset` runs
    it, with the simulator's formula as a reference row: the stated work's pod time without the
    workload's own spread (`bench.cluster_sim.spec_pod_minutes`) x the run's waves, capped at its
    deadline, and for energy x the spec's true power x the pods at once. It is not a floor: it
    leaves out what retries, a wave's slowest pod and pods that end early do to a run, which a
    model learns from the runs (the served run model beats it)."""
    frame, _ = build_run_dataset(read_runs(runs_path), read_requests(requests_path))
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-runs-") as tmp:
        path = write_run_dataset(frame, Path(tmp) / "runs_dataset.parquet")
        table = read_run_targets(path)
    try:
        comparison = compare_runs(table, pod_model, PriorPredictor())
    except NotEnoughWorkloads as exc:
        return {"skipped": str(exc), "runs": len(table.requests)}
    result = {**comparison.to_dict(), "runs": len(table.requests), "templates": int(len(np.unique(table.groups)))}
    of_run = [truth[(r.namespace, r.workload_kind, r.workload_name)] for r in table.requests]
    spec_seconds = np.array([capped_run_seconds(r, Spread(*[t["spec_pod_seconds"]] * 3)).p50
                             for r, t in zip(table.requests, of_run)])
    reference = "simulator: the spec's stated work and true power (no retries, no workload spread)"
    result["run_seconds"].append(score(reference, table, spec_seconds).to_dict())
    joules = table.frame["energy_joules_per_run"].to_numpy(dtype=np.float64)
    complete = np.isfinite(joules) & (joules > 0)
    if complete.any():
        spec_joules = np.array([t["spec_power_watts"] * workload_pods(r) for r, t in zip(table.requests, of_run)]) * spec_seconds
        measured = RunTargets(table.frame[complete].reset_index(drop=True),
                              [r for r, keep in zip(table.requests, complete) if keep], joules[complete], table.groups[complete])
        result["energy_joules_per_run"].append(score(reference, measured, spec_joules[complete]).to_dict())
    return result


def table_of(result: dict[str, Any]) -> str:
    header = ["method", "MAE W", "median APE", "p10-p90 coverage", "mean abs log error", "namespace total error",
              "prior fallback", "targets"]
    rows = []
    for m in result["metrics"]:
        metric = MethodMetrics(**m)
        rows.append([metric.method, cell(metric.mae_watts, 2), f"{metric.median_ape_percent:.1f}%",
                     "-" if metric.coverage_p10_p90 is None else f"{100 * metric.coverage_p10_p90:.0f}%",
                     cell(metric.mean_abs_log_error, 3),
                     "-" if metric.namespace_total_error_percent is None else f"{metric.namespace_total_error_percent:.1f}%",
                     "-" if metric.prior_fallback_share is None else f"{100 * metric.prior_fallback_share:.0f}%",
                     cell(metric.targets)])
    return markdown_table(header, rows)


def _metric(metrics: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    return next(m for m in metrics if m["method"].startswith(prefix))


def draws_table(evaluations: list[dict[str, Any]]) -> str:
    """One row per simulated draw: the served model against the embedded prior and a constant, and
    energy per run; then the worst draw, which is what "met reliably" is judged by."""
    header = ["seed", "served median APE", "served MAE W", "prior MAE W", "served / prior / constant mean abs log error",
              "energy per run median APE", "energy per run mean abs log error", "targets / runs"]
    rows, apes, run_apes = [], [], []
    for evaluation in evaluations:
        if "simulation_seed" not in evaluation or "skipped" in evaluation:
            continue
        metrics = evaluation["metrics"]
        served, prior, constant = (_metric(metrics, p) for p in ("served", f"prior {PRIOR_MODEL_ID}", "constant"))
        runs = evaluation.get("runs") or {}
        run_served = _metric(runs["energy_joules_per_run"], "served") if "energy_joules_per_run" in runs else None
        apes.append(served["median_ape_percent"])
        if run_served:
            run_apes.append(run_served["median_ape_percent"])
        rows.append([str(evaluation["simulation_seed"]), f"{served['median_ape_percent']:.1f}%", cell(served["mae_watts"], 2),
                     cell(prior["mae_watts"], 2),
                     " / ".join(cell(m["mean_abs_log_error"], 3) for m in (served, prior, constant)),
                     "-" if run_served is None else f"{run_served['median_ape_percent']:.1f}%",
                     "-" if run_served is None else cell(run_served["mean_abs_log_error"], 3),
                     f"{served['targets']} / {runs.get('runs', '-')}"])
    if apes:
        rows.append(["worst draw", f"{max(apes):.1f}%", "", "", "", f"{max(run_apes):.1f}%" if run_apes else "-", "", ""])
        rows.append(["median draw", f"{float(np.median(apes)):.1f}%", "", "", "",
                     f"{float(np.median(run_apes)):.1f}%" if run_apes else "-", "", ""])
    return markdown_table(header, rows)


def print_table(result: dict[str, Any]) -> None:
    if "skipped" in result:
        print(f"{result['directory']}: not compared: {result['skipped']}")
        return
    print(f"{result['directory']} ({result['dataset_file']}): {result['scheme']}, served {result['chosen_description']}")
    print(table_of(result))
    runs = result.get("runs")
    if runs and "skipped" not in runs:
        print(f"runs: {runs['runs']} of {runs['templates']} Job templates, {runs['scheme']}, served {runs['chosen_description']}")
        print(table_of({"metrics": runs["run_seconds"]}).replace("MAE W", "MAE s"))
        print(table_of({"metrics": runs["energy_joules_per_run"]}).replace("MAE W", "MAE J"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"simulate {QUICK_WORKLOADS} workloads x {QUICK_DAYS:g} days "
                        "(with --from: only file the result as a quick one)")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="a `bench.trainer_scale --keep` directory: evaluate every size kept there")
    parser.add_argument("--text-embedding", choices=["tfidf", "sbert"], default="tfidf",
                        help="the prototype baseline's embedding (sbert needs the sbert extra)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA, help="../shared/data beside the repository")
    parser.add_argument("--draws", type=int, default=1,
                        help="simulate this many clusters (seeds counted up from the usual one) and tabulate each")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.draws < 1 or (args.draws > 1 and args.source is not None):
        parser.error("--draws: a count >= 1, and not with --from (a kept directory is one draw)")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := set(sets) - set(SETS):
        parser.error(f"--sets: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SETS)}")
    limit = ADDRESS_SPACE_LIMIT_GIB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    record = RunRecord("accuracy_draws" if args.draws > 1 else "accuracy", quick=args.quick)
    evaluations = []
    if "mlenergy" in sets:
        for evaluation in evaluate_mlenergy(args.shared_data / "mlenergy", args.text_embedding):
            print_table(evaluation)
            evaluations.append(evaluation)
    if "seed" in sets:
        for evaluation in evaluate_seed(args.shared_data / "seed-kepler", args.text_embedding):
            print_table(evaluation)
            evaluations.append(evaluation)
    with tempfile.TemporaryDirectory(prefix="energetiscope-bench-") as tmp:
        if "simulated" not in sets:
            pass
        elif args.source is not None:
            directories = sorted(d for d in args.source.iterdir() if (d / DATASET_FILE).exists())
            if not directories:
                raise SystemExit(f"no dataset.parquet under {args.source}: run bench.trainer_scale --keep {args.source}")
            for directory in directories:
                evaluations.append(evaluate(directory, args.text_embedding))
                print_table(evaluations[-1])
        else:
            workloads, days = (QUICK_WORKLOADS, QUICK_DAYS) if args.quick else (DEFAULT_WORKLOADS, DEFAULT_DAYS)
            for seed in range(SIMULATION_SEED, SIMULATION_SEED + args.draws):
                directory = Path(tmp) / f"{workloads}x{days:g}d-kepler-0.10-seed{seed}"
                print(f"simulating {workloads} workloads x {days:g} days (seed {seed}) and running labels, dataset, fit ...",
                      flush=True)
                run_size(workloads, days, "kepler-0.10", directory, seed)
                evaluations.append(evaluate(directory, args.text_embedding, seed))
                print_table(evaluations[-1])
                shutil.rmtree(directory)  # a draw's Prometheus TSDB and label files: ~0.1 GB each
    if args.draws > 1:
        print(draws_table(evaluations))
    path = record.write({"mode": "quick" if args.quick else "default", "text_embedding": args.text_embedding,
                         "truth": "bench.power_model (simulated; not a measurement)", "evaluations": evaluations},
                        args.json)
    print(f"-> {path.name}")


if __name__ == "__main__":
    main()
