"""Key tuples to dense ids over many batches, as `read_targets` meets them in a long dataset.

A dataset is sorted by window first, so a week of a cluster where pods keep starting (Jobs,
CronJobs, rollouts) brings new pod keys in nearly every batch of rows. This times
`trainer.targets._TupleIds` on such batches (a window of live pods sliding by `churn` pods a batch)
against a dict of tuples with one Python lookup per distinct key of a batch, the way `read_targets`
numbered keys before it had integer indexes: the cost of a batch should follow the batch, not the
number of batches before it.

    python -m bench.targets_churn [--rows 200000] [--live 20000]
"""

from __future__ import annotations

import argparse
import time
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from trainer.targets import _TupleIds

LEVELS = 7  # namespace, kind, workload, pod, spec hash, request, day: the pod-day unit's keys


class Numbering(Protocol):
    def ids(self, columns: Sequence[np.ndarray]) -> np.ndarray: ...


class DictOfTuples:
    """The baseline: each batch's distinct tuples (pandas), then a dict lookup per distinct tuple."""

    def __init__(self) -> None:
        self.ids_of: dict[tuple[int, ...], int] = {}

    def ids(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        combined = columns[0]
        for column in columns[1:]:
            combined = pd.factorize(combined)[0].astype(np.int64) * (int(column.max(initial=0)) + 1) + column
        codes = pd.factorize(combined)[0]  # in order of first sight: code i's first row is first_rows[i]
        first_rows = np.unique(codes, return_index=True)[1]
        distinct = np.array([self.ids_of.setdefault(tuple(int(c[r]) for c in columns), len(self.ids_of))
                             for r in first_rows])
        return distinct[codes]


def batch_columns(batch: int, live: int, churn: int, rows: int) -> list[np.ndarray]:
    pods = np.resize(batch * churn + np.arange(live), rows)
    return [pods % 50, pods % 3, pods // 7, pods, pods // 7, pods // 7, np.full(rows, 20_000 + batch // 100)]


def seconds(numbering: Numbering, batches: int, live: int, churn: int, rows: int) -> float:
    started = time.perf_counter()
    for batch in range(batches):
        numbering.ids(batch_columns(batch, live, churn, rows))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows a batch")
    parser.add_argument("--live", type=int, default=20_000, help="pods alive at once")
    args = parser.parse_args()
    print("| batches | new pods a batch | dict of tuples s | _TupleIds s |")
    print("|---|---|---|---|")
    for batches, churn in ((200, 0), (200, 500), (400, 500), (400, 2000)):
        baseline = seconds(DictOfTuples(), batches, args.live, churn, args.rows)
        indexed = seconds(_TupleIds(LEVELS), batches, args.live, churn, args.rows)
        print(f"| {batches} | {churn:,} | {baseline:.1f} | {indexed:.1f} |", flush=True)


if __name__ == "__main__":
    main()
