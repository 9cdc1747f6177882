"""The collect step against RECORDED Kubernetes API list responses.

The `kubernetes` client talks HTTP to a tiny server on 127.0.0.1 (`kube_api_server.py`) that
answers from list responses recorded in `fixtures/kube_api/` (and, in one test, from list
responses built at test time from the shared manifests). A real kube-apiserver version of these
tests comes with the e2e harness (tests/e2e, another engineer's), which starts etcd and
kube-apiserver on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.trainer.kube_api_server import RecordedKubeApi, collection_path, list_response, load_recorded
from trainer.collect import (
    CONTROLLER_ANNOTATION,
    collect_requests,
    controller_of,
    read_requests,
    run_collect,
    write_requests,
)
from trainer.kube import ENDPOINTS_BY_KIND, KubeSettings, WorkloadReader
from webhook.model.extract import to_inference_request, workload_kind_of
from webhook.model.manifests import load_documents
from webhook.model.schema import InferenceRequest, spec_hash

MANIFESTS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "manifests"
PLURALS = {"Pod": "pods", "ReplicationController": "replicationcontrollers", "Deployment": "deployments",
           "StatefulSet": "statefulsets", "DaemonSet": "daemonsets", "ReplicaSet": "replicasets", "Job": "jobs",
           "CronJob": "cronjobs"}


@pytest.fixture()
def recorded_api() -> Iterator[RecordedKubeApi]:
    lists, events = load_recorded()
    with RecordedKubeApi(lists, events) as api:
        yield api


def _recorded_manifests() -> list[dict]:
    lists, _ = load_recorded()
    manifests = []
    for document in lists.values():
        for item in document["items"]:
            manifests.append({"apiVersion": document["apiVersion"], "kind": document["kind"].removesuffix("List"), **item})
    return manifests


def _without_mark(request: InferenceRequest) -> InferenceRequest:
    annotations = {k: v for k, v in request.annotations.items() if k != CONTROLLER_ANNOTATION}
    return request.model_copy(update={"annotations": annotations})


def _key(request: InferenceRequest) -> tuple[str, str, str]:
    return request.namespace, request.workload_kind, request.workload_name


def test_collect_lists_every_kind_and_extracts_with_the_webhook_function(recorded_api: RecordedKubeApi, tmp_path: Path) -> None:
    out = tmp_path / "requests.ndjson"
    report = run_collect(KubeSettings(kubeconfig=str(recorded_api.write_kubeconfig(tmp_path / "kubeconfig"))), out,
                         progress=False)
    assert report.objects_per_kind == {"Pod": 8, "ReplicationController": 0, "Deployment": 2, "StatefulSet": 1,
                                       "DaemonSet": 1, "ReplicaSet": 1, "Job": 2, "CronJob": 1}
    # The one unreadable object is reported with its field, not dropped silently.
    assert [(f.namespace, f.kind, f.name, f.field) for f in report.failures] == [
        ("shop", "Deployment", "broken", "spec.template.spec.containers[0].resources.requests.cpu")
    ]
    assert "lots" in report.failures[0].problem
    assert report.summary()["failures"] == 1 and len(report.requests) == 15

    written = read_requests(out)
    assert written == report.requests
    # Each line is exactly one InferenceRequest.model_dump(mode="json").
    for line, request in zip(out.read_text().splitlines(), written):
        assert json.loads(line) == request.model_dump(mode="json")

    # Same requests as the webhook's extraction of each object, plus the controller mark.
    by_key = {_key(r): r for r in written}
    for manifest in _recorded_manifests():
        if manifest["metadata"]["name"] == "broken":
            continue
        expected = to_inference_request(manifest)
        got = by_key[_key(expected)]
        assert _without_mark(got) == expected
        assert spec_hash(got) == spec_hash(expected)  # the mark is outside the spec hash


def test_controller_owned_objects_are_kept_and_marked(recorded_api: RecordedKubeApi) -> None:
    with _client(recorded_api) as api:
        report = collect_requests(WorkloadReader(api))
    owners = {_key(r): controller_of(r) for r in report.requests}
    assert owners[("shop", "Pod", "web-5f7d8c9b6d-abcde")] == ("ReplicaSet", "web-5f7d8c9b6d")
    assert owners[("shop", "ReplicaSet", "web-5f7d8c9b6d")] == ("Deployment", "web")
    assert owners[("batch", "Job", "nightly-report-28930000")] == ("CronJob", "nightly-report")
    assert owners[("kube-system", "Pod", "etcd-node1")] == ("Node", "node1")
    # The Deployment and the bare Pod of the same name stay two different, told-apart specs.
    assert owners[("shop", "Deployment", "web")] is None
    assert owners[("shop", "Pod", "web")] is None
    assert report.controller_owned == 8  # 6 pods, the ReplicaSet, the CronJob's Job


def _client(api: RecordedKubeApi):  # type: ignore[no-untyped-def]
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = api.url
    return client.ApiClient(configuration)


def test_lists_are_read_page_by_page(recorded_api: RecordedKubeApi) -> None:
    with _client(recorded_api) as api:
        listed = WorkloadReader(api).list_kind("Pod", page_size=3)
    assert len(listed.items) == 8 and listed.resource_version == "48213"
    assert all(item["kind"] == "Pod" and item["apiVersion"] == "v1" for item in listed.items)
    pages = [p for p in recorded_api.requests if p.startswith("/api/v1/pods?")]
    assert len(pages) == 3 and "continue=3" in pages[1] and "continue=6" in pages[2]


def test_namespaces_limit_what_is_listed(recorded_api: RecordedKubeApi) -> None:
    with _client(recorded_api) as api:
        report = collect_requests(WorkloadReader(api), namespaces=["batch"])
    assert {r.namespace for r in report.requests} == {"batch"}
    assert sorted(_key(r)[1:] for r in report.requests) == [
        ("CronJob", "nightly-report"), ("Job", "nightly-report-28930000"), ("Job", "once"),
        ("Pod", "nightly-report-28930000-xk2p9"), ("Pod", "once-q9z8x")]
    assert all("/namespaces/batch/" in p for p in recorded_api.requests)


def test_watch_keeps_objects_that_came_and_went(recorded_api: RecordedKubeApi) -> None:
    with _client(recorded_api) as api:
        report = collect_requests(WorkloadReader(api), watch_seconds=1)
    assert report.watch_events == 4  # job ADDED; pod ADDED, MODIFIED, DELETED
    keys = {_key(r) for r in report.requests}
    assert ("batch", "Job", "nightly-report-28930060") in keys
    # Three events of one pod with one spec are one request.
    assert sum(1 for k in keys if k[2] == "nightly-report-28930060-q7w2e") == 1
    watches = [p for p in recorded_api.requests if "watch=" in p]
    assert len(watches) == 8 and all("resourceVersion=48213" in p for p in watches)


def test_written_ndjson_replaces_the_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "requests.ndjson"
    out.write_text("old\n")
    request = to_inference_request(_recorded_manifests()[0])
    write_requests([request], out)
    assert read_requests(out) == [request]
    assert [p.name for p in tmp_path.iterdir()] == ["requests.ndjson"]  # no temporary file left


def test_a_bad_ndjson_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text('{"workload_kind": "Pod", "containers": [{"name": "a"}]}\n{"workload_kind": "Pod"}\n')
    with pytest.raises(ValueError, match=r"bad.ndjson: cannot read it as NDJSON InferenceRequests .*: line 2: "):
        read_requests(path)


def test_collect_matches_direct_extraction_of_the_shared_manifests(tmp_path: Path) -> None:
    """List responses built at test time from the shared manifests (never copied into the
    repository): collecting them gives what extracting each manifest gives."""
    if not MANIFESTS_DIR.is_dir():
        pytest.fail(f"shared manifests not found at {MANIFESTS_DIR}", pytrace=False)
    by_kind: dict[str, list[dict]] = {kind: [] for kind in PLURALS}
    for path in sorted(MANIFESTS_DIR.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json"):
            continue
        for document in load_documents(path.read_text(encoding="utf-8")):
            if not isinstance(document, dict) or workload_kind_of(document) is None:
                continue
            # The apiserver fills the namespace in; a CronJob of batch/v1beta1 is served as batch/v1.
            document = json.loads(json.dumps(document))
            document.setdefault("metadata", {}).setdefault("namespace", "default")
            document["apiVersion"] = ENDPOINTS_BY_KIND[document["kind"]].api_version
            by_kind[document["kind"]].append(document)
    lists = {
        collection_path(ENDPOINTS_BY_KIND[kind].api_version, PLURALS[kind]):
            list_response(ENDPOINTS_BY_KIND[kind].api_version, f"{kind}List", items, "7")
        for kind, items in by_kind.items()
    }
    with RecordedKubeApi(lists) as api, _client(api) as client_:
        report = collect_requests(WorkloadReader(client_))

    expected: set[tuple[str, str]] = set()
    failed: set[tuple[str, str, str]] = set()
    for kind, items in by_kind.items():
        for item in items:
            try:
                expected.add((json.dumps(to_inference_request(item).model_dump(mode="json"), sort_keys=True), kind))
            except ValueError:
                failed.add((item["metadata"]["namespace"], kind, item["metadata"]["name"]))
    got = {(json.dumps(_without_mark(r).model_dump(mode="json"), sort_keys=True), r.workload_kind) for r in report.requests}
    assert got == expected
    assert {(f.namespace, f.kind, f.name) for f in report.failures} == failed
    assert sum(len(items) for items in by_kind.values()) >= 25  # every kind is represented
    assert all(by_kind[kind] for kind in PLURALS if kind != "ReplicationController")


def test_typed_client_objects_are_accepted_through_sanitize_for_serialization() -> None:
    from kubernetes import client

    from trainer.collect import request_of
    from trainer.kube import as_manifest

    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="typed", namespace="shop", owner_references=[
            client.V1OwnerReference(api_version="apps/v1", kind="ReplicaSet", name="typed-rs", uid="u1", controller=True)]),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="main", image="nginx:1.27", resources=client.V1ResourceRequirements(requests={"cpu": "250m"}))]),
    )
    manifest = as_manifest(pod, "Pod", "v1")  # list items lack kind and apiVersion
    assert manifest["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"  # camelCase, as the API serves it
    request = request_of(manifest)
    assert request.containers[0].req_cpu_mcpu == 250 and controller_of(request) == ("ReplicaSet", "typed-rs")
