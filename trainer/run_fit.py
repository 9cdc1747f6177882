"""The run model: a Job run's wall time, s, from its spec, chosen by grouped CV and compared with baselines.

A batch workload is judged by the energy of one run. The webhook's energy per run is the
workload's power x the run's wall time (`webhook.model.runs`), so what has to be learned is the
wall time; the power comes from the pod model. A run is `webhook.model.runs.run_waves` rounds of
pods (completions / parallelism, rounded up): the model learns one wave's seconds and the
webhook multiplies, which KNN alone cannot do for a template with more completions than any
it saw. The dataset is `train dataset --runs`'s (one row
per finished run, `trainer.run_dataset`): the run's spec (pod template plus completions,
parallelism, backoffLimit, activeDeadlineSeconds, completion mode) and its `run_seconds` and
`energy_joules_per_run`. The model trains on one row per Job template (its runs' typical seconds
per wave: `template_targets`) and calibrates its p10/p90 on the runs themselves; a run's predicted
wall time never exceeds its `activeDeadlineSeconds` (`webhook.model.runs.capped_run_seconds`).

Folds are grouped by the dataset's `group`, the Job template (all runs of one CronJob spec are one
group), so no run is predicted by a model that saw its template. Candidates are
`webhook.model.artifact.build_run_pipeline`'s typical wave alone (k = 0) and its k grid, with plain
or correlation-weighted columns or with local slopes over the run fields (the numbers in a
template's arguments among them) and resources, chosen by the out-of-fold mean |log error| of run seconds. Reported on the same folds, for the
run time and for the energy per run (served pod power x run time, against the measured joules of
runs whose energy is complete):

* the served run model;
* a constant: the geometric mean of the training folds' runs;
* `activeDeadlineSeconds` (x the embedded prior's power, for energy): what the webhook answers
  without a run model, an upper bound, scored on the runs whose Job sets a deadline.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainer.inputs import InputFileError, read_parquet_input
from trainer.crossval import (DEFAULT_LOGO_MAX_GROUPS, DEFAULT_MAX_SPLITS, LOCAL_MIN_K, Folds, NotEnoughWorkloads,
                              encoder_key, grouped_folds, index_mask)
from trainer.metrics import MethodMetrics, score
from webhook.model.artifact import build_run_pipeline
from webhook.model.features import numeric_columns, run_local_columns
from webhook.model.knn import COLUMN_WEIGHTINGS
from webhook.model.prediction import Predictor
from webhook.model.intervals import grouped_conformal_offsets
from webhook.model.runs import Spread, capped_run_seconds, deadline_cap_seconds, run_waves
from webhook.model.schema import InferenceRequest, workload_pods

RUN_K_GRID: tuple[int, ...] = (1, 2, 3, 5, 8, 13, 21)
# The local ridge's penalties for the run model: a run's length is close to log-linear in the work
# its arguments state and its CPU (the simulated cluster: seconds ~ partitions x request^-0.5), so
# many neighbours with a light penalty, nearly a weighted regression over the templates, do best
# there (896 runs of 30 templates, grouped CV, k=21: mean |log error| 0.237 at 0.01, 0.355 at 0.1;
# the pod model's 0.3 gave 0.407 at k=13). The pod model's penalties stay among the choices.
RUN_LOCAL_ALPHAS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
# The encoder's block weights the run model also tries, (classes, words): what a template runs
# (`python -m etl.run --partitions 32`) says more of its length than its kind does (a CronJob's
# template and a Job's running the same command were each other's neighbours only after the
# classes: one-hot kind, priority class, ...). Grouped CV of run seconds on five simulated draws
# (seeds 20251105-09, bench.accuracy --draws 5), mean |log error| as shipped -> with these: 0.219
# -> 0.219, 0.359 -> 0.343, 0.349 -> 0.346, 0.302 -> 0.276, 0.403 -> 0.326. Every draw chose
# one of these three (of classes 0.5 / 1 x words 1 / 2).
RUN_BLOCK_WEIGHTS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.5, 1.0), (0.5, 2.0))
MIN_RUNS_TO_FIT = 2


@dataclass(frozen=True)
class RunTargets:
    """Finished runs with their specs, aligned row by row; duck-types what `trainer.metrics.score`
    reads of a training table (`power_watts` is the measured quantity: seconds or joules here)."""

    frame: pd.DataFrame
    requests: list[InferenceRequest]
    power_watts: np.ndarray  # the measured values being scored
    groups: np.ndarray

    @property
    def source_rows(self) -> int:
        return len(self.requests)

    @property
    def pods(self) -> int:
        return int(self.frame["pods"].sum()) if "pods" in self.frame else len(self.requests)

    @property
    def workloads(self) -> int:
        return int(self.frame[["namespace", "workload_kind", "workload_name"]].drop_duplicates().shape[0])

    def subset(self, mask: np.ndarray) -> "RunTargets":
        return RunTargets(self.frame[mask].reset_index(drop=True), [r for r, keep in zip(self.requests, mask) if keep],
                          self.power_watts[mask], self.groups[mask])


def read_run_targets(path: Any) -> RunTargets:
    """The run dataset's finished runs with a positive wall time."""
    frame = read_parquet_input(path, "a run dataset (train dataset --runs' output)")
    missing = [c for c in ("run_seconds", "request_json", "group") if c not in frame.columns]
    if missing:
        raise InputFileError(path, "a run dataset (train dataset --runs' output)", f"it lacks columns {missing}")
    seconds = frame["run_seconds"].to_numpy(dtype=np.float64)
    frame = frame[np.isfinite(seconds) & (seconds > 0)].reset_index(drop=True)
    requests = [InferenceRequest.model_validate_json(text) for text in frame["request_json"]]
    return RunTargets(frame, requests, frame["run_seconds"].to_numpy(dtype=np.float64),
                      frame["group"].astype(str).to_numpy())


