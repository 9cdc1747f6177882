"""The dataset step's join rules, on specs extracted from the recorded API objects."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.trainer.kube_api_server import load_recorded
from trainer.collect import CONTROLLER_ANNOTATION, extract_requests, write_requests
from trainer.dataset import DATASET_COLUMNS, Tally, build_dataset, read_dataset, request_json, run_dataset, summary_path
from trainer.labels import LABEL_COLUMNS
from webhook.model.schema import ContainerSpec, InferenceRequest, spec_hash


def recorded_requests() -> list[InferenceRequest]:
    lists, _ = load_recorded()
    manifests = [{"apiVersion": d["apiVersion"], "kind": d["kind"].removesuffix("List"), **item}
                 for d in lists.values() for item in d["items"]]
    requests, failures = extract_requests(manifests)
    assert len(failures) == 1
    return requests


def labels(rows: list[tuple[str, str, str, str]], windows: int = 3, joules: float = 6.0) -> pd.DataFrame:
    """(namespace, pod, workload_kind, workload_name) rows, `windows` 60 s windows each."""
    records = []
    for namespace, pod, kind, name in rows:
        for i in range(windows):
            records.append({"window_start": pd.Timestamp("2025-10-30T08:00:00Z") + pd.Timedelta(minutes=i),
                            "window_seconds": 60, "namespace": namespace, "pod": pod, "workload_kind": kind,
                            "workload_name": name, "energy_joules": joules, "power_watts": joules / 60,
                            "kepler_line": "kepler-0.10"})
    return pd.DataFrame.from_records(records, columns=list(LABEL_COLUMNS))


def _spec(requests: list[InferenceRequest], namespace: str, kind: str, name: str) -> InferenceRequest:
    return next(r for r in requests if (r.namespace, r.workload_kind, r.workload_name) == (namespace, kind, name))


def _joined(frame: pd.DataFrame) -> dict[str, tuple[str, str, str, str]]:
    by_pod = frame.drop_duplicates("pod").set_index("pod")
    return {pod: (row.workload_kind, row.workload_name, row.join_rule, row.spec_hash) for pod, row in by_pod.iterrows()}


def test_a_pod_joins_to_its_owner_only_even_when_a_bare_pod_has_the_workload_name() -> None:
    specs = recorded_requests()
    frame, summary = build_dataset(labels([("shop", "web-5f7d8c9b6d-abcde", "Deployment", "web"),
                                           ("shop", "web", "Pod", "web")]), specs)
    assert len(frame) == 6 and not frame.duplicated(["window_start", "namespace", "pod"]).any()
    joined = _joined(frame)
    assert joined["web-5f7d8c9b6d-abcde"] == ("Deployment", "web", "workload", spec_hash(_spec(specs, "shop", "Deployment", "web")))
    assert joined["web"] == ("Pod", "web", "workload", spec_hash(_spec(specs, "shop", "Pod", "web")))
    assert summary.unjoined == {} and summary.joined.rows == 6 and summary.joined.workloads == 2
    # The request stored is the owner's spec, as the webhook sees the owner.
    stored = InferenceRequest.model_validate_json(str(frame.loc[frame["pod"] == "web-5f7d8c9b6d-abcde", "request_json"].iloc[0]))
    assert stored == _spec(specs, "shop", "Deployment", "web") and stored.replicas == 2


def test_labels_that_stop_at_an_owned_object_follow_the_collected_controllers() -> None:
    specs = recorded_requests()
    frame, summary = build_dataset(labels([
        ("shop", "web-5f7d8c9b6d-abcde", "ReplicaSet", "web-5f7d8c9b6d"),  # kube-state-metrics missed the hop
        ("batch", "nightly-report-28930000-xk2p9", "Pod", "nightly-report-28930000-xk2p9"),  # no owner series at all
        ("db", "pg-0", "StatefulSet", "pg"),
    ]), specs)
    joined = _joined(frame)
    assert joined["web-5f7d8c9b6d-abcde"][:3] == ("Deployment", "web", "controller")
    assert joined["nightly-report-28930000-xk2p9"][:3] == ("CronJob", "nightly-report", "controller")
    assert joined["pg-0"][:3] == ("StatefulSet", "pg", "workload")
    assert summary.by_rule["controller"].pods == 2 and summary.by_rule["workload"].pods == 1


def test_what_does_not_join_is_counted_with_its_reason() -> None:
    specs = recorded_requests()
    rows = labels([("kube-system", "etcd-node1", "Node", "node1"), ("weave", "weave-scope-agent-x", "DaemonSet", "weave-scope-agent"),
                   ("kube-system", "etcd-node1-x", "Pod", "etcd-node1"), ("shop", "web", "Pod", "web")])
    rows = pd.concat([rows, rows.iloc[-2:]], ignore_index=True)  # two duplicated pod-windows
    frame, summary = build_dataset(rows, specs)
    assert set(frame["pod"]) == {"web"}
    assert summary.unjoined["no-spec"].pods == 2 and summary.unjoined["no-spec"].rows == 6
    assert "no spec for DaemonSet/weave-scope-agent" in " ".join(summary.unjoined["no-spec"].examples)
    # A label naming the mirror pod as its own workload: its spec's controller is the Node, without a spec.
    assert summary.unjoined["owner-without-spec"].pods == 1
    assert summary.unjoined["duplicate-row"].rows == 2
    assert summary.label_rows == 14 and summary.joined.rows == 3
    text = summary.describe()
    assert "not joined, no-spec: 6 rows, 2 pods, 2 workloads" in text and "duplicate-row" in text


def test_the_pod_spec_stand_in_is_opt_in_and_marked() -> None:
    specs = recorded_requests()
    rows = labels([("kube-system", "etcd-node1", "Node", "node1"), ("kube-system", "node-agent-x7k2p", "DaemonSet", "node-agent-renamed")])
    strict, _ = build_dataset(rows, specs)
    assert strict.empty
    frame, summary = build_dataset(rows, specs, pod_spec_fallback=True)
    joined = _joined(frame)
    # Node is not a kind the webhook predicts for: the static pod stays a Pod; a DaemonSet pod stands for its DaemonSet.
    assert joined["etcd-node1"][:3] == ("Node", "node1", "pod-spec")
    assert InferenceRequest.model_validate_json(str(frame["request_json"].iloc[0])).workload_kind in ("Pod", "DaemonSet")
    stand_in = InferenceRequest.model_validate_json(str(frame.loc[frame["pod"] == "node-agent-x7k2p", "request_json"].iloc[0]))
    assert (stand_in.workload_kind, stand_in.workload_name) == ("DaemonSet", "node-agent-renamed")
    assert summary.by_rule["pod-spec"].pods == 2


def test_several_specs_of_one_workload_are_ambiguous_unless_the_labels_name_the_hash() -> None:
    specs = recorded_requests()
    web = _spec(specs, "shop", "Deployment", "web")
    changed = web.model_copy(update={"containers": [web.containers[0].model_copy(update={"image": "ghcr.io/example/shop-web:1.5.0"})]})
    rows = labels([("shop", "web-5f7d8c9b6d-abcde", "Deployment", "web")])
    frame, summary = build_dataset(rows, [*specs, changed])
    assert frame.empty and summary.unjoined["ambiguous"].pods == 1
    assert "2 different specs" in summary.unjoined["ambiguous"].examples[0]
    frame, _ = build_dataset(rows.assign(spec_hash=spec_hash(changed)), [*specs, changed])
    assert set(frame["spec_hash"]) == {spec_hash(changed)}
    _, summary = build_dataset(rows.assign(spec_hash="0" * 16), [*specs, changed])
    assert summary.unjoined["spec-hash-mismatch"].rows == 3


def test_run_dataset_writes_parquet_and_summary_atomically(tmp_path: Path) -> None:
    specs = recorded_requests()
    requests_path = write_requests(specs, tmp_path / "requests.ndjson")
    labels_path = tmp_path / "labels.parquet"
    labels([("shop", "web-5f7d8c9b6d-abcde", "Deployment", "web"), ("nowhere", "p", "Pod", "p")]).to_parquet(labels_path)
    out = tmp_path / "dataset.parquet"
    summary = run_dataset(labels_path, [requests_path], out)
    frame = read_dataset(out)
    assert list(frame.columns) == list(DATASET_COLUMNS) and len(frame) == 3
    assert str(frame["window_start"].dt.tz) == "UTC"
    assert summary.unjoined["no-spec"].rows == 3
    assert '"no-spec"' in summary_path(out).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dataset.parquet", "dataset.parquet.summary.json", "labels.parquet", "requests.ndjson"]
    # The controller mark travels with the spec, outside its hash.
    pod_spec = _spec(specs, "shop", "Pod", "web-5f7d8c9b6d-abcde")
    assert pod_spec.annotations[CONTROLLER_ANNOTATION] == "ReplicaSet/web-5f7d8c9b6d"


def test_labels_without_required_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        build_dataset(pd.DataFrame({"pod": ["x"]}), [])


# -- every rule in one labels frame -----------------------------------------------------------

T0 = pd.Timestamp("2025-10-30T08:00:00Z")


def _synthetic_spec(kind: str, name: str, cpu: int, controller: str | None = None) -> InferenceRequest:
    return InferenceRequest(namespace="apps", workload_kind=kind, workload_name=name,
                            annotations={CONTROLLER_ANNOTATION: controller} if controller else {},
                            containers=[ContainerSpec(name="main", image="example/app:1", req_cpu_mcpu=cpu, req_mem_mib=256)])


API = _synthetic_spec("Deployment", "api", 500)
DB_V1, DB_V2 = _synthetic_spec("StatefulSet", "db", 1000), _synthetic_spec("StatefulSet", "db", 2000)
AGENT_POD = _synthetic_spec("Pod", "agent-x1", 50)  # its DaemonSet `agent` was not collected
MIXED_SPECS = [
    API,
    _synthetic_spec("ReplicaSet", "api-7d9f", 500, controller="Deployment/api"),
    _synthetic_spec("Pod", "api-7d9f-c3", 500, controller="ReplicaSet/api-7d9f"),  # two hops to api
    DB_V1, DB_V2, AGENT_POD,
    _synthetic_spec("ReplicaSet", "old-5c", 100, controller="Deployment/old"),  # its owner was not collected
    _synthetic_spec("Deployment", "idle", 10),  # only a repeated label row names it
]


def _mixed_labels() -> pd.DataFrame:
    """Label rows for every join rule and reason, in no particular order, repeats last."""
    pods: list[tuple[str, str, str, int, list[str | None]]] = [  # pod, kind, name, windows, spec_hash per window
        ("db-2", "StatefulSet", "db", 1, ["0" * 16]),
        ("api-7d9f-b2", "ReplicaSet", "api-7d9f", 2, [None, None]),
        ("old-5c-z", "ReplicaSet", "old-5c", 2, [None, None]),
        ("db-0", "StatefulSet", "db", 2, [spec_hash(DB_V2)] * 2),
        ("api-7d9f-a1", "Deployment", "api", 3, [None, "", None]),
        ("gone-1", "Deployment", "gone", 1, [None]),
        ("db-1", "StatefulSet", "db", 2, ["", None]),
        ("agent-x1", "DaemonSet", "agent", 2, [None, None]),
        ("api-7d9f-c3", "Pod", "api-7d9f-c3", 2, [None, None]),
    ]
    records = [{"window_start": T0 + pd.Timedelta(minutes=minute), "window_seconds": 60, "namespace": "apps", "pod": pod,
                "workload_kind": kind, "workload_name": name, "energy_joules": 6.0, "power_watts": 0.1,
                "kepler_line": "kepler-0.10", "spec_hash": hashes[minute]}
               for pod, kind, name, windows, hashes in pods for minute in reversed(range(windows))]
    # Repeated pod-windows: the first row of each is the one kept, whatever the repeat says.
    records.append({**records[[r["pod"] for r in records].index("api-7d9f-a1")], "window_start": T0 + pd.Timedelta(minutes=1),
                    "energy_joules": 999.0})
    records.append({**records[[r["pod"] for r in records].index("db-0")], "window_start": T0,
                    "workload_kind": "Deployment", "workload_name": "idle", "spec_hash": None})
    return pd.DataFrame.from_records(records, columns=[*LABEL_COLUMNS, "spec_hash"])


def test_a_mix_of_every_rule_joins_each_row_by_its_own_rule_in_row_key_order() -> None:
    frame, summary = build_dataset(_mixed_labels(), MIXED_SPECS, pod_spec_fallback=True)
    stand_in = AGENT_POD.model_copy(update={"workload_kind": "DaemonSet", "workload_name": "agent"})
    per_pod = {
        "agent-x1": ("DaemonSet", "agent", "pod-spec", spec_hash(stand_in), stand_in),
        "api-7d9f-a1": ("Deployment", "api", "workload", spec_hash(API), API),
        "api-7d9f-b2": ("Deployment", "api", "controller", spec_hash(API), API),
        "api-7d9f-c3": ("Deployment", "api", "controller", spec_hash(API), API),
        "db-0": ("StatefulSet", "db", "workload", spec_hash(DB_V2), DB_V2),
    }
    order = [(0, pod) for pod in sorted(per_pod)] + [(1, pod) for pod in sorted(per_pod)] + [(2, "api-7d9f-a1")]
    assert list(zip((frame["window_start"] - T0) // pd.Timedelta(minutes=1), frame["pod"])) == order
    assert frame.index.equals(pd.RangeIndex(len(order))) and (frame["namespace"] == "apps").all()
    for row in frame.itertuples():
        kind, name, rule, hash_, request = per_pod[row.pod]
        assert (row.workload_kind, row.workload_name, row.join_rule, row.spec_hash) == (kind, name, rule, hash_)
        assert InferenceRequest.model_validate_json(str(row.request_json)) == request
    assert frame["energy_joules"].tolist() == [6.0] * len(order)  # not the repeat's 999 J
    # One category per distinct joined spec, however many pods and windows share it.
    assert list(frame["request_json"].cat.categories) == sorted({request_json(r) for r in (API, DB_V2, stand_in)})
    assert [str(frame[c].dtype) for c in DATASET_COLUMNS] == [
        "datetime64[us, UTC]", "int64", "str", "str", "str", "str", "str", "str", "category", "float64", "float64"]

    assert (summary.label_rows, summary.label_pods, summary.label_workloads) == (19, 9, 8)
    assert summary.joined == Tally(rows=11, pods=5, workloads=3)
    assert summary.by_rule == {"controller": Tally(rows=4, pods=2, workloads=1), "pod-spec": Tally(rows=2, pods=1, workloads=1),
                               "workload": Tally(rows=5, pods=2, workloads=2)}
    hashes = sorted([spec_hash(DB_V1), spec_hash(DB_V2)])
    assert summary.unjoined == {
        "duplicate-row": Tally(rows=2, pods=2, workloads=2, examples=[
            "apps/api-7d9f-a1 at 2025-10-30 08:01:00+00:00", "apps/db-0 at 2025-10-30 08:00:00+00:00"]),
        "ambiguous": Tally(rows=2, pods=1, workloads=1, examples=[
            f"apps/StatefulSet/db: 2 different specs collected ({', '.join(hashes)})"]),
        "no-spec": Tally(rows=1, pods=1, workloads=1, examples=["apps/Deployment/gone: no spec for Deployment/gone"]),
        "owner-without-spec": Tally(rows=2, pods=1, workloads=1, examples=[
            "apps/ReplicaSet/old-5c: no spec for Deployment/old (owner of ReplicaSet/old-5c)"]),
        "spec-hash-mismatch": Tally(rows=1, pods=1, workloads=1, examples=[
            f"apps/StatefulSet/db: labels say spec {'0' * 16}, collected {hashes}"]),
    }
    assert list(summary.unjoined)[0] == "duplicate-row"
    assert summary.joined.rows + sum(t.rows for t in summary.unjoined.values()) == summary.label_rows
    # Only the specs joined count as used: not the hops on the way, nor a workload named by a repeat alone.
    assert (summary.specs, summary.specs_joined) == (7, 3)
    assert summary.specs_unused_examples == ["apps/Deployment/idle", "apps/Pod/api-7d9f-c3", "apps/ReplicaSet/api-7d9f",
                                             "apps/ReplicaSet/old-5c"]


def test_without_the_stand_in_the_mix_loses_only_the_pod_spec_rows() -> None:
    frame, summary = build_dataset(_mixed_labels(), MIXED_SPECS)
    assert "agent-x1" not in set(frame["pod"]) and len(frame) == 9
    assert summary.unjoined["no-spec"] == Tally(rows=3, pods=2, workloads=2, examples=[
        "apps/DaemonSet/agent: no spec for DaemonSet/agent", "apps/Deployment/gone: no spec for Deployment/gone"])
    assert set(summary.by_rule) == {"controller", "workload"} and summary.specs_joined == 2


def test_categorical_label_columns_and_the_parquet_path_join_as_text_columns_do(tmp_path: Path) -> None:
    labels_frame = _mixed_labels()
    expected, expected_summary = build_dataset(labels_frame, MIXED_SPECS, pod_spec_fallback=True)
    as_categories = labels_frame.astype({c: "category" for c in ["namespace", "pod", "workload_kind", "workload_name",
                                                                 "spec_hash"]})
    # Categories out of sorted order: the dataset's row order must still follow the values.
    as_categories["pod"] = as_categories["pod"].cat.reorder_categories(as_categories["pod"].cat.categories[::-1])
    frame, summary = build_dataset(as_categories, MIXED_SPECS, pod_spec_fallback=True)
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)
    assert summary == expected_summary

    labels_frame.to_parquet(tmp_path / "labels.parquet")
    summary = run_dataset(tmp_path / "labels.parquet", [write_requests(MIXED_SPECS, tmp_path / "specs.ndjson")],
                          tmp_path / "dataset.parquet", pod_spec_fallback=True)
    assert summary == expected_summary
    written = read_dataset(tmp_path / "dataset.parquet")
    pd.testing.assert_frame_equal(written, expected, check_exact=True)
    compact = read_dataset(tmp_path / "dataset.parquet", text_as_categories=True)
    assert all(isinstance(compact[c].dtype, pd.CategoricalDtype) for c in ["namespace", "pod", "join_rule", "spec_hash"])
    assert compact.astype({c: "str" for c in compact.columns if c != "request_json" and compact[c].dtype == "category"}
                          ).equals(written)


def test_the_join_builds_no_python_object_per_label_row() -> None:
    """Guards the vectorised join: a Python tuple, str or Timestamp per label row is hundreds of
    bytes a row (the row-by-row join traced ~735 B/row here), integer codes are tens."""
    pods, windows = 100, 2000
    pod_of_row = np.repeat(np.arange(pods), windows)
    labels_frame = pd.DataFrame({
        "window_start": T0 + pd.to_timedelta(np.tile(np.arange(windows), pods), unit="min"),
        "window_seconds": 60, "namespace": "apps",
        "pod": pd.array([f"api-{p}" for p in range(pods)], dtype="str").take(pod_of_row),
        "workload_kind": "Deployment", "workload_name": "api", "energy_joules": 6.0, "power_watts": 0.1,
    })
    tracemalloc.start()
    try:
        frame, _ = build_dataset(labels_frame, [API])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frame) == pods * windows
    assert peak / len(frame) < 300, f"{peak / len(frame):.0f} bytes traced per label row"
