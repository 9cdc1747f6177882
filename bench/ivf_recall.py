"""The inverted-file index against the exact search: recall, effect on predictions, time per query.

    python -m bench.ivf_recall [--rows 50000,200000] [--probes 2,4,6,8] [--queries 2000]

For each size, the benchmark's training set (`bench.model_artifact`) is encoded once and fitted
twice, exactly (`algorithm="brute"`) and with the inverted file (`webhook.model.ivf`) at each
number of probes; queries are fresh draws of the same catalogue (specs the model never saw, as
a cache miss is). Reported:

* recall@k: the share of the k neighbours returned that are as near as the exact k-th neighbour;
* the rows one query scores, median and maximum: `probes` mean lists' worth, plus the rest of the
  list that reaches it (at most twice the mean list, `webhook.model.ivf.MAX_LIST_ROWS_FACTOR`);
* the effect on the answer: |log(W_ivf / W_exact)|, median and maximum over the queries;
* one query's search and `predict_detail`, microseconds, median of the queries (one BLAS thread).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench.model_artifact import fit_encoder, training_set
from bench.results import RunRecord, cell, markdown_table
from bench.workloads import draw_workloads
from webhook.model.artifact import build_pipeline
from webhook.model.ivf import CANDIDATES_PER_NEIGHBOUR, InvertedFileIndex
from webhook.model.knn import AnchoredKNN

QUERY_SEED = 99


def _microseconds(action: Any, count: int) -> float:
    times = []
    for i in range(count):
        started = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def measure(rows: int, probes: list[int], queries: int) -> list[dict[str, Any]]:
    data = training_set(rows)
    encoder, features, _ = fit_encoder(data.requests)
    fresh = encoder.transform([d.request for d in draw_workloads(queries, QUERY_SEED)])
    knn: AnchoredKNN = build_pipeline()[-1].set_params(interval_folds=0)
    started = time.perf_counter()
    exact = knn.set_params(algorithm="brute").fit(features, data.power_watts)
    exact_fit = time.perf_counter() - started
    started = time.perf_counter()
    approximate = build_pipeline()[-1].set_params(interval_folds=0, algorithm="ivf").fit(features, data.power_watts)
    ivf_fit = time.perf_counter() - started
    exact_distances, _ = exact.kneighbors(fresh)
    exact_watts = exact.predict(fresh)
    space = fresh[:, exact.physics_columns:]
    searched = np.ascontiguousarray(space[:, approximate.varying_columns_] * approximate.column_weights_,
                                    dtype=np.float32)
    results = [{"rows": rows, "search": "exact", "probes": None, "fit_seconds": round(exact_fit, 1),
                "recall_at_k": 1.0, "median_abs_log_ratio": 0.0, "max_abs_log_ratio": 0.0,
                "search_us": _microseconds(lambda i: exact._search(space[i:i + 1]), queries),
                "predict_detail_us": _microseconds(lambda i: exact.predict_detail(fresh[i:i + 1]), queries)}]
    assert approximate.inverted_lists_ is not None
    for count in probes:
        approximate.index_ = InvertedFileIndex(approximate.training_features_, *approximate.inverted_lists_, probes=count)
        distances, _ = approximate.kneighbors(fresh)
        index = approximate.index_
        wanted = CANDIDATES_PER_NEIGHBOUR * approximate.n_neighbors_
        scored = np.array([index.sizes[index._probed_lists(scores, wanted)].sum()
                           for scores in index.centroid_norms - 2.0 * (searched @ index.centroids.T)])
        ratio = np.abs(np.log(approximate.predict(fresh) / exact_watts))
        results.append({
            "rows": rows, "search": "inverted file", "probes": count, "fit_seconds": round(ivf_fit, 1),
            "lists": int(approximate.inverted_lists_[0].shape[0]),
            "recall_at_k": round(float(np.mean(distances <= exact_distances[:, -1:] + 1e-9)), 4),
            "median_abs_log_ratio": round(float(np.median(ratio)), 4), "max_abs_log_ratio": round(float(ratio.max()), 4),
            "rows_scored_median": float(np.median(scored)), "rows_scored_max": int(scored.max()),
            "search_us": _microseconds(lambda i: approximate._search(space[i:i + 1]), queries),
            "predict_detail_us": _microseconds(lambda i: approximate.predict_detail(fresh[i:i + 1]), queries),
        })
    return results


def table(results: list[dict[str, Any]]) -> str:
    header = ["rows", "search", "lists / probes", "fit s", "recall@k", "|log W ratio| median / max",
              "rows scored median / max", "search us", "predict_detail us"]
    rows = [[cell(r["rows"]), r["search"], "-" if r["probes"] is None else f"{r['lists']} / {r['probes']}",
             cell(r["fit_seconds"], 1), f"{r['recall_at_k']:.4f}",
             f"{r['median_abs_log_ratio']:.3f} / {r['max_abs_log_ratio']:.3f}",
             "-" if r["probes"] is None else f"{cell(r['rows_scored_median'], 0)} / {cell(r['rows_scored_max'], 0)}",
             cell(r["search_us"], 0),
             cell(r["predict_detail_us"], 0)] for r in results]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="50000")
    parser.add_argument("--probes", default="2,4,6,8", help="rows scored per query, in mean lists (6 serves)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 200 queries: a smoke test")
    args = parser.parse_args()
    record = RunRecord("ivf_recall", quick=args.quick)
    sizes = [10_000] if args.quick else [int(r) for r in args.rows.split(",")]
    queries = 200 if args.quick else args.queries
    results = [r for rows in sizes for r in measure(rows, [int(p) for p in args.probes.split(",")], queries)]
    print(table(results))
    print(f"-> {record.write({'results': results}).name}")


if __name__ == "__main__":
    main()
