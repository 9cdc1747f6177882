"""The run model: a Job run's wall time learned from runs, chosen by grouped CV, carried in the artifact
and served as the webhook's per-run figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.run_fit import RunTargets, compare_runs, fit_runs
from webhook.model.artifact import TrainedModel, build_pipeline, load_model, save_model
from webhook.model.prior import PriorPredictor
from webhook.model.runs import predict_runs
from webhook.model.schema import ContainerSpec, InferenceRequest

# A made-up batch world: a run lasts (completions / parallelism) x the per-pod minutes of its image.
MINUTES_PER_POD = {"registry.example.com/etl/export": 4.0, "registry.example.com/ml/train": 40.0,
                   "registry.example.com/ci/builder": 12.0}


def _job(image: str, completions: int, parallelism: int, name: str, deadline: int | None = None) -> InferenceRequest:
    return InferenceRequest(workload_kind="Job", namespace="batch", workload_name=name, completions=completions,
                            parallelism=parallelism, active_deadline_seconds=deadline,
                            containers=[ContainerSpec(name="main", image=image, req_cpu_mcpu=1000, req_mem_mib=1024)])


def _runs(count: int, seed: int = 3) -> RunTargets:
    rng = np.random.default_rng(seed)
    requests, seconds, groups, energies = [], [], [], []
    images = list(MINUTES_PER_POD)
    for i in range(count):
        image = images[i % len(images)]
        completions = int(rng.choice([1, 2, 4, 8]))
        parallelism = int(rng.choice([1, 2]))
        template = f"{image.rsplit('/', 1)[-1]}-{completions}-{parallelism}"
        requests.append(_job(image, completions, parallelism, template, deadline=7200 if i % 2 else None))
        run_seconds = MINUTES_PER_POD[image] * 60 * math.ceil(completions / parallelism) * math.exp(rng.normal(0, 0.1))
        seconds.append(run_seconds)
        groups.append(template)
        energies.append(parallelism * 3.0 * run_seconds)  # 3 W a pod
    frame = pd.DataFrame({"namespace": "batch", "workload_kind": "Job", "workload_name": groups, "pods": 1,
                          "energy_joules_per_run": energies})
    return RunTargets(frame, requests, np.asarray(seconds), np.asarray(groups))


def _runs_with_stated_work(count: int, seed: int = 5) -> RunTargets:
    """One image; each template's arguments state its work (`--partitions N`), and a run takes
    90 s a partition: only the argument tells one template's length from another's."""
    rng = np.random.default_rng(seed)
    requests, seconds, groups = [], [], []
    for i in range(count):
        partitions = int(rng.choice([2, 4, 8, 16, 32, 64]))
        template = f"export-{i}"
        requests.append(InferenceRequest(
            workload_kind="Job", namespace="batch", workload_name=template,
            containers=[ContainerSpec(name="main", image="registry.example.com/etl/export", req_cpu_mcpu=1000,
                                      req_mem_mib=1024, command=["python", "-m", "etl.run"],
                                      args=["--partitions", str(partitions), "--port", "8080"])]))
        seconds.append(90.0 * partitions * math.exp(rng.normal(0, 0.1)))
        groups.append(template)
    frame = pd.DataFrame({"namespace": "batch", "workload_kind": "Job", "workload_name": groups, "pods": 1,
                          "energy_joules_per_run": 3.0 * np.asarray(seconds)})
    return RunTargets(frame, requests, np.asarray(seconds), np.asarray(groups))


def test_the_work_a_templates_arguments_state_gives_its_run_time() -> None:
    from webhook.model.features import argument_numbers

    table = _runs_with_stated_work(90)
    slots = argument_numbers(table.requests[0])
    assert sum(slots) == float(table.requests[0].containers[0].args[1]) + 8080.0  # both flags' numbers, in their slots
    comparison = compare_runs(table, PriorPredictor(), PriorPredictor(), k_grid=(3, 5, 8))
    served, constant = comparison.seconds[0], comparison.seconds[1]
    # Every template is new to the model that predicts it (folds by template): the argument carries it.
    assert served.median_ape_percent < 25 and constant.median_ape_percent > 60, (served, constant)


def _runs_told_apart_by_words(count: int, seed: int = 11) -> RunTargets:
    """Three commands of one image, 2, 20 and 200 minutes a run, each template with a kind, a
    priority class and a runtime class drawn at random: the classes say nothing of the length."""
    rng = np.random.default_rng(seed)
    commands = {("python", "-m", "etl.run"): 2.0, ("make", "test"): 20.0, ("bazel", "build"): 200.0}
    requests, seconds, groups = [], [], []
    for i in range(count):
        command, minutes = list(commands.items())[i % len(commands)]
        template = f"batch-{i}"
        requests.append(InferenceRequest(
            workload_kind=str(rng.choice(["Job", "CronJob"])), namespace="batch", workload_name=template,
            priority_class=str(rng.choice(["low", "high"])), runtime_class=str(rng.choice(["runc", "gvisor"])),
            containers=[ContainerSpec(name="main", image="registry.example.com/ci/runner", req_cpu_mcpu=1000,
                                      req_mem_mib=1024, command=list(command))]))
        seconds.append(minutes * 60 * math.exp(rng.normal(0, 0.1)))
        groups.append(template)
    frame = pd.DataFrame({"namespace": "batch", "workload_kind": "Job", "workload_name": groups, "pods": 1,
                          "energy_joules_per_run": 3.0 * np.asarray(seconds)})
    return RunTargets(frame, requests, np.asarray(seconds), np.asarray(groups))


def test_the_run_model_can_weigh_what_a_template_runs_above_its_classes() -> None:
    # Classes and words weigh alike in the encoder: three classes that differ keep a template farther
    # from its own command's templates than from another command's. The run grid weighs words up.
    comparison = compare_runs(_runs_told_apart_by_words(60), PriorPredictor(), PriorPredictor(), k_grid=(3, 5))
    chosen = comparison.chosen
    assert chosen.get("features__text_weight", 1.0) > chosen.get("features__categorical_weight", 1.0), chosen
    assert "(weights classes" in comparison.seconds[0].method
    assert comparison.seconds[0].median_ape_percent < 15, comparison.seconds[0]


def test_the_run_model_learns_run_time_from_the_spec_and_beats_the_constant() -> None:
    table = _runs(120)
    comparison = compare_runs(table, PriorPredictor(), PriorPredictor(), k_grid=(1, 3, 5))
    served, constant = comparison.seconds[0], comparison.seconds[1]
    assert served.method.startswith("served: ") and constant.method.startswith("constant")
    assert served.mean_abs_log_error < constant.mean_abs_log_error / 2
    assert served.median_ape_percent < 25
    assert served.coverage_p10_p90 is not None and 0.6 <= served.coverage_p10_p90 <= 1.0
    deadline = comparison.seconds[2]
    assert deadline.method.startswith("activeDeadlineSeconds") and deadline.targets == 60
    assert [m.method.split(":")[0] for m in comparison.energy][:2] == ["served", "constant"]
    assert comparison.energy[0].targets == 120
    # Half the runs set a deadline: the served model is scored on those same runs too, like for like.
    same_seconds = comparison.seconds[3]
    assert same_seconds.method == "served, on the 60 runs that set activeDeadlineSeconds" and same_seconds.targets == 60
    assert same_seconds.mean_abs_log_error < deadline.mean_abs_log_error
    prior_energy, same_energy = comparison.energy[2], comparison.energy[3]
    assert prior_energy.targets == same_energy.targets == 60 and same_energy.method.startswith("served, on the 60")
    assert same_energy.mae_watts < prior_energy.mae_watts


def test_the_artifact_carries_the_run_model_and_the_webhook_serves_its_run_time(tmp_path: Path) -> None:
    table = _runs(90)
    pod_requests = table.requests
    pod_pipeline = build_pipeline(n_neighbors=3).fit(pod_requests, np.full(len(pod_requests), 3.0))
    run_pipeline, section = fit_runs(table, TrainedModel(pod_pipeline, "m"), PriorPredictor(), k_grid=(1, 3))
    assert section["runs"] == 90 and "run_seconds" in section
    path = tmp_path / "model.esmodel"
    save_model(path, pod_pipeline, "with-runs", {"runs": section}, run_pipeline=run_pipeline)
    model = load_model(path)
    assert model.run_pipeline is not None
    long_job = _job("registry.example.com/ml/train", 8, 2, "new-train")
    short_job = _job("registry.example.com/etl/export", 1, 1, "new-export")
    long_seconds, short_seconds = model.predict_run_seconds(long_job), model.predict_run_seconds(short_job)
    assert long_seconds is not None and short_seconds is not None
    assert long_seconds.p50 == pytest.approx(40 * 60 * 4, rel=0.3)
    assert short_seconds.p50 == pytest.approx(4 * 60, rel=0.3)
    assert long_seconds.p10 <= long_seconds.p50 <= long_seconds.p90
    pod = model.predict([long_job])[0]
    runs = predict_runs(long_job, pod, pods=2, model=model)
    assert runs.run is not None and runs.run.bound is None and runs.run.source == "with-runs"
    assert runs.run.joules.p50 == pytest.approx(2 * pod.power_watts * long_seconds.p50)
    # Without a run model the same Job has no per-run figures (no deadline), as the prior alone.
    without = load_model(_save_plain(tmp_path, pod_pipeline))
    assert without.predict_run_seconds(long_job) is None
    assert predict_runs(long_job, pod, pods=2, model=without).run is None


def _save_plain(tmp_path: Path, pipeline) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "plain.esmodel"
    save_model(path, pipeline, "plain")
    return path


def test_a_run_never_outlasts_its_deadline() -> None:
    from webhook.model.runs import Spread, capped_run_seconds

    job = _job("registry.example.com/etl/export", completions=6, parallelism=2, name="capped", deadline=3600)
    # Three waves of 1,000 / 1,500 / 2,000 s: 3,000 s at p10, the rest stopped by the Job controller at 3,600 s.
    assert capped_run_seconds(job, Spread(1000.0, 1500.0, 2000.0)) == Spread(3000.0, 3600.0, 3600.0)
    unbounded = _job("registry.example.com/etl/export", completions=6, parallelism=2, name="free")
    assert capped_run_seconds(unbounded, Spread(1000.0, 1500.0, 2000.0)) == Spread(3000.0, 4500.0, 6000.0)


def test_a_templates_runs_are_one_training_row_at_their_geometric_mean() -> None:
    from trainer.run_fit import template_targets

    one = _job("registry.example.com/etl/export", completions=4, parallelism=2, name="a")  # 2 waves
    other = _job("registry.example.com/ml/train", completions=1, parallelism=1, name="b")
    frame = pd.DataFrame({"namespace": "batch", "workload_kind": "Job", "workload_name": ["a", "a", "b"], "pods": 1,
                          "energy_joules_per_run": 1.0})
    table = RunTargets(frame, [one, one, other], np.array([200.0, 800.0, 50.0]), np.array(["a", "a", "b"]))
    requests, wave_seconds, groups = template_targets(table)
    assert list(groups) == ["a", "b"] and requests == [one, other]
    assert wave_seconds == pytest.approx([200.0, 50.0])  # a: sqrt(100 x 400) s a wave; b: its one run


def test_run_intervals_are_calibrated_on_runs_not_on_template_means() -> None:
    from trainer.run_fit import fit_run_pipeline

    # Each template's runs spread x/÷ e^0.5 around its mean: an interval for one run must span that
    # spread, which the templates' means (the training rows) do not show.
    rng = np.random.default_rng(11)
    requests, seconds, groups = [], [], []
    for template in range(30):
        request = _job("registry.example.com/etl/export", completions=1, parallelism=1, name=f"t{template}")
        for _ in range(6):
            requests.append(request)
            seconds.append(600.0 * math.exp(rng.choice([-0.5, 0.5]) + rng.normal(0, 0.02)))
            groups.append(f"t{template}")
    frame = pd.DataFrame({"namespace": "batch", "workload_kind": "Job", "workload_name": groups, "pods": 1,
                          "energy_joules_per_run": 1.0})
    table = RunTargets(frame, requests, np.asarray(seconds), np.asarray(groups))
    low, high = fit_run_pipeline({"knn__n_neighbors": 5}, table)[-1].interval_log_offsets_
    assert low < -0.4 and high > 0.4, (low, high)


def test_the_grids_shared_encoding_gives_each_run_the_seconds_a_fitted_candidate_gives() -> None:
    from trainer.crossval import grouped_folds
    from trainer.run_fit import _out_of_fold, _points_out_of_fold, run_candidates

    # Runs of one template repeat their spec, but not always: half set a deadline (`_runs`).
    table = _runs(90)
    folds = grouped_folds(table.groups, 5, 0)
    candidates = run_candidates((1, 5), 10)
    shared = _points_out_of_fold(table, folds, candidates)
    one_by_one = np.array([_out_of_fold(table, folds, params, interval_folds=0)[:, 1] for params in candidates])
    assert np.array_equal(shared, one_by_one)
    assert len({tuple(row) for row in shared}) > 1  # the candidates differ, so the comparison says something
