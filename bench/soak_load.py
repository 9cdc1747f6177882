"""The soak's admission load: a fixed rate of real AdmissionReviews, every answer checked, in a
process of its own.

Requests are due at start + i / rate whatever the server does (open loop, as `bench.fixed_rate`);
a request's latency runs from when it was due to the end of its answer. `connections` keep-alive
TLS connections take them in order, and each is closed and opened again after
`requests_per_connection` requests, so new TLS handshakes go on all the time: a rotated serving
certificate is met by new connections while old ones finish on the old one, as with an
apiserver whose idle connections expire.

Bodies are `bench.admission_body`'s Deployments (5-10 KB, Helm-dressed) with one extra label on
the object. Most requests carry the label's fixed value, so after their first review they are
cache hits; every `new_spec_every`-th carries a value never sent before, so its spec hash is new
and the model runs (and the object is read afresh). After a model reload every spec is new to
the cache, whose key holds the model id.

Before the timed load, `fill_specs` reviews of specs never sent before go as fast as the server
answers them (closed loop), so the prediction cache and the memo of objects read (both
`--cache-entries` long) are at their bound when the timed load starts: their filling is memory
that grows for minutes at a tenth of the rate, and is not a leak.

An answer counts as a failure unless it is HTTP 200 with an `admission.k8s.io/v1`
AdmissionReview whose response has the request's uid, `allowed: true` and a JSONPatch writing
`energetiscope.io/model`: a fail-open answer (allowed, no patch) is a failure here. A connection
that breaks, times out or cannot be opened fails the request on it.

It runs in its own process (`run_in_child`): the parent fits and writes model artifacts and
certificates during the run, and that CPU must not delay the sends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.admission_body import UID_PLACEHOLDER, deployment_variants, dress, review
from bench.fixed_rate import read_response

VARIANT_LABEL = "soak-variant"
VARIANT_PLACEHOLDER = "soak-variant-placeholder"
REPEATED_VALUE = b"r"  # the label value of requests whose spec repeats
MODEL_ANNOTATION = "energetiscope.io/model"
LATE_SEND_MILLISECONDS = 10.0
FAILURE_EXAMPLES = 10


@dataclass(frozen=True)
class LoadPlan:
    host: str
    port: int
    ca_file: str
    rate_per_second: float
    duration_seconds: float
    connections: int = 16
    requests_per_connection: int = 100
    variants: int = 256
    new_spec_every: int = 10  # every Nth request has a spec never sent before
    answer_timeout_seconds: float = 10.0
    server_hostname: str = "localhost"
    progress_every_seconds: float = 60.0
    fill_specs: int = 0  # new specs sent before the timed load (closed loop)
    fill_connections: int = 8


@dataclass(frozen=True)
class FillOutcome:
    reviews: int
    failed: int
    failures_by_reason: dict[str, int]
    seconds: float


@dataclass
class LoadOutcome:
    """Per request, in the order they were due: when (s after the start), latency (NaN when the
    transport failed), which model answered (index into `model_ids`, -1 when none) and whether
    the answer failed the check."""

    start_monotonic: float
    due_seconds: np.ndarray
    latency_ms: np.ndarray
    model_index: np.ndarray
    failed: np.ndarray
    new_spec: np.ndarray
    model_ids: list[str]
    failures_by_reason: dict[str, int]
    failure_examples: list[str]
    connections_opened: int
    max_send_lag_ms: float
    late_sends: int  # dispatched more than LATE_SEND_MILLISECONDS after they were due


def soak_bodies(variants: int) -> list[bytes]:
    """Compact review bodies, each with UID_PLACEHOLDER and VARIANT_PLACEHOLDER once."""
    bodies = []
    for draw in deployment_variants(variants):
        obj = dress(draw.manifest)
        obj["metadata"]["labels"][VARIANT_LABEL] = VARIANT_PLACEHOLDER
        body = json.dumps(review(obj), separators=(",", ":")).encode()
        assert body.count(UID_PLACEHOLDER.encode()) == 1 and body.count(VARIANT_PLACEHOLDER.encode()) == 1
        bodies.append(body)
    return bodies


def check_answer(status: int, answer: bytes, uid: str) -> tuple[str | None, str | None]:
    """(the model id the answer's patch writes, None) for a valid patched answer, else (None, why not)."""
    if status != 200:
        return None, f"HTTP {status}"
    try:
        document = json.loads(answer)
    except ValueError:
        return None, "answer is not JSON"
    if not isinstance(document, dict) or document.get("apiVersion") != "admission.k8s.io/v1" \
            or document.get("kind") != "AdmissionReview" or not isinstance(document.get("response"), dict):
        return None, "answer is not an admission.k8s.io/v1 AdmissionReview with a response"
    response: dict[str, Any] = document["response"]
    if response.get("uid") != uid:
        return None, "response uid is not the request's"
    if response.get("allowed") is not True:
        return None, f"not allowed: {(response.get('status') or {}).get('message')}"
    if "patch" not in response:
        return None, f"no patch (failed open): {'; '.join(response.get('warnings') or [])}"
    if response.get("patchType") != "JSONPatch":
        return None, f"patchType {response.get('patchType')!r}"
    try:
        operations = json.loads(base64.b64decode(response["patch"], validate=True))
    except ValueError:
        return None, "patch is not base64 JSON"
    pointer = "/metadata/annotations/" + MODEL_ANNOTATION.replace("~", "~0").replace("/", "~1")
    for operation in operations if isinstance(operations, list) else []:
        if not isinstance(operation, dict) or operation.get("op") not in ("add", "replace"):
            continue
        value = operation.get("value")
        if operation.get("path") == pointer and isinstance(value, str):
            return value, None
        if operation.get("path") == "/metadata/annotations" and isinstance(value, dict) \
                and isinstance(value.get(MODEL_ANNOTATION), str):
            return value[MODEL_ANNOTATION], None
    return None, f"patch does not write {MODEL_ANNOTATION}"


async def _drive(plan: LoadPlan, bodies: list[bytes], start: float) -> LoadOutcome:
    context = ssl.create_default_context(cafile=plan.ca_file)
    total = int(plan.rate_per_second * plan.duration_seconds)
    due = np.arange(total) / plan.rate_per_second
    latency_ms = np.full(total, np.nan)
    model_index = np.full(total, -1, dtype=np.int32)
    failed = np.zeros(total, dtype=bool)
    new_spec = np.arange(total) % plan.new_spec_every == 0
    model_ids: dict[str, int] = {}
    reasons: Counter[str] = Counter()
    examples: list[str] = []
    counters = {"connections": 0, "late": 0}
    send_lag_ms = 0.0
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    uid_bytes, variant_bytes = UID_PLACEHOLDER.encode(), VARIANT_PLACEHOLDER.encode()
    host_header = b"Host: %s:%d\r\n" % (plan.server_hostname.encode(), plan.port)

    def fail(index: int, reason: str) -> None:
        failed[index] = True
        reasons[reason.split(":", 1)[0]] += 1
        if len(examples) < FAILURE_EXAMPLES:
            examples.append(f"request {index} due at {due[index]:.1f} s: {reason}")

    async def worker() -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        used = 0
        while (index := await queue.get()) is not None:
            uid = str(uuid.uuid4())
            value = b"n%d" % index if new_spec[index] else REPEATED_VALUE
            body = bodies[index % len(bodies)].replace(uid_bytes, uid.encode()).replace(variant_bytes, value)
            try:
                if writer is None or used >= plan.requests_per_connection:
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(plan.host, plan.port, ssl=context, server_hostname=plan.server_hostname),
                        plan.answer_timeout_seconds)
                    counters["connections"] += 1
                    used = 0
                assert reader is not None
                writer.write(b"POST /mutate HTTP/1.1\r\n" + host_header
                             + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                status, answer = await asyncio.wait_for(read_response(reader), plan.answer_timeout_seconds)
                used += 1
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
                fail(index, f"transport {type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                writer = reader = None
                continue
            latency_ms[index] = (time.monotonic() - (start + due[index])) * 1000.0
            model_id, problem = check_answer(status, answer, uid)
            if problem is not None:
                fail(index, problem)
            else:
                assert model_id is not None
                model_index[index] = model_ids.setdefault(model_id, len(model_ids))
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(plan.connections)]
    next_progress = plan.progress_every_seconds
    for index in range(total):
        delay = start + due[index] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            send_lag_ms = max(send_lag_ms, -delay * 1000.0)
            counters["late"] += -delay * 1000.0 > LATE_SEND_MILLISECONDS
        queue.put_nowait(index)
        if due[index] >= next_progress:
            answered = int(np.count_nonzero(~np.isnan(latency_ms[:index])))
            print(f"  load: {due[index]:.0f} s, {answered:,} answered, {int(failed.sum())} failed, "
                  f"{len(model_ids)} model ids seen", flush=True)
            next_progress += plan.progress_every_seconds
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return LoadOutcome(
        start_monotonic=start, due_seconds=due, latency_ms=latency_ms, model_index=model_index, failed=failed,
        new_spec=new_spec, model_ids=list(model_ids), failures_by_reason=dict(reasons), failure_examples=examples,
        connections_opened=counters["connections"], max_send_lag_ms=round(send_lag_ms, 3), late_sends=counters["late"],
    )


async def _fill(plan: LoadPlan, bodies: list[bytes]) -> FillOutcome:
    """`plan.fill_specs` reviews, each of a spec never sent before, closed loop; every answer checked."""
    context = ssl.create_default_context(cafile=plan.ca_file)
    started = time.monotonic()
    indexes = iter(range(plan.fill_specs))
    reasons: Counter[str] = Counter()
    uid_bytes, variant_bytes = UID_PLACEHOLDER.encode(), VARIANT_PLACEHOLDER.encode()
    host_header = b"Host: %s:%d\r\n" % (plan.server_hostname.encode(), plan.port)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(plan.host, plan.port, ssl=context,
                                                       server_hostname=plan.server_hostname)
        try:
            for index in indexes:
                uid = str(uuid.uuid4())
                body = bodies[index % len(bodies)].replace(uid_bytes, uid.encode()).replace(variant_bytes, b"f%d" % index)
                writer.write(b"POST /mutate HTTP/1.1\r\n" + host_header
                             + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                status, answer = await asyncio.wait_for(read_response(reader), plan.answer_timeout_seconds)
                _, problem = check_answer(status, answer, uid)
                if problem is not None:
                    reasons[problem.split(":", 1)[0]] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(plan.fill_connections)))
    return FillOutcome(plan.fill_specs, sum(reasons.values()), dict(reasons), round(time.monotonic() - started, 2))


