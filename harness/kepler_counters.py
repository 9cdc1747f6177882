"""Kepler's energy counters as Prometheus stores them: cumulative joules, with restarts.

The tests' Kepler datasets and the benchmarks' simulated cluster both turn per-step energies
into counter samples this way, so that Prometheus' ``increase()`` over them gives the steps back.
"""

from __future__ import annotations

import numpy as np


def counter_values(step_joules: np.ndarray, base_joules: float, restart_index: int | None) -> np.ndarray:
    """Cumulative counter samples whose differences are `step_joules[1:]`.

    Sample 0 holds `base_joules` (an exporter that has been running for a while). A restart at
    `restart_index` r means Kepler came back right after sample r-1: sample r holds only the
    energy since then, step r, and counting goes on from there.
    """
    steps = np.asarray(step_joules, dtype=np.float64).copy()
    steps[0] = 0.0
    if restart_index is None:
        return base_joules + np.cumsum(steps)
    before = base_joules + np.cumsum(steps[:restart_index])
    after = np.cumsum(steps[restart_index:])
    if len(after) and not after[0] < before[-1]:
        raise AssertionError("restart must lower the counter, or Prometheus cannot see the reset")
    return np.concatenate([before, after])
