"""The dataset step's join rules, on specs extracted from the recorded API objects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.trainer.kube_api_server import load_recorded
from trainer.collect import CONTROLLER_ANNOTATION, extract_requests, write_requests
from trainer.dataset import DATASET_COLUMNS, build_dataset, read_dataset, run_dataset, summary_path
from trainer.labels import LABEL_COLUMNS
from webhook.schema import InferenceRequest, spec_hash


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