def run_candidates(k_grid: Sequence[int], largest_train: int) -> list[dict[str, Any]]:
    """The typical wave alone (no neighbours: the served model is then never worse than it out of
    fold), then the k grid with plain or correlation-weighted columns, each under every
    `RUN_BLOCK_WEIGHTS`."""
    ks = sorted({max(1, min(int(k), largest_train)) for k in k_grid})
    neighbours: list[dict[str, Any]] = [
        {"knn__n_neighbors": k, "knn__column_weighting": weighting} for weighting, k in itertools.product(COLUMN_WEIGHTINGS, ks)]
    # Local slopes over the run fields and resources (a template's arguments say how much work a
    # run is), neighbours by every column or by words and classes alone, as the pod model tries.
    for unsearched, alpha, k in itertools.product(((), numeric_columns(run_fields=True)), RUN_LOCAL_ALPHAS,
                                                  [k for k in ks if k >= LOCAL_MIN_K]):
        neighbours.append({"knn__n_neighbors": k, "knn__column_weighting": "none", "knn__local_columns": run_local_columns(),
                           "knn__unsearched_columns": unsearched, "knn__local_alpha": alpha, "knn__trust_factor": None})
    weighted = [{**params, "features__categorical_weight": categorical, "features__text_weight": text}
                for categorical, text in RUN_BLOCK_WEIGHTS for params in neighbours]
    return [{"knn__n_neighbors": 0, "knn__column_weighting": "none"}, *weighted]


def describe_run_params(params: dict[str, Any]) -> str:
    if params["knn__n_neighbors"] == 0:
        return "the typical wave (geometric mean of one wave's seconds) x the run's waves"
    weighting = ", columns weighted by correlation" if params.get("knn__column_weighting") == "correlation" else ""
    if params.get("knn__local_columns"):
        chosen_by = "words and classes" if params.get("knn__unsearched_columns") else "every column"
        weighting += (f", local slopes over the run fields and resources (ridge {params.get('knn__local_alpha', 0.3):g}), "
                      f"neighbours by {chosen_by}")
    blocks = (params.get("features__categorical_weight", 1.0), params.get("features__text_weight", 1.0))
    if blocks != (1.0, 1.0):
        weighting += " (weights classes {:g} / words {:g})".format(*blocks)
    return f"knn k={params['knn__n_neighbors']} on log seconds per wave{weighting}"


