"""The real server over real TLS: every shared AdmissionReview and manifest, and the debug endpoints."""

from __future__ import annotations

import copy
import gc
import json
import signal
import ssl
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from webhook.admission import annotations as keys
from webhook.model.extract import workload_kind_of
from webhook.model.artifact import build_pipeline, save_model

from harness.webhook_process import WebhookProcess, create_certs
from .reviews import apply, patch_of, review, wrap_request


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(cert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    with WebhookProcess(cert_dir, tmp_path_factory.mktemp("log") / "webhook.log", "--max-body-bytes", "65536") as process:
        yield process


@pytest.fixture(scope="module")
def client(server: WebhookProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _mutate(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/mutate", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == body["request"]["uid"]
    assert answer["response"]["allowed"] is True
    return answer


def _check_round_trip(client: httpx.Client, obj: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The patch applies, the annotations are numbers, and the patched object needs no second patch."""
    patched = apply(obj, answer)
    notes = patched["metadata"]["annotations"]
    for key in keys.NUMERIC_KEYS:
        assert float(notes[key]) >= 0, key
    assert patched.get("spec") == obj.get("spec")
    second = _mutate(client, review(patched, operation="UPDATE", old=patched))
    assert patch_of(second) is None
    deleted = _mutate(client, review(None, operation="DELETE", old=patched, kind=patched["kind"]))
    assert patch_of(deleted) is None
    return notes


def _shared_reviews(shared_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    reviews = []
    for path in sorted((shared_dir / "fixtures" / "admission-reviews").glob("*.json")):
        document = json.loads(path.read_text())
        if path.name.endswith(".request.json"):
            document = wrap_request(document)
        reviews.append((path.name, document))
    return reviews


def test_every_shared_admission_review(client: httpx.Client, shared_dir: Path) -> None:
    patched = 0
    for name, body in _shared_reviews(shared_dir):
        if "request" not in body:  # a recorded response, not a request: it must be refused clearly
            response = client.post("/mutate", json=body)
            assert response.status_code == 400 and "request" in response.json()["error"], name
            continue
        answer = _mutate(client, body)
        request = body["request"]
        obj = request.get("object")
        is_workload = isinstance(obj, dict) and workload_kind_of(obj) is not None
        if request["operation"] in ("CREATE", "UPDATE") and is_workload and not (
            obj["kind"] == "Pod" and any(o.get("controller") for o in obj["metadata"].get("ownerReferences", []))
        ):
            assert patch_of(answer), name
            _check_round_trip(client, obj, answer)
            patched += 1
        else:
            assert patch_of(answer) is None, name
    assert patched >= 5


def test_dry_run_is_answered_like_any_other(client: httpx.Client, shared_dir: Path) -> None:
    obj = yaml.safe_load((shared_dir / "fixtures" / "manifests" / "seed__nginx-deploy.yaml").read_text())
    wet = _mutate(client, review(obj))
    dry = _mutate(client, review(obj, dryRun=True))
    assert patch_of(dry) == patch_of(wet) and patch_of(dry)


def test_every_shared_manifest(client: httpx.Client, shared_dir: Path) -> None:
    seen_kinds = set()
    for path in sorted((shared_dir / "fixtures" / "manifests").iterdir()):
        for obj in yaml.safe_load_all(path.read_text()):
            if not isinstance(obj, dict) or workload_kind_of(obj) is None:
                continue
            answer = _mutate(client, review(obj))
            assert patch_of(answer), path.name
            notes = _check_round_trip(client, obj, answer)
            assert notes[keys.BASIS] == "prior" and notes[keys.MODEL] == "ccf-prior-v3"
            seen_kinds.add(obj["kind"])
    assert seen_kinds == {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


def test_not_an_admission_review_is_a_400(client: httpx.Client) -> None:
    response = client.post("/mutate", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = client.post("/mutate", json={"apiVersion": "v1", "kind": "Pod"})
    assert response.status_code == 400 and "kind: expected 'AdmissionReview'" in response.json()["error"]


def test_body_limit_is_a_413(client: httpx.Client) -> None:
    response = client.post("/mutate", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "65536-byte limit" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for _ in range(20):
            yield b" " * 8192

    response = client.post("/mutate", content=chunks())
    assert response.status_code == 413


def test_predict_keeps_the_prototype_shape_and_sees_resources(client: httpx.Client, shared_dir: Path) -> None:
    lines = (shared_dir / "data" / "seed-kepler" / "inference_requests.ndjson").read_text().splitlines()
    by_resources: dict[str, float] = {}
    for line in lines:
        response = client.post("/predict", content=line, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        out = response.json()
        for field in ("pred_energy_step_j", "workload_kind", "workload_name", "namespace", "spec_hash"):
            assert field in out
        assert out["pred_energy_step_j"] == pytest.approx(out["pod_power_watts"] * 60)
        containers = json.loads(line)["containers"]
        if any(c["req_cpu_mcpu"] is None for c in containers):
            continue  # no requests: the documented default stands in, so it may equal an explicit spec
        signature = json.dumps([[c[k] for k in ("req_cpu_mcpu", "req_mem_mib", "lim_cpu_mcpu", "lim_mem_mib")] for c in containers])
        by_resources.setdefault(signature, out["pod_power_watts"])
    # The prototype answered nearly the same number for every spec: different resources must differ here.
    assert len(set(by_resources.values())) == len(by_resources) >= 4


def test_predict_names_bad_fields(client: httpx.Client) -> None:
    body = {"workload_kind": "Deployment", "containers": [{"name": "c", "req_cpu_mcpu": -5, "req_cpu_mpcu": 1}]}
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    fields = {p["field"] for p in response.json()["problems"]}
    assert {"containers.0.req_cpu_mcpu", "containers.0.req_cpu_mpcu"} <= fields


def test_yaml_endpoints(client: httpx.Client, shared_dir: Path) -> None:
    text = (shared_dir / "fixtures" / "manifests" / "k8s-examples__guestbook-all-in-one_multidoc.yaml").read_text()
    inferred = client.post("/infer/from-yaml", content=text, headers={"content-type": "text/plain"})
    assert inferred.status_code == 200
    body = inferred.json()
    assert [r["request"]["workload_name"] for r in body["requests"]] == ["redis-master", "redis-replica", "frontend"]
    assert [s["kind"] for s in body["skipped"]] == ["Service"] * 3
    predicted = client.post("/predict/from-yaml", content=text).json()
    assert [p["workload_pods"] for p in predicted["predictions"]] == [1, 2, 3]
    assert len(predicted["skipped"]) == 3
    bad = client.post("/predict/from-yaml", content="kind: Deployment\n  x: [\n")
    assert bad.status_code == 400 and "line" in bad.json()["error"]
    unreadable = client.post("/infer/from-yaml", content="apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: [{name: c, resources: {requests: {cpu: abc}}}]}}}\n")
    assert unreadable.status_code == 422
    assert unreadable.json()["errors"][0]["field"] == "spec.template.spec.containers[0].resources.requests.cpu"


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["model"]["basis"] == "prior" and ready["model"]["error"] is None
    text = client.get("/metrics").text
    assert 'energetiscope_requests_total{endpoint="mutate",result="patched"}' in text
    assert 'energetiscope_request_duration_seconds_bucket{endpoint="mutate"' in text
    assert 'energetiscope_predictions_total{basis="prior"}' in text
    assert 'energetiscope_model_info{basis="prior",error="",model="ccf-prior-v3",sha256=""} 1.0' in text
    assert 'python_gc_collections_total{generation="2"}' in text and "process_resident_memory_bytes" in text


def test_objects_alive_after_start_are_frozen_out_of_the_garbage_collector(tmp_path: Path) -> None:
    """A full collection over the loaded model would pause reviews for tens of ms."""
    from starlette.testclient import TestClient

    from webhook.http.server import ServeSettings, build_app

    from webhook.collector import YOUNG_GENERATION_THRESHOLD

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    assert thresholds[0] != YOUNG_GENERATION_THRESHOLD
    app = build_app(ServeSettings(cert_dir=tmp_path, kube_access="off"))
    try:
        with TestClient(app) as client:
            assert client.get("/readyz").json()["model"]["loaded"] is True
            assert gc.get_freeze_count() > 10_000
            # Young objects are collected when they pile up, not whenever reviews in flight hold 700.
            assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_tls_is_verified_against_the_generated_ca(server: WebhookProcess, tmp_path: Path) -> None:
    other_ca = create_certs(tmp_path / "other")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(other_ca / "ca.crt"))) as stranger:
        with pytest.raises(httpx.ConnectError):
            stranger.get(f"{server.url}/healthz")
    with httpx.Client(verify=False) as plain:
        with pytest.raises(httpx.TransportError):
            plain.get(f"http://localhost:{server.port}/healthz")


def _tiny_model(path: Path, model_id: str, watts: float) -> None:
    from webhook.model.schema import ContainerSpec, InferenceRequest

    requests = [InferenceRequest(workload_kind="Deployment", containers=[ContainerSpec(name="c", image="nginx", req_cpu_mcpu=m)])
                for m in (100, 200, 400, 800)]
    save_model(path, build_pipeline(n_neighbors=2).fit(requests, [watts] * 4), model_id)


def _wait_for_model(client: httpx.Client, model_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = client.get("/readyz").json()["model"]
        if model["id"] == model_id:
            return model
        time.sleep(0.1)
    raise AssertionError(f"model {model_id} did not load within {timeout} s; readyz says {model}")


def test_model_reloads_on_file_change_and_sighup_and_survives_a_bad_file(cert_dir: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "model.esmodel"
    _tiny_model(artifact, "model-a", 5.0)
    nginx = {"workload_kind": "Deployment", "containers": [{"name": "c", "image": "nginx", "req_cpu_mcpu": 200}]}
    with WebhookProcess(cert_dir, tmp_path / "log", "--model", str(artifact), "--watch-interval", "0.2") as watched:
        with watched.client() as client:
            assert client.post("/predict", json=nginx).json()["model"] == "model-a"
            _tiny_model(artifact, "model-b", 7.0)
            _wait_for_model(client, "model-b")
            out = client.post("/predict", json=nginx).json()
            assert out["model"] == "model-b" and out["basis"] == "model"
            assert out["pod_power_watts"] == pytest.approx(7.0)
            artifact.write_bytes(b"not a model")
            deadline = time.monotonic() + 15
            while client.get("/readyz").json()["model"]["error"] is None and time.monotonic() < deadline:
                time.sleep(0.1)
            model = client.get("/readyz").json()["model"]
            assert model["id"] == "model-b" and "not an EnergetiScope model" in model["error"]
            assert client.post("/predict", json=nginx).json()["model"] == "model-b"
    with WebhookProcess(cert_dir, tmp_path / "log2", "--model", str(artifact), "--watch-interval", "3600") as hup:
        with hup.client() as client:
            assert client.get("/readyz").json()["model"]["basis"] == "prior"  # bad file at start: the prior serves
            _tiny_model(artifact, "model-c", 3.0)
            hup.signal(signal.SIGHUP)
            _wait_for_model(client, "model-c")


def test_model_reload_under_load_drops_nothing(cert_dir: Path, tmp_path: Path) -> None:
    import threading

    artifact = tmp_path / "model.esmodel"
    _tiny_model(artifact, "model-0", 1.0)
    nginx = {"workload_kind": "Deployment", "containers": [{"name": "c", "image": "nginx", "req_cpu_mcpu": 200}]}
    with WebhookProcess(cert_dir, tmp_path / "log", "--model", str(artifact), "--watch-interval", "0.1") as server:
        stop = threading.Event()
        answers: list[tuple[int, str]] = []

        def load() -> None:
            with server.client() as client:
                while not stop.is_set():
                    response = client.post("/predict", json=nginx)
                    answers.append((response.status_code, response.json().get("model", "")))

        workers = [threading.Thread(target=load) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            with server.client() as client:
                for generation in range(1, 4):
                    _tiny_model(artifact, f"model-{generation}", float(generation + 1))
                    _wait_for_model(client, f"model-{generation}")
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert answers and all(status == 200 for status, _ in answers)
    served = [model for _, model in answers]
    assert {"model-0", "model-3"} <= set(served)
    # Every answer was made by one of the artifacts written, whole: none failed mid-swap.
    assert set(served) <= {f"model-{g}" for g in range(4)}
