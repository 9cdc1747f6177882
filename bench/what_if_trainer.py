"""The trainer's `dataset` and `fit` steps with the memory changes bench/README.md suggests, to
measure them at sizes where the shipped steps run out of memory. Nothing here is used by the
trainer; each variant must produce the shipped step's output (same rows and values, same model
id; checked on the 200-workload cluster, see bench/README.md).

    python -m bench.what_if_trainer dataset --labels L --requests R --out D
    python -m bench.what_if_trainer fit --dataset D --out M [trainer fit options]

* dataset: a vectorised join. `trainer.dataset.build_dataset` resolves each distinct
  (workload, pod) once, but then builds every output column row by row in Python: a tuple of
  five fresh str objects per row to look the resolution up, per-row lists for kind, name, rule,
  hash, `.astype(str).to_numpy()` for namespace and pod, `.to_numpy()` on the tz-aware
  window_start (one pd.Timestamp object per row), `request_json()` called for every row, and
  `pd.Categorical(list of texts)`, which pandas 3 first turns into an Arrow array holding a copy
  of the spec's JSON (~1 KB) per row. Here the per-workload resolution is a small table merged
  onto the rows, and request_json a categorical built from codes. Only the `workload` join rule
  is implemented (one spec per workload, no controller marks: what the simulator produces);
  anything else raises, so it can never silently differ.
* fit: `trainer.targets._per_pod` converts the categorical request_json to one string per
  pod-window and groups by it. The patch groups by (workload, pod, spec hash) and attaches each
  workload spec's JSON afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import trainer.targets
from trainer.cli import train
from trainer.collect import controller_of, read_requests
from trainer.dataset import DATASET_COLUMNS, ROW_KEY, request_json, write_dataset
from trainer.targets import GROUP_COLUMNS
from webhook.schema import InferenceRequest, spec_hash

WORKLOAD_COLUMNS = ["namespace", "workload_kind", "workload_name"]


def vectorised_workload_join(labels: pd.DataFrame, requests: list[InferenceRequest]) -> pd.DataFrame:
    """build_dataset's frame for data that joins by the `workload` rule only."""
    texts = [request_json(r) for r in requests]
    categories = sorted(set(texts))
    code_of = {text: code for code, text in enumerate(categories)}
    # The merge carries a small integer per row, never the spec's JSON text.
    specs = pd.DataFrame([(r.namespace, r.workload_kind, r.workload_name, spec_hash(r), code_of[t])
                          for r, t in zip(requests, texts)], columns=[*WORKLOAD_COLUMNS, "spec_hash", "spec_code"])
    if specs.duplicated(WORKLOAD_COLUMNS).any() or any(controller_of(r) for r in requests):
        raise NotImplementedError("several specs per workload, or controller marks: only build_dataset handles those")
    if "spec_hash" in labels.columns or labels.duplicated(ROW_KEY).any():
        raise NotImplementedError("labels with spec_hash or duplicate rows: only build_dataset handles those")
    joined = labels.merge(specs, on=WORKLOAD_COLUMNS, how="inner", validate="many_to_one")
    if len(joined) != len(labels):
        raise NotImplementedError("some rows do not join by workload: only build_dataset reports those")
    frame = pd.DataFrame({
        "window_start": joined["window_start"].array,
        "window_seconds": joined["window_seconds"].astype("int64").array,
        **{c: joined[c].astype("str").array for c in ["namespace", "pod", "workload_kind", "workload_name"]},
        "join_rule": pd.array(np.full(len(joined), "workload", dtype=object), dtype="str"),
        "spec_hash": joined["spec_hash"].astype("str").array,
        "request_json": pd.Categorical.from_codes(joined["spec_code"].to_numpy(), categories=pd.Index(categories, dtype="str")),
        "power_watts": joined["power_watts"].astype("float64").array,
        "energy_joules": joined["energy_joules"].astype("float64").array,
    }, columns=list(DATASET_COLUMNS))
    return frame.sort_values(ROW_KEY, kind="stable").reset_index(drop=True)


def per_pod_by_spec_hash(dataset: pd.DataFrame, unit: str) -> pd.DataFrame:
    """trainer.targets._per_pod's output, without a string per row for the spec's JSON."""
    start = pd.to_datetime(dataset["window_start"], utc=True)
    active = dataset["energy_joules"].to_numpy(dtype=np.float64) > 0
    rows = pd.DataFrame({
        **{c: dataset[c] for c in [*GROUP_COLUMNS, "pod", "spec_hash"]},
        "period": start.dt.strftime("%Y-%m-%d") if unit == "pod-day" else "all",
        "active": active,
        "active_joules": np.where(active, dataset["energy_joules"], 0.0),
        "active_seconds": np.where(active, dataset["window_seconds"], 0),
        "first_window": start,
    })
    keys = [*GROUP_COLUMNS, "pod", "spec_hash", "period"]
    pods = (
        rows.groupby(keys, sort=True, observed=True)
        .agg(windows=("active", "size"), active_windows=("active", "sum"), energy_joules=("active_joules", "sum"),
             active_seconds=("active_seconds", "sum"), first_window=("first_window", "min"),
             last_window=("first_window", "max"))
        .reset_index()
    )
    texts = dataset[[*GROUP_COLUMNS, "spec_hash", "request_json"]].drop_duplicates([*GROUP_COLUMNS, "spec_hash"])
    texts = texts.assign(request_json=texts["request_json"].astype(str))
    pods = pods.merge(texts, on=[*GROUP_COLUMNS, "spec_hash"], how="left", validate="many_to_one")
    pods = pods[[*GROUP_COLUMNS, "pod", "spec_hash", "request_json", "period", "windows", "active_windows",
                 "energy_joules", "active_seconds", "first_window", "last_window"]]
    pods["power_watts"] = pods["energy_joules"] / pods["active_seconds"].where(pods["active_seconds"] > 0)
    return pods


def main() -> None:
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step == "fit":
        trainer.targets._per_pod = per_pod_by_spec_hash  # type: ignore[assignment]
        train(sys.argv[1:], prog_name="python -m bench.what_if_trainer")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["dataset"])
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frame = vectorised_workload_join(pd.read_parquet(args.labels), read_requests(args.requests))
    write_dataset(frame, args.out)
    print(f"dataset (vectorised join): {len(frame)} rows -> {args.out.name}")


if __name__ == "__main__":
    main()
