"""Evaluation plots, written as PNG with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from webhook.files import write_atomically


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("evaluate's plots need matplotlib: pip install matplotlib") from None

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike[str]) -> Path:  # type: ignore[no-untyped-def]
    plt = _pyplot()
    try:
        return write_atomically(path, lambda temp: figure.savefig(temp, format="png", dpi=120))
    finally:
        plt.close(figure)


def predicted_vs_measured(path: str | os.PathLike[str], measured_watts: np.ndarray, predicted_watts: np.ndarray,
                          p10_watts: np.ndarray, p90_watts: np.ndarray, from_prior: np.ndarray, title: str) -> Path:
    """Log-log scatter, one point per target, with its p10-p90 interval and the y = x line."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 6.0))
    for mask, label, colour in ((~from_prior, "model", "tab:blue"), (from_prior, "prior (beyond trust radius)", "tab:orange")):
        if not mask.any():
            continue
        below = predicted_watts[mask] - p10_watts[mask]
        above = p90_watts[mask] - predicted_watts[mask]
        axes.errorbar(measured_watts[mask], predicted_watts[mask], yerr=np.vstack([below, above]), fmt="o",
                      color=colour, ecolor=colour, alpha=0.7, elinewidth=1, capsize=2, markersize=5,
                      label=f"{label} ({int(mask.sum())}), bars p10-p90")
    values = np.concatenate([measured_watts, predicted_watts, p10_watts, p90_watts])
    values = values[values > 0]
    low, high = values.min() / 1.5, values.max() * 1.5
    axes.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = measured")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("measured mean pod power (W)")
    axes.set_ylabel("predicted pod power (W)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return _save(figure, path)


def residuals(path: str | os.PathLike[str], measured_watts: np.ndarray, predicted_watts: np.ndarray,
              from_prior: np.ndarray, title: str, log_offsets: tuple[float, float] | None = None) -> Path:
    """log(measured / predicted) against measured power; the calibrated offsets as a band."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.0, 4.5))
    residual = np.log(measured_watts / predicted_watts)
    for mask, label, colour in ((~from_prior, "model", "tab:blue"), (from_prior, "prior", "tab:orange")):
        if mask.any():
            axes.scatter(measured_watts[mask], residual[mask], color=colour, alpha=0.7, s=22, label=f"{label} ({int(mask.sum())})")
    axes.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    if log_offsets is not None:
        axes.axhspan(log_offsets[0], log_offsets[1], color="tab:green", alpha=0.12,
                     label="calibrated p10-p90 band (log offsets)")
    axes.set_xscale("log")
    axes.set_xlabel("measured mean pod power (W)")
    axes.set_ylabel("log(measured / predicted)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)