def _waves(requests: Sequence[InferenceRequest]) -> np.ndarray:
    return np.array([run_waves(r) for r in requests], dtype=np.float64)


def template_targets(table: RunTargets) -> tuple[list[InferenceRequest], np.ndarray, np.ndarray]:
    """One row per Job template (group): its spec, the geometric mean of its runs' seconds per
    wave, and the group. The runs of one CronJob share its spec; as separate rows they were each
    other's nearest neighbours, so k neighbours were mostly one other template's runs and a local
    slope had no spread in its columns to learn from (a run model of 896 runs of 30 templates:
    out-of-fold mean |log error| of run seconds 0.471 per run, 0.407 per template; bench.accuracy)."""
    groups, first, inverse = np.unique(table.groups, return_index=True, return_inverse=True)
    log_wave_seconds = np.log(table.power_watts / _waves(table.requests))
    typical = np.exp(np.bincount(inverse, log_wave_seconds) / np.bincount(inverse))
    return [table.requests[i] for i in first], typical, groups


def fit_run_pipeline(params: dict[str, Any], table: RunTargets, *, interval_folds: int = 5) -> Any:
    """Fitted on each template's typical seconds per wave (`template_targets`), its p10/p90 offsets
    calibrated on runs: split-conformal over `interval_folds` folds grouped by template, on the
    residuals of each held-out template's every run against `capped_run_seconds` of a model that did not
    see it, so the interval covers one run (its spread from retries and slow pods included), not a
    template's mean; every run weighs the same, as runs are what a user counts (`grouped_conformal_offsets`)."""
    pipeline = build_run_pipeline().set_params(**params, knn__interval_folds=0)
    requests, wave_seconds, _ = template_targets(table)
    pipeline.fit(requests, wave_seconds)
    n = len(table.requests)

    def held_out_residuals(train_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
        inner = fit_run_pipeline(params, table.subset(index_mask(n, train_index)), interval_folds=0)
        predicted = _predicted_seconds(inner, [table.requests[i] for i in test_index])[:, 1]
        return np.log(table.power_watts[test_index]) - np.log(predicted)

    offsets = grouped_conformal_offsets(table.groups, held_out_residuals, folds=interval_folds,
                                        quantiles=pipeline[-1].interval_quantiles, groups_weigh_alike=False)
    if offsets is not None:
        pipeline[-1].interval_log_offsets_ = (offsets.log_offset_p10, offsets.log_offset_p90)
    return pipeline


def _predicted_seconds(pipeline: Any, requests: list[InferenceRequest]) -> np.ndarray:
    """Per request (p10, p50, p90) run seconds as the webhook serves them (`capped_run_seconds`)."""
    detail = pipeline.steps[-1][1].predict_detail(pipeline.steps[0][1].transform(requests))
    return np.array([astuple(capped_run_seconds(r, Spread(float(low), float(mid), float(high))))
                     for r, low, mid, high in zip(requests, detail.power_watts_p10, detail.power_watts,
                                                  detail.power_watts_p90)]).reshape(len(requests), 3)


def _out_of_fold(table: RunTargets, folds: Folds, params: dict[str, Any], interval_folds: int) -> np.ndarray:
    """Per run: (p10, p50, p90) seconds from the candidate fitted on the other folds."""
    predicted = np.zeros((len(table.requests), 3))
    for train_index, test_index in folds.splits:
        pipeline = fit_run_pipeline(params, table.subset(index_mask(len(table.requests), train_index)),
                                    interval_folds=interval_folds)
        predicted[test_index] = _predicted_seconds(pipeline, [table.requests[i] for i in test_index])
    return predicted


def _points_out_of_fold(table: RunTargets, folds: Folds, params_list: Sequence[dict[str, Any]]) -> np.ndarray:
    """Per candidate and run, the run seconds (p50) `_out_of_fold` gives without intervals, with each
    fold's templates encoded once per encoder parameters rather than once per candidate (the
    encoder learns nothing from the target) and each distinct spec predicted once. At 3,289
    templates and 11,785 runs (20,000 simulated workloads x 1 day) the grid of 139 candidates took
    696.7 s one candidate and run at a time (niced, on a shared machine), 219.4 s encoding once,
    83.9 s predicting each spec once; the points are the same to the bit."""
    n = len(table.requests)
    points = np.zeros((len(params_list), n))
    waves = _waves(table.requests)
    cap = np.array([deadline_cap_seconds(r) for r in table.requests])
    # The runs of one template are one spec: each distinct spec is predicted once (3.6 runs a
    # template at 20,000 simulated workloads).
    specs = (table.frame["request_json"].to_numpy() if "request_json" in table.frame
             else np.array([r.model_dump_json() for r in table.requests], dtype=object))
    for train_index, test_index in folds.splits:
        requests, wave_seconds, _ = template_targets(table.subset(index_mask(n, train_index)))
        spec_of_run = pd.factorize(specs[test_index])[0]
        first_runs = test_index[np.unique(spec_of_run, return_index=True)[1]]
        test_requests = [table.requests[i] for i in first_runs]
        encoded: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
        for index, params in enumerate(params_list):
            pipeline = build_run_pipeline().set_params(**params, knn__interval_folds=0)
            key = encoder_key(pipeline[0])
            if key not in encoded:
                encoder = pipeline[0].fit(requests)
                encoded[key] = encoder.transform(requests), encoder.transform(test_requests)
            train_rows, test_rows = encoded[key]
            wave_p50 = pipeline[-1].fit(train_rows, wave_seconds).predict_detail(test_rows).power_watts[spec_of_run]
            # `capped_run_seconds`' p50, the same operations on arrays.
            points[index, test_index] = np.minimum(waves[test_index] * wave_p50, cap[test_index])
    return points


def _geometric_mean_out_of_fold(values: np.ndarray, folds: Folds, usable: np.ndarray) -> np.ndarray:
    predicted = np.full(len(values), np.nan)
    for train_index, test_index in folds.splits:
        train_values = values[train_index][usable[train_index]]
        if train_values.size:
            predicted[test_index] = math.exp(float(np.mean(np.log(train_values))))
    return predicted


@dataclass
class RunComparison:
    scheme: str
    chosen: dict[str, Any]
    grid: list[dict[str, Any]]
    seconds: list[MethodMetrics]
    energy: list[MethodMetrics]

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "chosen": self.chosen, "chosen_description": describe_run_params(self.chosen),
                "selection": "out-of-fold mean absolute error of log run seconds (not nested)",
                "grid": self.grid, "run_seconds": [m.to_dict() for m in self.seconds],
                "energy_joules_per_run": [m.to_dict() for m in self.energy]}


