"""bench.targets_churn compares like with like: its baseline numbers every batch's keys as
`read_targets`' index does."""

from __future__ import annotations

from bench.targets_churn import LEVELS, DictOfTuples, batch_columns
from trainer.targets import _TupleIds


def test_the_baseline_and_the_index_give_every_row_the_same_id() -> None:
    baseline, indexed = DictOfTuples(), _TupleIds(LEVELS)
    for batch in range(40):  # 300 pods start a batch, 2,000 alive: new keys in every batch
        columns = batch_columns(batch, live=2_000, churn=300, rows=10_000)
        assert baseline.ids(columns).tolist() == indexed.ids(columns).tolist()
    assert len(baseline.ids_of) == len(indexed) == 2_000 + 39 * 300
