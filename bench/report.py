"""The README's tables, from the result files: `python -m bench.report [--results DIR]`.

bench/README.md pastes this output, so every number there comes from a file in bench/results/
that a benchmark wrote, with the command, machine and load recorded beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.results import RESULTS_DIR, cell, markdown_table


def _load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _context(result: dict[str, Any]) -> str:
    machine = result["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    return (f"Command: `{result.get('invoked_by') or result['command']}` (this table: `{result['command']}`), "
            f"{result['started_utc']}, {result['wall_seconds']:.0f} s, commit {result['git_commit']}; load average "
            f"before {result['load_average_before'][0]}, after {result['load_average_after'][0]} "
            f"(1 min). Machine: {machine['cores']} cores {machine['cpu_model']}, {machine['ram_gib']} GiB, "
            f"Python {machine['python']}; {libraries}.")


def admission(result: dict[str, Any]) -> str:
    header = ["server", "req/s (wrk, 16 conn)", "share of echo", "p50 ms", "p99 ms",
              "45/s: p50 / p99 ms", "100/s: p50 / p99 ms", "CPU us/req", "peak RSS MiB"]
    rows = []
    for r in result["results"]:
        fixed = {f["rate_per_second"]: f for f in r["fixed_rate"]}
        rows.append([r["label"], cell(r["wrk"]["requests_per_second"], 0), f"{r['share_of_echo']:.3f}",
                     cell(r["wrk"]["p50_ms"], 2), cell(r["wrk"]["p99_ms"], 2),
                     *[f"{cell(fixed[rate]['p50_ms'], 2)} / {cell(fixed[rate]['p99_ms'], 2)}" for rate in (45.0, 100.0)],
                     cell(r["cpu_microseconds_per_request"], 0), cell(r["peak_rss_mib"], 0)])
    parts = [markdown_table(header, rows)]
    if all("server_run_delay_share" in r for r in result["results"]):  # runs since the tail's breakdown
        parts.append("\nWhat the closed loop's tail was made of, during the wrk run:\n")
        parts.append(markdown_table(
            ["server", "p99 / p50", "server loop waiting for a core", "wrk waiting for a core", "wrk CPU us/req",
             "GC collections gen0/1/2"],
            [[r["label"], cell(r["wrk"]["p99_ms"] / r["wrk"]["p50_ms"] if r["wrk"]["p50_ms"] else None, 2),
              f"{100 * r['server_run_delay_share']:.1f}%", f"{100 * r['wrk_run_delay_share']:.1f}%",
              cell(r.get("wrk_cpu_microseconds_per_request"), 0),
              "/".join(f"{(r.get('gc_collections') or {}).get(g, 0):.0f}" for g in "012") if r.get("gc_collections") else "-"]
             for r in result["results"]]))
    for r in result["results"]:
        if r.get("profile"):
            profile = r["profile"]
            parts.append(f"\npy-spy, {r['label']} ({profile['samples'] - profile['idle_samples']} busy samples of all threads):\n")
            parts.append(markdown_table(["component", "share of busy samples"],
                                        [[s["component"], f"{100 * s['share']:.1f}%"] for s in profile["shares"][:9]]))
    if result.get("mutate_stage_microseconds"):
        parts.append("\nIn-process cost of each step of `mutate()` (one thread, no HTTP/TLS):\n")
        parts.append(markdown_table(["step", "us"], [[s["stage"], cell(s["microseconds"], 1)]
                                                      for s in result["mutate_stage_microseconds"]]))
    parts.append("\nTargets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["targets_met"].items()))
    parts.append(f"\n{_context(result)}")
    return "\n".join(parts)


def predictor(result: dict[str, Any]) -> str:
    header = ["rows", "algorithm", "KNN fit s", "artifact MiB", "load s", "1 prediction p50 ms", "p99 ms",
              "batch of 100 ms", "serving peak RSS MiB", "fit process peak RSS MiB"]
    rows = []
    for r in result["results"]:
        if "skipped" in r:
            rows.append([cell(r["rows"]), r["algorithm"], f"skipped: {r['skipped']}", *[""] * 7])
            continue
        rows.append([cell(r["rows"]), r["algorithm"], cell(r.get("knn_fit_seconds"), 1),
                     cell(r["artifact_bytes"] / 2**20, 1) if "artifact_bytes" in r else "-", cell(r["load_seconds"], 2),
                     cell(r["single_p50_ms"], 2), cell(r["single_p99_ms"], 2), cell(r["batch_median_ms"], 1),
                     cell(r["peak_rss_mib"], 0), cell(r.get("fit_process_peak_rss_mib"), 0)])
    return markdown_table(header, rows) + f"\n\n{_context(result)}"


def trainer(result: dict[str, Any]) -> str:
    header = ["workloads x days", "Kepler", "pods", "samples", "OpenMetrics GiB", "backfill s (promtool s)", "TSDB MiB",
              "labels s / peak MiB", "runs s / peak MiB", "Prometheus peak MiB", "dataset s / peak MiB", "fit s / peak MiB",
              "label rows", "energy recovered"]
    rows = []
    for r in result["results"]:
        steps = {s["step"]: s for s in r["steps"]}

        def step(name: str) -> str:
            if name not in steps:
                return "not run"
            done = steps[name]
            text = f"{cell(done['wall_seconds'])} / {cell(done['peak_rss_mib'], 0)}"
            return f"{text} **failed: {done['failed']}**" if done["failed"] else text

        backfill = r["backfill"]
        row = [f"{r['workloads']:,} x {r['days']:g}", r["kepler_line"], cell(r["pods"]), cell(backfill["samples"]),
               cell(backfill["openmetrics_bytes"] / 2**30, 2),
               f"{cell(backfill['wall_seconds'])} ({cell(backfill['promtool_seconds'])})",
               cell(backfill["tsdb_bytes"] / 2**20, 0), step("labels"), step("runs"), cell(r["prometheus_peak_rss_mib"], 0),
               step("dataset"), step("fit"), cell(r["label_rows"]),
               f"{r['recovered_energy_joules'] / r['simulated_energy_joules']:.4%}"]
        rows.append(row)
    return markdown_table(header, rows) + f"\n\n{_context(result)}"


def accuracy(result: dict[str, Any]) -> str:
    from bench.accuracy import table_of  # its own table, so the README and the run print the same

    parts = []
    for evaluation in result["evaluations"]:
        if "skipped" in evaluation:
            parts.append(f"{evaluation['directory']}: not compared: {evaluation['skipped']}\n")
            continue
        served = evaluation.get("chosen_description") or f"k chosen = {evaluation['chosen'].get('n_neighbors')}"
        parts.append(f"{evaluation['directory']} ({evaluation.get('dataset_file', 'dataset.parquet')}): "
                     f"{evaluation['scheme']}, served {served}\n")
        parts.append(table_of(evaluation) + "\n")
        runs = evaluation.get("runs")
        if runs and "skipped" not in runs:
            parts.append(f"Energy per run: {runs['runs']} runs of {runs['templates']} Job templates, {runs['scheme']}, "
                         f"served {runs['chosen_description']}\n")
            parts.append(table_of({"metrics": runs["run_seconds"]}).replace("MAE W", "MAE s") + "\n")
            parts.append(table_of({"metrics": runs["energy_joules_per_run"]}).replace("MAE W", "MAE J") + "\n")
    return "\n".join(parts) + f"\n{_context(result)}"


def accuracy_draws(result: dict[str, Any]) -> str:
    from bench.accuracy import draws_table

    return draws_table(result["evaluations"]) + f"\n\n{_context(result)}"


def ivf_recall(result: dict[str, Any]) -> str:
    from bench.ivf_recall import table  # its own table, so the README and the run print the same

    return table(result["results"]) + f"\n\n{_context(result)}"


def labels_rerun(result: dict[str, Any]) -> str:
    from bench.labels_rerun import table

    return table(result["runs"]) + f"\n\n{_context(result)}"


def run_model_rerun(result: dict[str, Any]) -> str:
    from bench.run_model_rerun import markdown_table

    return markdown_table(*result["results"]) + f"\n\n{_context(result)}"


def soak_tables(result: dict[str, Any]) -> str:
    """The soak's two tables (requests and reloads; memory, file descriptors and threads), from its
    summary: `python -m bench.soak` prints the same."""
    settings, requests, fill = result["settings"], result["requests"], result["fill"]
    reloads = result["reloads"]

    def latency(part: dict[str, Any]) -> str:
        return f"{cell(part['p50_ms'], 2)} / {cell(part['p99_ms'], 2)} / {cell(part['max_ms'], 1)}"

    def pickups(kind: str) -> str:
        r = reloads[kind]
        return (f"{r['count']}, {r['picked_up']} picked up, after {cell(r['pickup_seconds_median'], 1)} s "
                f"(median), at most {cell(r['pickup_seconds_max'], 1)} s")

    reasons = "; ".join(f"{k}: {v}" for k, v in requests["failures_by_reason"].items()) or "none"
    rows = [
        ["load", f"{settings['duration_seconds'] / 60:g} min at {settings['rate_per_second']:g} reviews/s, "
                 f"{settings['connections']} TLS connections each reopened every {settings['requests_per_connection']} "
                 f"requests ({cell(requests['connections_opened'])} opened); 1 in {settings['new_spec_every']} a new spec"],
        ["requests: scheduled / answered / failed", f"{cell(requests['scheduled'])} / {cell(requests['answered'])} / "
                                                    f"**{cell(requests['failed'])}** ({reasons})"],
        ["before them, filling both caches (closed loop)",
         f"{cell(fill['reviews'])} new specs in {cell(fill['seconds'], 0)} s, **{cell(fill['failed'])}** failed"],
        ["latency after warm-up: p50 / p99 / max ms", latency(result["latency_after_warmup"])],
        [f"within 15 s of a model reload / otherwise", f"{latency(result['latency_within_15s_of_a_model_reload'])} / "
                                                       f"{latency(result['latency_otherwise'])}"],
        [f"model reloads (every {settings['model_every_seconds']:g} s, {settings['rows']:,}-row models)",
         pickups("model") + f"; every new model id in the answers: {cell(result['every_new_model_answered'])}"],
        [f"certificate rotations (every {settings['certificate_every_seconds']:g} s)",
         pickups("certificate") + " (new handshake's serial)"],
        ["server reload counters", ", ".join(f"{k} {v:g}" for k, v in sorted(result["server_reload_counters"].items()))],
        ["generator health", f"max send lag {cell(requests['max_send_lag_ms'], 1)} ms, "
                             f"{cell(requests['late_sends'])} sends > 10 ms late"],
    ]
    if "model_runs" in result:
        runs = result["model_runs"]
        rows.append(["cache misses predicted: in the prediction process / in worker threads",
                     f"{cell(runs.get('process', 0))} / {cell(runs.get('thread', 0))}"])
    trend_rows = []
    for name, label, digits in (("rss_mib", "resident memory (MiB)", 1), ("open_fds", "open file descriptors", 0),
                                ("threads", "threads", 0),
                                ("child_processes", "its child processes (prediction process, resource tracker)", 0),
                                ("children_rss_mib", "their resident memory, summed (MiB)", 1)):
        if name not in result["trends"]:  # a run from before children were sampled
            continue
        t = result["trends"][name]
        trend_rows.append([label, cell(fill["before"].get(name), digits), cell(t["at_start"], digits), cell(t["first"], digits),
                           cell(t["last"], digits),
                           f"{cell(t['min'], digits)}-{cell(t['max'], digits)}",
                           f"{t['slope_per_hour']:+.2f} +- {t['slope_standard_error_per_hour']:.2f}",
                           f"{t['growth_over_window']:+.2f}"])
    warmup = settings["warmup_seconds"]
    header = ["server process", "ready, before the fill", "load starts", f"at {warmup:g} s", "at the end",
              "range after warm-up",
              "slope per hour +- s.e.", "fitted growth over the measured window"]
    before = result["rss_mib_before_each_model_reload"]
    rss_line = ("\nResident memory just before each model reload after warm-up: "
                + ", ".join(cell(b["rss_mib"], 1) for b in before)
                + f" MiB ({result['rss_mib_per_model_reload']:+.2f} MiB per reload, least squares).")
    return "\n".join([markdown_table(["soak", "result"], rows), "", markdown_table(header, trend_rows), rss_line])


def soak(result: dict[str, Any]) -> str:
    load = result["load_average_1m"]
    return (f"{soak_tables(result)}\n\nLoad average (1 min) sampled during the run: mean {load['mean']}, max {load['max']}."
            f"\n\n{_context(result)}")


SECTIONS = (("admission_load", admission), ("predictor_scale", predictor), ("predictor_scale_full", predictor),
            ("predictor_scale_1m_ivf", predictor), ("predictor_scale_1m_mapped", predictor), ("trainer_scale", trainer), ("trainer_scale_full", trainer),
            ("trainer_scale_20000x1d", trainer), ("trainer_scale_20000x0.1d", trainer), ("trainer_scale_2000x1d", trainer), ("labels_rerun", labels_rerun),
            ("run_model_rerun", run_model_rerun), ("accuracy", accuracy),
            ("accuracy_full", accuracy), ("accuracy_draws", accuracy_draws), ("ivf_recall", ivf_recall), ("soak", soak), ("soak_6min", soak),
            ("soak_mmap_threshold", soak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--only", default=None, help="one result name, e.g. trainer_scale_full")
    args = parser.parse_args()
    for name, render in SECTIONS:
        if args.only and name != args.only:
            continue
        result = _load(args.results, name)
        if result is not None:
            print(f"### {name}\n\n{render(result)}\n")


if __name__ == "__main__":
    main()