def _pod_watts(predictor: Predictor, table: RunTargets) -> np.ndarray:
    """Each run's workload power, W: pods running at once x one pod's power."""
    predictions = predictor.predict(table.requests)
    return np.array([workload_pods(r) * p.power_watts for r, p in zip(table.requests, predictions)])


def compare_runs(table: RunTargets, pod_model: Predictor, prior: Predictor, *, k_grid: Sequence[int] = RUN_K_GRID,
                 max_splits: int = DEFAULT_MAX_SPLITS, logo_max_groups: int = DEFAULT_LOGO_MAX_GROUPS) -> RunComparison:
    folds = grouped_folds(table.groups, max_splits, logo_max_groups)
    smallest_train = min(len(np.unique(table.groups[train])) for train, _ in folds.splits)  # templates
    log_seconds = np.log(table.power_watts)
    candidates = run_candidates(k_grid, smallest_train)
    grid = [{"params": params, "description": describe_run_params(params),
             "mean_abs_log_error": float(np.mean(np.abs(np.log(point) - log_seconds)))}
            for params, point in zip(candidates, _points_out_of_fold(table, folds, candidates))]
    best = min(range(len(grid)), key=lambda i: (round(grid[i]["mean_abs_log_error"], 12), i))
    chosen = grid[best]["params"]
    served = _out_of_fold(table, folds, chosen, interval_folds=5)
    everywhere = np.ones(len(table.requests), dtype=bool)
    constant = _geometric_mean_out_of_fold(table.power_watts, folds, everywhere)
    deadline = np.array([float(r.active_deadline_seconds or np.nan) for r in table.requests])
    has_deadline = np.isfinite(deadline)

    seconds = [
        score(f"served: {describe_run_params(chosen)}", table, served[:, 1], served[:, 0], served[:, 2]),
        score("constant: geometric mean of the training runs", table, constant),
    ]
    partly = has_deadline.any() and not has_deadline.all()  # then the deadline rows score fewer runs
    if has_deadline.any():
        with_deadline = table.subset(has_deadline)
        seconds.append(score(f"activeDeadlineSeconds (upper bound; {int(has_deadline.sum())} runs that set it)",
                             with_deadline, deadline[has_deadline]))
        if partly:  # the served model on the same runs, so that the two compare like for like
            seconds.append(score(f"served, on the {int(has_deadline.sum())} runs that set activeDeadlineSeconds",
                                 with_deadline, served[has_deadline, 1], served[has_deadline, 0], served[has_deadline, 2]))

    energy: list[MethodMetrics] = []
    measured_joules = table.frame["energy_joules_per_run"].to_numpy(dtype=np.float64)
    complete = np.isfinite(measured_joules) & (measured_joules > 0)
    if complete.any():
        joules = RunTargets(table.frame[complete].reset_index(drop=True),
                            [r for r, keep in zip(table.requests, complete) if keep], measured_joules[complete],
                            table.groups[complete])
        watts_all = _pod_watts(pod_model, table)
        watts = watts_all[complete]
        energy.append(score(f"served: pod model W x {describe_run_params(chosen)}", joules,
                            watts * served[complete, 1], watts * served[complete, 0], watts * served[complete, 2]))
        energy.append(score("constant: geometric mean of the training runs' joules", joules,
                            _geometric_mean_out_of_fold(measured_joules, folds, complete)[complete]))
        both = has_deadline & complete
        if both.any():
            prior_watts = _pod_watts(prior, table)
            subset = joules.subset(both[complete])
            energy.append(score(f"embedded prior W x activeDeadlineSeconds ({int(both.sum())} runs)", subset,
                                prior_watts[both] * deadline[both]))
            if both.sum() < complete.sum():
                energy.append(score(f"served, on the {int(both.sum())} runs that set activeDeadlineSeconds", subset,
                                    watts_all[both] * served[both, 1], watts_all[both] * served[both, 0],
                                    watts_all[both] * served[both, 2]))
    return RunComparison(folds.scheme, chosen, grid, seconds, energy)


def fit_runs(table: RunTargets, pod_model: Predictor, prior: Predictor,
             k_grid: Sequence[int] = RUN_K_GRID) -> tuple[Any, dict[str, Any]]:
    """The run model fitted on every run, with its card section."""
    if len(table.requests) < MIN_RUNS_TO_FIT:
        raise ValueError(f"the run dataset has {len(table.requests)} finished runs; the run model needs {MIN_RUNS_TO_FIT}")
    try:
        comparison = compare_runs(table, pod_model, prior, k_grid=k_grid)
        params = comparison.chosen
        section: dict[str, Any] = comparison.to_dict()
    except NotEnoughWorkloads as exc:
        params = {"knn__n_neighbors": min(5, len(np.unique(table.groups))), "knn__column_weighting": "none"}
        section = {"skipped": str(exc)}
    pipeline = fit_run_pipeline(params, table)
    section.update(runs=len(table.requests), groups=int(len(np.unique(table.groups))),
                   description=f"PodFeatureEncoder(run_fields) -> AnchoredKNN: {describe_run_params(params)}",
                   interval_log_offsets=list(pipeline[-1].interval_log_offsets_ or []) or None)
    return pipeline, section
