"""What the trained KNN is compared with, fold by fold, on the same grouped folds.

* `mean`: the geometric mean of the training pods' power (the mean of log power), with the
  training pods' 10th and 90th percentiles as its interval: what a model that ignores the spec
  could do.
* `prior`: the embedded Cloud Carbon Footprint prior (`webhook.model.prior.PriorPredictor`), which
  learns nothing.
* `gradient_boosted_trees`: scikit-learn's histogram gradient boosting on log power, over the same
  features the served model sees (the research prototype's later default learner).
* `prototype`: the research prototype's approach: cosine 5-NN on a text embedding of the whole
  spec, uniform weights, averaging raw power (not log). SBERT when installed, as the prototype;
  otherwise TF-IDF of the same text, which approximates it (see `trainer.text_embedding`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import config_context
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.neighbors import KNeighborsRegressor
from threadpoolctl import threadpool_limits

from trainer.targets import TrainingTable
from trainer.text_embedding import SpecTextEmbedding
from webhook.model.features import PodFeatureEncoder
from webhook.model.prior import PriorPredictor
from webhook.model.prediction import PodPrediction


@dataclass(frozen=True)
class FoldPrediction:
    """Predictions for one fold's held-out targets (or, assembled, for all targets)."""

    power_watts: np.ndarray
    p10_watts: np.ndarray | None = None
    p90_watts: np.ndarray | None = None
    prior_fallback: np.ndarray | None = None  # True where a served model answered with the prior


# A method: fit on the training targets, predict the held-out ones.
FoldPredictor = Callable[[TrainingTable, TrainingTable], FoldPrediction]

# scikit-learn's trees and its neighbour search run OpenMP threads that spin while they wait for
# each other. On a 2-core machine that other work shares (load average ~10), one fit of 200 trees
# on 2,000 rows x 150 columns took 65 s with the default 2 threads and 4.1 s with one; on 30 rows
# 43 s against 1.1 s. One thread: the same trees, in time that does not collapse under load.
BASELINE_OPENMP_THREADS = 1
# The prototype's brute-force cosine search computes its distances in chunks of scikit-learn's
# working_memory (1 GiB by default): at 20,000 simulated workloads (15,500 training x 3,900
# held-out specs) one fold's search took `train fit` from 919 to 1,828 MiB peak. In chunks of
# 64 MiB: the same neighbours.
PROTOTYPE_WORKING_MEMORY_MIB = 64


def from_pod_predictions(predictions: list[PodPrediction]) -> FoldPrediction:
    return FoldPrediction(
        power_watts=np.array([p.power_watts for p in predictions], dtype=np.float64),
        p10_watts=np.array([p.power_watts_p10 for p in predictions], dtype=np.float64),
        p90_watts=np.array([p.power_watts_p90 for p in predictions], dtype=np.float64),
        prior_fallback=np.array([p.basis == "prior" for p in predictions], dtype=bool),
    )


def mean_log_power(train: TrainingTable, test: TrainingTable) -> FoldPrediction:
    log_power = np.log(train.power_watts)
    n = len(test.requests)
    return FoldPrediction(
        power_watts=np.full(n, np.exp(log_power.mean())),
        p10_watts=np.full(n, np.exp(np.quantile(log_power, 0.1))),
        p90_watts=np.full(n, np.exp(np.quantile(log_power, 0.9))),
    )


def prior_baseline(prior: PriorPredictor) -> FoldPredictor:
    def predict(train: TrainingTable, test: TrainingTable) -> FoldPrediction:
        full = from_pod_predictions(prior.predict(test.requests))
        return FoldPrediction(full.power_watts, full.p10_watts, full.p90_watts)

    return predict


def prototype_text_knn(embedding: str, n_neighbors: int = 5) -> FoldPredictor:
    def predict(train: TrainingTable, test: TrainingTable) -> FoldPrediction:
        encoder = SpecTextEmbedding(embedding).fit(train.requests)
        knn = KNeighborsRegressor(n_neighbors=min(n_neighbors, len(train.requests)), metric="cosine",
                                  weights="uniform", algorithm="brute")
        with threadpool_limits(limits=BASELINE_OPENMP_THREADS, user_api="openmp"), \
                config_context(working_memory=PROTOTYPE_WORKING_MEMORY_MIB):
            knn.fit(encoder.transform(train.requests), train.power_watts)
            return FoldPrediction(power_watts=knn.predict(encoder.transform(test.requests)))

    return predict


def gradient_boosted_trees(train: TrainingTable, test: TrainingTable) -> FoldPrediction:
    encoder = PodFeatureEncoder().fit(train.requests)
    # Small data: shallow trees, and no early stopping (its own split would leak groups).
    trees = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                          min_samples_leaf=max(1, min(20, len(train.requests) // 5)),
                                          early_stopping=False, random_state=0)
    with threadpool_limits(limits=BASELINE_OPENMP_THREADS, user_api="openmp"):
        trees.fit(encoder.transform(train.requests), np.log(train.power_watts))
        return FoldPrediction(power_watts=np.exp(trees.predict(encoder.transform(test.requests))))