def _child(plan: LoadPlan, inbox: Any, outbox: Any) -> None:
    bodies = soak_bodies(plan.variants)
    outbox.put(asyncio.run(_fill(plan, bodies)))
    start = inbox.get()
    outbox.put(asyncio.run(_drive(plan, bodies, start)))


class LoadProcess:
    """The load in a spawned process: ``start()`` returns once its bodies are built and the caches
    filled, with the fill's outcome and the monotonic time the first timed request is due (the
    same clock in every process on Linux); ``result()`` waits for the timed load's outcome."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        context = multiprocessing.get_context("spawn")
        self._inbox, self._outbox = context.Queue(), context.Queue()
        self._process = context.Process(target=_child, args=(plan, self._inbox, self._outbox), daemon=True)

    def start(self, ready_timeout_seconds: float = 600.0, lead_seconds: float = 0.5) -> tuple[FillOutcome, float]:
        self._process.start()
        fill = self._outbox.get(timeout=ready_timeout_seconds)
        if not isinstance(fill, FillOutcome):
            raise RuntimeError(f"the load process did not get ready: {fill!r}")
        start = time.monotonic() + lead_seconds
        self._inbox.put(start)
        return fill, start

    def result(self, timeout_seconds: float) -> LoadOutcome:
        outcome = self._outbox.get(timeout=timeout_seconds)  # before join: a large result fills the pipe
        self._process.join(30)
        return outcome

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
