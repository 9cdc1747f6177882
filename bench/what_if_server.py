"""`energetiscope serve` with candidate optimisations patched in, to measure them before anyone
changes webhook/. Nothing here is used in production; each patch mimics a suggested change.

    python -m bench.what_if_server --patch matvec-knn serve ARGS...

(Shipped after being measured here: a JSON patch from the annotations only instead of a diff of
the whole object, a95ed0a; cache hits answered on the event loop without a worker thread.)

* `matvec-knn`: a brute-force index answers small query batches with one matrix-vector product
  against the training matrix and precomputed squared norms (float32), then re-ranks the 4k best
  candidates with exact float64 distances, instead of scikit-learn's ArgKmin dispatch (whose
  per-call overhead and OpenMP threads dominate a one-row query).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
from sklearn.neighbors import KNeighborsRegressor

from webhook.cli import main as webhook_main

PATCHES = ("matvec-knn",)
MATVEC_MAX_QUERY_ROWS = 8
MATVEC_CANDIDATES_PER_NEIGHBOUR = 4


_sklearn_kneighbors = KNeighborsRegressor.kneighbors


def _matvec_kneighbors(self: KNeighborsRegressor, X: Any = None, n_neighbors: int | None = None,
                       return_distance: bool = True) -> Any:
    small = X is not None and len(X) <= MATVEC_MAX_QUERY_ROWS
    if not small or n_neighbors is not None or not return_distance or self._fit_method != "brute":
        return _sklearn_kneighbors(self, X, n_neighbors, return_distance)
    training = getattr(self, "_what_if_training", None)
    if training is None:  # once per loaded model; a reload brings a new estimator
        training = np.ascontiguousarray(self._fit_X, dtype=np.float32)
        self._what_if_norms = np.einsum("ij,ij->i", training, training)
        self._what_if_training = training
    k = self.n_neighbors
    queries = np.asarray(X, dtype=np.float32)
    # training @ queries.T is a matrix-vector product (BLAS gemv) for one query.
    squared = self._what_if_norms[None, :] - 2.0 * (training @ queries.T).T
    candidates = min(len(training), MATVEC_CANDIDATES_PER_NEIGHBOUR * k)
    if candidates < len(training):
        # Sorted by training row, so that ties in distance go to the lowest row, as in a stable sort.
        index = np.sort(np.argpartition(squared, candidates - 1, axis=1)[:, :candidates], axis=1)
    else:
        index = np.broadcast_to(np.arange(len(training)), (len(queries), len(training)))
    exact = np.sqrt(((training[index].astype(np.float64) - queries[:, None, :].astype(np.float64)) ** 2).sum(axis=-1))
    order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(index, order, axis=1)


def apply(patches: list[str]) -> None:
    if "matvec-knn" in patches:
        KNeighborsRegressor.kneighbors = _matvec_kneighbors  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", action="append", choices=PATCHES, default=[])
    args, rest = parser.parse_known_args()
    apply(args.patch)
    webhook_main(rest, prog_name="energetiscope")


if __name__ == "__main__":
    main()
