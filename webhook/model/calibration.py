"""The calibrated prior: the embedded prior's formula, with coefficients fitted to measurements.

The embedded prior's coefficients are Cloud Carbon Footprint's averages: 1.0 W per requested
vCPU at 10% utilisation, no floor, every GPU of a product at half way between idle and maximum.
Measured pods disagree in ways a few numbers capture: long-running services idle near a floor
whatever they request, a batch pod works through its request, and a product's GPUs run at a
utilisation of their own. Fitted here:

    pod W = floor W + W per vCPU[batch] x vCPU requested + W per GB x GB of memory requested
            + GPUs x (GPU idle W + u[product] x (GPU max W - GPU idle W))

floor, W per vCPU (one for services, one for pods that run to completion, the physics column
`runs_to_completion`: a Job's, a CronJob's, a bare Pod's that does not restart; shrunk towards
the services'), W per GB and u (one per GPU product with at
least `min_product_targets` targets, shrunk towards the overall u; the overall u for the rest)
minimise a robust (soft L1) loss of
the log error, so that a 0.1 W sidecar and a 900 W GPU server weigh alike. A penalty pulls each
parameter (on a log or logit scale) towards the embedded prior's value: with few measurements
the calibrated prior stays the embedded one, with many the data decide. One W per vCPU for all
pods let the many idle services set it, and the calibrated prior put a CPU-bound CI Job a tenth
of its measured power: with a second one for batch pods, grouped CV on the same five simulated
draws (`python -m bench.accuracy --sets simulated --draws 5`, 8d91663 against 1649265) lowered
the served model's mean |log error| on every draw, by 0.008 to 0.026. `fit_coefficients=False`
keeps the embedded prior's own coefficients (the trainer's safest candidate: it serves the embedded
prior, with intervals calibrated on the data, when nothing fitted does better).

Input is `webhook.model.prior.physics_rows` (the first `len(PHYSICS_COLUMNS)` columns of the
encoder's output); the same function computes it at training and at serving time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import validate_data

from webhook.model.arrays import checked_rows, require_fitted
from webhook.model.gpus import GPU_PRODUCTS
from webhook.model.prior import PHYSICS_COLUMNS, PriorCoefficients

MIN_WATTS = 1e-3  # a pod draws something: keeps log finite for any coefficients
_LOGIT_LIMIT = 1e-4


def _logit(p: float) -> float:
    p = min(max(p, _LOGIT_LIMIT), 1 - _LOGIT_LIMIT)
    return math.log(p / (1 - p))


def _expit(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class CalibratedPrior(RegressorMixin, BaseEstimator):
    """Fit on physics rows and power in W (> 0); predict W.

    With fewer physics columns than `PHYSICS_COLUMNS` (a column of zeros, say), the missing ones
    read as 0 and the model is a floor: the geometric mean of the targets, under the penalty.
    """

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True  # power in W
        tags.regressor_tags.poor_score = True  # a physical formula: arbitrary features do not fit it
        return tags

    def __init__(self, coefficients: PriorCoefficients | None = None, initial_floor_watts: float = 0.1,
                 penalty: float = 0.3, min_product_targets: int = 3, fit_coefficients: bool = True) -> None:
        self.coefficients = coefficients
        self.initial_floor_watts = initial_floor_watts
        self.penalty = penalty
        self.min_product_targets = min_product_targets
        self.fit_coefficients = fit_coefficients

    def _physics(self, X: Any, *, reset: bool = False) -> np.ndarray:
        X = validate_data(self, X, dtype=np.float64, reset=reset) if reset else checked_rows(self, X, np.float64)
        physics = np.zeros((X.shape[0], len(PHYSICS_COLUMNS)))
        width = min(X.shape[1], len(PHYSICS_COLUMNS))
        physics[:, :width] = X[:, :width]
        physics[:, :7] = np.clip(physics[:, :7], 0.0, None)  # a quantity below 0 is not a pod's
        physics[:, 7] = np.where(width > 7, physics[:, 7], -1)
        return physics

    @staticmethod
    def _watts(physics: np.ndarray, floor: float, cpu_per_vcpu: float, memory_per_gb: float,
               utilisation: np.ndarray, batch_cpu_per_vcpu: float) -> np.ndarray:
        gpu = physics[:, 4] * (physics[:, 5] + utilisation * (physics[:, 6] - physics[:, 5]))
        per_vcpu = np.where(physics[:, 8] > 0, batch_cpu_per_vcpu, cpu_per_vcpu)
        return np.maximum(floor + per_vcpu * physics[:, 0] + memory_per_gb * physics[:, 2] + gpu, MIN_WATTS)

    def fit(self, X: Any, y: Any) -> "CalibratedPrior":
        X, power = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        physics = self._physics(X, reset=True)
        if np.any(power <= 0):
            raise ValueError("power_watts targets must be > 0 W")
        k = self.coefficients or PriorCoefficients()
        if not self.fit_coefficients:
            # The embedded prior itself, in this form: no floor, CCF's coefficients, PUE folded in.
            self.floor_watts_ = 0.0
            self.cpu_watts_per_vcpu_ = k.pue * (k.cpu_min_watts_per_vcpu + k.utilisation * (
                k.cpu_max_watts_per_vcpu - k.cpu_min_watts_per_vcpu))
            self.memory_watts_per_gb_ = k.pue * k.memory_watts_per_gb
            self.batch_cpu_watts_per_vcpu_ = self.cpu_watts_per_vcpu_
            self.gpu_utilisation_ = k.gpu_utilisation
            self.product_utilisation_ = {}
            return self
        log_power = np.log(power)
        has_gpu = physics[:, 4] > 0
        products, product_counts = np.unique(physics[has_gpu, 7].astype(int), return_counts=True)
        own = [int(p) for p, n in zip(products, product_counts) if n >= self.min_product_targets]
        start = np.array([
            math.log(self.initial_floor_watts),
            math.log(k.cpu_min_watts_per_vcpu + k.utilisation * (k.cpu_max_watts_per_vcpu - k.cpu_min_watts_per_vcpu)),
            math.log(k.memory_watts_per_gb),
            _logit(k.gpu_utilisation),
            *([_logit(k.gpu_utilisation)] * len(own)),
        ])
        start = np.append(start, start[1])  # last: the batch pods' log W per vCPU
        column_of = {product: 4 + i for i, product in enumerate(own)}
        product_column = np.array([column_of.get(int(p), 3) for p in physics[:, 7]])
        weight = math.sqrt(self.penalty)

        def residuals(theta: np.ndarray) -> np.ndarray:
            utilisation = _expit(theta[product_column])
            predicted = self._watts(physics, math.exp(theta[0]), math.exp(theta[1]), math.exp(theta[2]), utilisation,
                                    math.exp(theta[-1]))
            shrink = [weight * (theta[:4] - start[:4]), weight * (theta[4:-1] - theta[3]), weight * (theta[-1:] - theta[1])]
            return np.concatenate([np.log(predicted) - log_power, *shrink])

        solution = least_squares(residuals, start, loss="soft_l1", f_scale=0.5, method="trf")
        theta = solution.x
        self.floor_watts_ = float(math.exp(theta[0]))
        self.cpu_watts_per_vcpu_ = float(math.exp(theta[1]))
        self.memory_watts_per_gb_ = float(math.exp(theta[2]))
        self.gpu_utilisation_ = float(_expit(theta[3]))
        self.product_utilisation_ = {product: float(_expit(theta[column])) for product, column in column_of.items()}
        self.batch_cpu_watts_per_vcpu_ = float(math.exp(theta[-1]))
        return self

    def utilisation_of(self, product_index: np.ndarray) -> np.ndarray:
        require_fitted(self, "gpu_utilisation_")
        return np.array([self.product_utilisation_.get(int(p), self.gpu_utilisation_) for p in product_index])

    def predict(self, X: Any) -> np.ndarray:
        require_fitted(self, "gpu_utilisation_")
        X = checked_rows(self, X, np.float64)
        if X.shape[0] == 1:
            return np.array([self.predict_row(X[0].tolist())])
        physics = self._physics(X)
        return self._watts(physics, self.floor_watts_, self.cpu_watts_per_vcpu_, self.memory_watts_per_gb_,
                           self.utilisation_of(physics[:, 7]), self.batch_cpu_watts_per_vcpu_)

    def predict_row(self, row: list[float]) -> float:
        """`predict` of one finite row (the caller checked it), in Python floats: `_physics` and
        `_watts` for one row. The webhook predicts one spec at a
        time, and the ten numpy calls on 1-row arrays took 18.4 us against 4.5 us for this (one
        process, old and new interleaved, bench.admission_body's specs on a 50,000-row model). Each
        step is the same IEEE double operation in the same order, so the watts are identical to the
        bit (tests/webhook/test_one_row_paths.py)."""
        # np.clip(x, 0, None) is np.maximum(x, 0): x unless x < 0 (rows are finite: checked_rows).
        vcpu, _, memory_gb, _, gpus, gpu_idle, gpu_max = [x if x >= 0.0 else 0.0 for x in (row + [0.0] * 7)[:7]]
        product = row[7] if len(row) > 7 else -1
        per_vcpu = self.batch_cpu_watts_per_vcpu_ if len(row) > 8 and row[8] > 0 else self.cpu_watts_per_vcpu_
        utilisation = self.product_utilisation_.get(int(product), self.gpu_utilisation_)
        gpu = gpus * (gpu_idle + utilisation * (gpu_max - gpu_idle))
        watts = self.floor_watts_ + per_vcpu * vcpu + self.memory_watts_per_gb_ * memory_gb + gpu
        return watts if watts >= MIN_WATTS else MIN_WATTS  # np.maximum(watts, MIN_WATTS)

    def to_state(self) -> dict[str, Any]:
        """The fitted parameters as JSON (`webhook.model.artifact`)."""
        require_fitted(self, "gpu_utilisation_")
        return {
            "floor_watts": self.floor_watts_,
            "cpu_watts_per_vcpu": self.cpu_watts_per_vcpu_,
            "batch_cpu_watts_per_vcpu": self.batch_cpu_watts_per_vcpu_,
            "memory_watts_per_gb": self.memory_watts_per_gb_,
            "gpu_utilisation": self.gpu_utilisation_,
            "product_utilisation": {str(k): v for k, v in self.product_utilisation_.items()},
            "n_features_in": self.n_features_in_,
        }

    def set_state(self, state: dict[str, Any]) -> "CalibratedPrior":
        self.floor_watts_ = float(state["floor_watts"])
        self.cpu_watts_per_vcpu_ = float(state["cpu_watts_per_vcpu"])
        # Artifacts before feature version 4 fitted one W per vCPU for every pod.
        self.batch_cpu_watts_per_vcpu_ = float(state.get("batch_cpu_watts_per_vcpu", self.cpu_watts_per_vcpu_))
        self.memory_watts_per_gb_ = float(state["memory_watts_per_gb"])
        self.gpu_utilisation_ = float(state["gpu_utilisation"])
        self.product_utilisation_ = {int(k): float(v) for k, v in state["product_utilisation"].items()}
        self.n_features_in_ = int(state["n_features_in"])
        return self

    def describe(self) -> dict[str, Any]:
        """For the model card: the fitted coefficients, GPU products by name."""
        return {
            "floor_watts": self.floor_watts_,
            "cpu_watts_per_vcpu": self.cpu_watts_per_vcpu_,
            "batch_cpu_watts_per_vcpu": self.batch_cpu_watts_per_vcpu_,
            "memory_watts_per_gb": self.memory_watts_per_gb_,
            "gpu_utilisation": self.gpu_utilisation_,
            "gpu_utilisation_by_product": {GPU_PRODUCTS[p].name if p >= 0 else "generic": u
                                           for p, u in self.product_utilisation_.items()},
        }
