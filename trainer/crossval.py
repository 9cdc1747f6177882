"""Grouped cross-validation: choosing k (and block weights), conformal offsets, and the comparison
of the KNN with the baselines on the same folds.

Folds are grouped by workload (namespace/kind/name): a workload's pods are never both in training
and validation, because the webhook meets new workloads, and a pod's siblings share its spec
and would make any nearest-neighbour method look perfect. With few workloads (at most
`logo_max_groups`) every workload is held out in turn (LeaveOneGroupOut); with more, GroupKFold.

k and the weights are chosen by the out-of-fold mean absolute error of log power. The metrics of
the chosen configuration come from the same folds that chose it (no nested CV), so they lean
slightly optimistic; the baselines have nothing to choose.

Split-conformal p10/p90: the residuals r = log(measured) - log(predicted) of the chosen KNN,
out of fold. With n residuals sorted ascending, p90's offset is the ceil((n+1)*0.9)-th and p10's
the floor((n+1)*0.1)-th: the finite-sample correction that makes each one-sided bound hold with
probability >= 0.9 for an exchangeable new residual. With fewer than 9 residuals a rank falls
outside 1..n; the extreme residual is used and the card says the guarantee does not hold.
Residuals out of cross-validation (CV+ style, each from a model that did not see its workload)
rather than from one held-out split use all the data; the guarantee is then approximate, and
exchangeable means "a new workload like the training ones", not "any pod". In the comparison,
each fold's intervals use offsets from the other folds' residuals only (cross-conformal), so the
coverage reported is not the calibration set's own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from tqdm import tqdm

from trainer.baselines import (
    FoldPrediction,
    FoldPredictor,
    from_pod_predictions,
    mean_log_power,
    prior_baseline,
    prototype_text_knn,
)
from trainer.metrics import MethodMetrics, score
from trainer.targets import TrainingTable
from webhook.model.artifact import TrainedModel, build_pipeline
from webhook.model.prior import PriorPredictor

DEFAULT_K_GRID: tuple[int, ...] = (1, 2, 3, 5, 8, 13, 21)
DEFAULT_LOGO_MAX_GROUPS = 10
DEFAULT_MAX_SPLITS = 5
INTERVAL_QUANTILES = (0.1, 0.9)
# (numeric, categorical, text) block weights tried with --weight-grid.
WEIGHT_GRID: tuple[tuple[float, float, float], ...] = tuple(itertools.product((1.0,), (0.5, 1.0), (0.0, 0.5, 1.0)))


class NotEnoughWorkloads(ValueError):
    """Grouped cross-validation needs at least two workloads."""


@dataclass(frozen=True)
class Folds:
    splits: list[tuple[np.ndarray, np.ndarray]]
    fold_of: np.ndarray  # the fold in which each target is held out
    scheme: str


def grouped_folds(groups: np.ndarray, max_splits: int = DEFAULT_MAX_SPLITS,
                  logo_max_groups: int = DEFAULT_LOGO_MAX_GROUPS) -> Folds:
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise NotEnoughWorkloads(f"grouped cross-validation needs at least 2 workloads, the data has {n_groups}")
    if n_groups <= logo_max_groups:
        splitter: Any = LeaveOneGroupOut()
        scheme = f"leave-one-workload-out ({n_groups} folds)"
    else:
        splitter = GroupKFold(n_splits=min(max_splits, n_groups))
        scheme = f"GroupKFold by workload ({splitter.n_splits} folds, {n_groups} workloads)"
    placeholder = np.zeros((len(groups), 1))
    splits = [(train, test) for train, test in splitter.split(placeholder, groups=groups)]
    fold_of = np.full(len(groups), -1)
    for index, (_, test) in enumerate(splits):
        fold_of[test] = index
    return Folds(splits=splits, fold_of=fold_of, scheme=scheme)


@dataclass(frozen=True)
class KnnConfig:
    n_neighbors: int
    numeric_weight: float = 1.0
    categorical_weight: float = 1.0
    text_weight: float = 1.0

    def encoder_params(self) -> dict[str, float]:
        return {"numeric_weight": self.numeric_weight, "categorical_weight": self.categorical_weight,
                "text_weight": self.text_weight}

    def describe(self) -> str:
        return (f"k={self.n_neighbors}, weights numeric {self.numeric_weight:g} / categorical "
                f"{self.categorical_weight:g} / text {self.text_weight:g}")


def candidate_configs(k_grid: Sequence[int], weight_grid: bool, largest_train: int) -> list[KnnConfig]:
    """Configurations worth trying: k beyond the smallest training fold means the same model."""
    ks = sorted({max(1, min(int(k), largest_train)) for k in k_grid})
    weights = WEIGHT_GRID if weight_grid else ((1.0, 1.0, 1.0),)
    return [KnnConfig(k, *w) for w in weights for k in ks]


def fit_knn(config: KnnConfig, table: TrainingTable) -> Any:
    return build_pipeline(config.n_neighbors, **config.encoder_params()).fit(table.requests, table.power_watts)


def knn_served(config: KnnConfig, prior: PriorPredictor) -> FoldPredictor:
    """The KNN as the webhook serves it: the prior answers beyond the trust radius."""

    def predict(train: TrainingTable, test: TrainingTable) -> FoldPrediction:
        model = TrainedModel(pipeline=fit_knn(config, train), model_id="cross-validation", prior=prior)
        return from_pod_predictions(model.predict(test.requests))

    return predict


def knn_raw(config: KnnConfig) -> FoldPredictor:
    """The KNN's own answer everywhere (no trust radius)."""

    def predict(train: TrainingTable, test: TrainingTable) -> FoldPrediction:
        return FoldPrediction(power_watts=fit_knn(config, train).predict(test.requests))

    return predict


