"""The prediction process (webhook.model.process): a real child, spawned, loading a real artifact
from disk; its answers against the same artifact predicting in this process, how it fails over,
and the real server with it and without it (stuck models: test_hardening.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest

import webhook.admission.pipeline as pipeline_module
from harness.webhook_process import WebhookProcess, create_certs
from webhook.admission.mutate import MutatingHandler
from webhook.admission.pipeline import ReviewPipeline
from webhook.admission.review import parse_review

from webhook.model.artifact import build_pipeline, file_sha256, load_model, save_model
from webhook.model.process import PredictionFailed, PredictionProcess, ProcessUnavailable, answers
from webhook.model.prior import PriorPredictor
from webhook.model.schema import ContainerSpec, InferenceRequest
from webhook.model.service import PredictionService

from .reviews import patch_of, review

READY_SECONDS = 60.0  # a spawned child imports numpy and scikit-learn, on a busy CI machine


def _request(cpu_millicores: int, image: str = "nginx", gpus: float = 0.0) -> InferenceRequest:
    return InferenceRequest(workload_kind="Deployment", gpu_count=gpus,
                            containers=[ContainerSpec(name="c", image=image, req_cpu_mcpu=cpu_millicores,
                                                      req_mem_mib=cpu_millicores / 2)])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.esmodel"
    requests = [_request(m, image) for m in (100, 200, 400, 800, 1600) for image in ("nginx", "redis", "postgres")]
    power = [0.2 + m / 1000 * (1.0 + i % 3) for i, m in enumerate(r.containers[0].req_cpu_mcpu for r in requests)]
    save_model(path, build_pipeline(n_neighbors=3).fit(requests, power), "process-test")
    return path


async def _ready(process: PredictionProcess) -> None:
    for _ in range(int(READY_SECONDS / 0.05)):
        if process.ready or process.ended:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the prediction process did not start: {process.status()}")


def test_the_process_predicts_exactly_what_this_process_would(artifact: Path) -> None:
    queries = [_request(m, image, gpus) for m in (50, 150, 700, 3000) for image in ("nginx", "httpd")
               for gpus in (0.0, 1.0)]
    model = load_model(artifact, prior=PriorPredictor())
    expected = [model.predict([query])[0] for query in queries]  # one at a time, as a worker thread predicts

    async def main() -> list[object]:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor())
        try:
            await _ready(process)
            assert process.status()["state"] == "ready" and process.model_id == "process-test"
            # All sent at once: answered in order, each to its own request.
            return list(await asyncio.gather(*(process.predict(q) for q in queries)))
        finally:
            process.close()

    assert asyncio.run(main()) == expected


def test_a_batch_is_answered_request_by_request_and_a_failure_stays_its_own(artifact: Path) -> None:
    model = load_model(artifact, prior=PriorPredictor())
    queries = [_request(m, image) for m in (50, 700, 3000) for image in ("nginx", "httpd")]
    batch = [q.model_dump_json().encode() for q in queries]
    assert answers(model, batch) == [model.predict([q])[0] for q in queries]
    # A request that does not parse fails alone.
    replies = answers(model, [batch[0], b'{"workload_kind": "Deployment"', batch[1]])
    assert replies[0] == model.predict([queries[0]])[0] and replies[2] == model.predict([queries[1]])[0]
    assert isinstance(replies[1], PredictionFailed) and "ValidationError" in replies[1].error

    # So does one the model cannot predict: a stand-in that raises for one image (the real model
    # raises for none of these), around the real model for the rest.
    class RaisesForOneImage:
        def predict(self, requests: list[InferenceRequest]) -> list[object]:
            if any(r.containers[0].image == "boom" for r in requests):
                raise RuntimeError("cannot predict boom")
            return model.predict(requests)

    boom = _request(100, "boom").model_dump_json().encode()
    replies = answers(RaisesForOneImage(), [batch[2], boom, batch[3]])  # type: ignore[arg-type]
    assert replies[0] == model.predict([queries[2]])[0] and replies[2] == model.predict([queries[3]])[0]
    assert replies[1] == PredictionFailed("RuntimeError: cannot predict boom")


def test_a_process_that_cannot_load_the_artifact_ends_and_says_why(artifact: Path) -> None:
    async def main() -> None:
        process = PredictionProcess(artifact, "0" * 64, PriorPredictor())
        try:
            await _ready(process)
            assert process.ended and not process.ready
            assert "could not load the model" in str(process.error) and "expected " + "0" * 64 in str(process.error)
            assert process.load_failed  # the pipeline does not restart it for the same artifact
            with pytest.raises(ProcessUnavailable):
                await process.predict(_request(100))
        finally:
            process.close()

    asyncio.run(main())


@pytest.mark.parametrize("bounds", [{"max_outstanding_bytes": 10}, {"max_outstanding": 0}])
def test_requests_beyond_what_it_may_hold_unanswered_fail_over(artifact: Path, bounds: dict[str, int]) -> None:
    async def main() -> None:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor(), **bounds)
        try:
            await _ready(process)
            with pytest.raises(ProcessUnavailable, match="as many requests as it may"):
                await process.predict(_request(100))
            assert process.ready  # refusing one request does not end it
        finally:
            process.close()

    asyncio.run(main())


def test_an_answer_nobody_waits_for_any_more_is_still_handed_over(artifact: Path) -> None:
    """A review that ran out of time stops waiting; its answer must still reach the cache."""
    query = _request(640, "httpd")
    expected = load_model(artifact, prior=PriorPredictor()).predict([query])[0]

    async def main() -> list[object]:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor())
        handed: list[object] = []
        try:
            await _ready(process)
            waiting = asyncio.ensure_future(process.submit(query, handed.append))
            waiting.cancel()  # as the time budget cancels a review's wait
            with pytest.raises(asyncio.CancelledError):
                await waiting
            for _ in range(1000):
                if handed:
                    break
                await asyncio.sleep(0.01)
            # The next request still gets its own answer: the first one was read, in order.
            assert await process.predict(_request(100)) == load_model(artifact, prior=PriorPredictor()).predict(
                [_request(100)])[0]
            return handed
        finally:
            process.close()

    assert asyncio.run(main()) == [expected]


def test_a_process_not_ready_in_time_is_ended(artifact: Path) -> None:
    async def main() -> None:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor(), start_seconds=0.0)
        try:
            assert not process.ready and process.ended
            assert "not ready within 0 s" in str(process.error)
        finally:
            process.close()

    asyncio.run(main())


def test_a_review_is_answered_from_a_worker_thread_when_no_process_can_start(
        artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = PredictionService(PriorPredictor(), model_path=artifact)
    assert service.load()

    def cannot_fork(*args: object, **kwargs: object) -> None:
        raise BlockingIOError("fork: resource temporarily unavailable")

    monkeypatch.setattr(pipeline_module, "PredictionProcess", cannot_fork)
    pipeline = ReviewPipeline(service)

    async def main() -> str:
        pipeline.start_prediction_process()  # as the lifespan does: logged, not raised
        return (await pipeline.review(MutatingHandler(), parse_review(review(_deployment("web", "250m", "nginx"))))).outcome

    assert anyio.run(main) == "patched"
    assert pipeline.model_runs == {"thread": 1}
    assert pipeline.prediction_process_status()["state"] == "none"
    assert service.cache.misses == 1


def test_a_process_that_dies_fails_over_and_is_reported_ended(artifact: Path) -> None:
    async def main() -> None:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor())
        try:
            await _ready(process)
            await process.predict(_request(100))
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
            with pytest.raises(ProcessUnavailable):
                for _ in range(200):  # the loop reads the closed socket within a few iterations
                    await process.predict(_request(300))
                    await asyncio.sleep(0.01)
            assert process.ended and "it ended" in str(process.error)
        finally:
            process.close()

    asyncio.run(main())


@pytest.mark.parametrize("message, why", [
    ("not a list", "it answered with a str"),
    ([None], "it answered with a NoneType"),
    ([PredictionFailed("x"), PredictionFailed("y")], "it answered a request it was not sent"),
])
def test_an_answer_out_of_protocol_ends_the_process(artifact: Path, message: object, why: str) -> None:
    # What a child of another version, or a corrupted stream, could send: the answers could no
    # longer be matched to their requests, so the process ends and the request fails over.
    async def main() -> None:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor())
        try:
            await _ready(process)
            process._connection.send_bytes = lambda data: None  # type: ignore[method-assign]  # the child never hears
            waiting = process.submit(_request(100))
            process._receive(message)
            assert process.ended and why in str(process.error)
            with pytest.raises((ProcessUnavailable, RuntimeError)):
                await waiting
        finally:
            process.close()

    asyncio.run(main())


def test_closing_stops_the_child(artifact: Path) -> None:
    async def main() -> int:
        process = PredictionProcess(artifact, file_sha256(artifact), PriorPredictor())
        await _ready(process)
        pid = process.pid
        assert pid is not None
        process.close()
        assert process.status()["state"] == "ended"
        return pid

    pid = asyncio.run(main())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no such process


def _deployment(name: str, cpu: str, image: str) -> dict[str, object]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "c", "image": image, "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]}}}}


def _process_state(client: httpx.Client, wanted: str) -> dict[str, object]:
    deadline = time.monotonic() + READY_SECONDS
    while (state := client.get("/readyz").json()["prediction_process"])["state"] != wanted:
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    return state


def _model_runs(client: httpx.Client, where: str) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines()
                if line.startswith(f'energetiscope_model_runs_total{{where="{where}"}}'))
    return float(line.rsplit(" ", 1)[1])


def test_the_server_patches_alike_with_and_without_its_prediction_process(artifact: Path, tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    objects = [_deployment(f"app-{i}", cpu, image) for i, (cpu, image) in enumerate(
        (cpu, image) for cpu in ("50m", "300m", "2") for image in ("nginx", "redis", "busybox"))]
    patches = {}
    for where, runs_at in (("--prediction-process", "process"), ("--no-prediction-process", "thread")):
        with WebhookProcess(certs, tmp_path / f"log{where}", "--model", str(artifact), "--kube-access", "off",
                            where) as server, server.client() as client:
            if runs_at == "process":
                assert _process_state(client, "ready")["model_id"] == "process-test"
            patches[where] = [patch_of(client.post("/mutate", json=review(obj)).json()) for obj in objects]
            assert _model_runs(client, runs_at) == len(objects)
            assert _model_runs(client, "thread" if runs_at == "process" else "process") == 0
    assert all(patches["--prediction-process"])
    assert patches["--prediction-process"] == patches["--no-prediction-process"]


def test_the_server_predicts_in_threads_when_its_prediction_process_dies(artifact: Path, tmp_path: Path) -> None:
    certs = create_certs(tmp_path / "certs")
    with WebhookProcess(certs, tmp_path / "log", "--model", str(artifact), "--kube-access", "off") as server, \
            server.client() as client:
        child = _process_state(client, "ready")["pid"]
        assert isinstance(child, int)
        assert patch_of(client.post("/mutate", json=review(_deployment("before", "100m", "nginx"))).json())
        os.kill(child, signal.SIGKILL)
        state = _process_state(client, "ended")  # the loop reads the closed socket
        assert "it ended" in str(state["error"])
        after = client.post("/mutate", json=review(_deployment("after", "700m", "redis"))).json()
        assert patch_of(after) and not after["response"].get("warnings")
        assert _model_runs(client, "process") == 1 and _model_runs(client, "thread") == 1
        ready = client.get("/readyz")
        assert ready.status_code == 200  # a miss still has a model to run: still ready
        assert ready.json()["prediction_process"]["state"] == "ended"  # not restarted at once, and says why
