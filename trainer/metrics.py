"""How good pod-power predictions are: one set of metrics for cross-validation and evaluation.

Per method: MAE in W, median absolute percentage error, the share of measured powers inside the
predicted p10-p90 interval (for methods that give one; 80% is the target), the mean absolute
error of log power (the KNN's own loss, used to choose k), the error of namespace totals (what
energy budgets sum), and what the numbers rest on: targets (rows of the training table),
pod-windows behind them, pods and workloads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer.targets import TrainingTable


@dataclass(frozen=True)
class MethodMetrics:
    method: str
    mae_watts: float
    median_ape_percent: float
    coverage_p10_p90: float | None
    mean_abs_log_error: float
    targets: int
    pod_windows: int
    pods: int
    workloads: int
    prior_fallback_share: float | None = None  # share of targets a served model answered with the prior
    # Budgets sum a namespace's workloads: the mean over namespaces of |sum predicted - sum measured| / sum measured.
    namespace_total_error_percent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(method: str, table: TrainingTable, predicted_watts: np.ndarray, p10_watts: np.ndarray | None = None,
          p90_watts: np.ndarray | None = None, prior_fallback: np.ndarray | None = None) -> MethodMetrics:
    measured = table.power_watts
    predicted = np.asarray(predicted_watts, dtype=np.float64)
    if predicted.shape != measured.shape:
        raise ValueError(f"{method}: {predicted.shape[0]} predictions for {measured.shape[0]} targets")
    # Log error needs a positive prediction; a method predicting 0 W gets the smallest positive power.
    floor = np.finfo(np.float64).tiny
    coverage = None
    if p10_watts is not None and p90_watts is not None:
        coverage = float(np.mean((np.asarray(p10_watts) <= measured) & (measured <= np.asarray(p90_watts))))
    return MethodMetrics(
        method=method,
        mae_watts=float(np.mean(np.abs(predicted - measured))),
        median_ape_percent=float(np.median(np.abs(predicted - measured) / measured) * 100.0),
        coverage_p10_p90=coverage,
        mean_abs_log_error=float(np.mean(np.abs(np.log(np.maximum(predicted, floor)) - np.log(measured)))),
        targets=len(measured),
        pod_windows=table.source_rows,
        pods=table.pods,
        workloads=table.workloads,
        prior_fallback_share=None if prior_fallback is None else float(np.mean(prior_fallback)),
        namespace_total_error_percent=namespace_total_error_percent(table.frame["namespace"].astype(str).to_numpy(),
                                                                    predicted, measured),
    )


def namespace_total_error_percent(namespaces: np.ndarray, predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean over namespaces of the absolute error of the namespace's summed power, in % of the measured sum."""
    errors = []
    for namespace in np.unique(namespaces):
        mask = namespaces == namespace
        errors.append(abs(predicted[mask].sum() - measured[mask].sum()) / measured[mask].sum())
    return float(np.mean(errors) * 100.0)


def _cell(value: float | None, digits: int, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}{suffix}"


def metrics_table(metrics: Sequence[MethodMetrics]) -> str:
    """A Markdown table, one line per method."""
    header = ("| method | MAE W | median APE | p10-p90 coverage | mean abs log error | namespace total error "
              "| prior fallback | targets | pod-windows | pods | workloads |")
    lines = [header, "|" + " --- |" * header.count(" |")]
    for m in metrics:
        lines.append(
            f"| {m.method} | {_cell(m.mae_watts, 4)} | {_cell(m.median_ape_percent, 1, suffix='%')} "
            f"| {_cell(m.coverage_p10_p90, 0, 100.0, '%')} | {_cell(m.mean_abs_log_error, 3)} "
            f"| {_cell(m.namespace_total_error_percent, 1, suffix='%')} "
            f"| {_cell(m.prior_fallback_share, 0, 100.0, '%')} | {m.targets} | {m.pod_windows} | {m.pods} | {m.workloads} |"
        )
    return "\n".join(lines)
