"""`bench.accuracy --draws N`'s table: one row per simulated draw, then the worst and the median
draw, which is what "a target met reliably" is judged by."""

from __future__ import annotations

from typing import Any

from bench.accuracy import draws_table


def _metric(method: str, median_ape: float, mae: float, log_error: float, targets: int = 200) -> dict[str, Any]:
    return {"method": method, "median_ape_percent": median_ape, "mae_watts": mae, "mean_abs_log_error": log_error,
            "targets": targets}


def _draw(seed: int, served_ape: float, run_ape: float | None) -> dict[str, Any]:
    evaluation: dict[str, Any] = {
        "simulation_seed": seed,
        "metrics": [_metric("served: knn k=8", served_ape, 7.0, 0.29), _metric("knn k=8 on log power", 30.0, 9.0, 0.31),
                    _metric("prior ccf-prior-v3 (embedded)", 500.0, 12.0, 1.8), _metric("constant: mean of log power", 160.0, 26.0, 2.0)],
    }
    if run_ape is not None:
        evaluation["runs"] = {"runs": 800, "energy_joules_per_run": [_metric("served: pod model W x knn", run_ape, 3e4, 0.3),
                                                                       _metric("constant", 41.0, 1e5, 0.56)]}
    return evaluation


def test_each_draw_is_a_row_and_the_worst_and_median_draws_close_the_table() -> None:
    table = draws_table([_draw(1, 21.4, 23.5), _draw(2, 19.0, 37.2), _draw(3, 23.6, 20.3),
                         {"directory": "mlenergy", "metrics": []}])  # not a draw: left out
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 2
    assert lines[2].startswith("| 1 | 21.4% | 7.00 | 12.00 | 0.290 / 1.800 / 2.000 | 23.5% |")
    assert lines[-2].startswith("| worst draw | 23.6% |") and "| 37.2% |" in lines[-2]
    assert lines[-1].startswith("| median draw | 21.4% |") and "| 23.5% |" in lines[-1]


def test_a_draw_without_runs_has_no_energy_per_run() -> None:
    table = draws_table([_draw(7, 20.0, None)])
    assert "| 7 | 20.0% |" in table and table.splitlines()[-2].endswith("| - |  |  |")