def out_of_fold(table: TrainingTable, folds: Folds, method: FoldPredictor) -> FoldPrediction:
    """Each target predicted by the method fitted on the other folds."""
    n = len(table.requests)
    parts: dict[str, np.ndarray] = {}
    for train_index, test_index in folds.splits:
        train, test = table.subset(_mask(n, train_index)), table.subset(_mask(n, test_index))
        prediction = method(train, test)
        for name, values in asdict(prediction).items():
            if values is not None:
                parts.setdefault(name, np.zeros(n, dtype=np.asarray(values).dtype))[test_index] = values
    return FoldPrediction(**parts)


def _mask(n: int, index: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[index] = True
    return mask


@dataclass(frozen=True)
class ConformalOffsets:
    """Log-power offsets of p10 and p90 from the point prediction."""

    log_offset_p10: float
    log_offset_p90: float
    residuals: int
    rank_p10: int  # 1-based order statistic used (clipped into 1..n)
    rank_p90: int
    finite_sample_guarantee: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conformal_offsets(log_residuals: np.ndarray, quantiles: tuple[float, float] = INTERVAL_QUANTILES) -> ConformalOffsets:
    residuals = np.sort(np.asarray(log_residuals, dtype=np.float64))
    n = len(residuals)
    if n == 0:
        raise ValueError("conformal offsets need at least one residual")
    low, high = quantiles
    rank_low = math.floor((n + 1) * low)
    rank_high = math.ceil((n + 1) * high)
    exact = 1 <= rank_low and rank_high <= n
    rank_low, rank_high = min(max(rank_low, 1), n), min(max(rank_high, 1), n)
    # The interval must bracket the point prediction (LogPowerKNN.calibrate insists).
    return ConformalOffsets(
        log_offset_p10=min(float(residuals[rank_low - 1]), 0.0),
        log_offset_p90=max(float(residuals[rank_high - 1]), 0.0),
        residuals=n,
        rank_p10=rank_low,
        rank_p90=rank_high,
        finite_sample_guarantee=exact,
    )


def cross_conformal_bounds(point_watts: np.ndarray, log_residuals: np.ndarray, folds: Folds) -> tuple[np.ndarray, np.ndarray]:
    """p10/p90 for each target from the offsets of the OTHER folds' residuals."""
    low = np.empty_like(point_watts)
    high = np.empty_like(point_watts)
    for fold in range(len(folds.splits)):
        held_out = folds.fold_of == fold
        offsets = conformal_offsets(log_residuals[~held_out])
        low[held_out] = point_watts[held_out] * math.exp(offsets.log_offset_p10)
        high[held_out] = point_watts[held_out] * math.exp(offsets.log_offset_p90)
    return low, high


@dataclass(frozen=True)
class GridPoint:
    config: KnnConfig
    mean_abs_log_error: float


@dataclass
class Comparison:
    """The outcome of grouped CV on one training table."""

    scheme: str
    folds: int
    grid: list[GridPoint]
    chosen: KnnConfig
    metrics: list[MethodMetrics]
    log_residuals: np.ndarray  # chosen KNN, out of fold, no trust radius
    text_embedding: str
    out_of_fold: dict[str, FoldPrediction] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "folds": self.folds,
            "selection": "out-of-fold mean absolute error of log power (not nested: slightly optimistic)",
            "grid": [{**asdict(p.config), "mean_abs_log_error": p.mean_abs_log_error} for p in self.grid],
            "chosen": asdict(self.chosen),
            "prototype_text_embedding": self.text_embedding,
            "metrics": [m.to_dict() for m in self.metrics],
        }


def compare_methods(table: TrainingTable, *, k_grid: Sequence[int] = DEFAULT_K_GRID, weight_grid: bool = False,
                    text_embedding: str = "tfidf", prior: PriorPredictor | None = None,
                    max_splits: int = DEFAULT_MAX_SPLITS, logo_max_groups: int = DEFAULT_LOGO_MAX_GROUPS,
                    progress: bool = False) -> Comparison:
    """Choose the KNN configuration by grouped CV, then score it and the baselines on the same folds."""
    prior = prior or PriorPredictor()
    folds = grouped_folds(table.groups, max_splits, logo_max_groups)
    smallest_train = min(len(train) for train, _ in folds.splits)
    configs = candidate_configs(k_grid, weight_grid, smallest_train)
    log_measured = np.log(table.power_watts)
    grid: list[GridPoint] = []
    raw_predictions: dict[KnnConfig, np.ndarray] = {}
    for config in tqdm(configs, desc="choose k", unit="config", disable=not progress):
        predicted = out_of_fold(table, folds, knn_raw(config)).power_watts
        raw_predictions[config] = predicted
        grid.append(GridPoint(config, float(np.mean(np.abs(np.log(predicted) - log_measured)))))
    # Lowest error; on a tie the larger k (a smoother average), then the grid's order.
    best = min(grid, key=lambda p: (round(p.mean_abs_log_error, 12), -p.config.n_neighbors))
    chosen = best.config
    raw = raw_predictions[chosen]
    residuals = log_measured - np.log(raw)
    raw_p10, raw_p90 = cross_conformal_bounds(raw, residuals, folds)

    served = out_of_fold(table, folds, knn_served(chosen, prior))
    fallback = served.prior_fallback if served.prior_fallback is not None else np.zeros(len(raw), dtype=bool)
    assert served.p10_watts is not None and served.p90_watts is not None
    served_p10 = np.where(fallback, served.p10_watts, raw_p10)
    served_p90 = np.where(fallback, served.p90_watts, raw_p90)

    prototype = out_of_fold(table, folds, prototype_text_knn(text_embedding))
    prior_oof = out_of_fold(table, folds, prior_baseline(prior))
    mean_oof = out_of_fold(table, folds, mean_log_power)
    k = chosen.n_neighbors
    metrics = [
        score(f"knn k={k}, as served (conformal p10/p90, prior beyond trust radius)", table, served.power_watts,
              served_p10, served_p90, fallback),
        score(f"knn k={k}, no trust radius", table, raw, raw_p10, raw_p90),
        score(f"prototype: {text_embedding} cosine 5-NN, raw power", table, prototype.power_watts),
        score("prior ccf-prior-v1", table, prior_oof.power_watts, prior_oof.p10_watts, prior_oof.p90_watts),
        score("mean of log power", table, mean_oof.power_watts, mean_oof.p10_watts, mean_oof.p90_watts),
    ]
    return Comparison(
        scheme=folds.scheme,
        folds=len(folds.splits),
        grid=grid,
        chosen=chosen,
        metrics=metrics,
        log_residuals=residuals,
        text_embedding=text_embedding,
        out_of_fold={"knn_served": FoldPrediction(served.power_watts, served_p10, served_p90, fallback)},
    )
