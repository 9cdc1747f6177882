"""Two webhook replicas behind a real load balancer (Debian's HAProxy), the apiserver calling it.

A control plane of its own (a replica killed mid-burst must not touch the session's), two
``energetiscope serve`` processes on one certificate and different ports, each with the budget
inventory on, and HAProxy in front (harness/haproxy.py). deploy/'s Mutating- and
ValidatingWebhookConfiguration point at HAProxy's port, everything else in them as shipped:
``failurePolicy: Ignore``, ``timeoutSeconds: 3``.

``failurePolicy: Ignore`` is why "0 failed creates" proves little on its own: a review that
fails (its replica killed, its connection reset) does not fail the create, it admits the
object *unannotated*. So every test counts both: the creates that failed, and the objects
that carry the annotations, read back from the apiserver after the burst; and it checks the
unannotated ones against the apiserver's own ``apiserver_admission_webhook_fail_open_count``.

- SIGKILL: a burst of 1,000 Deployment creates from 4 client threads; one replica gets
  SIGKILL a third of the way through. Measured: how long HAProxy takes to mark it down.
- Rolling restart: another burst of 1,000; each replica in turn gets SIGTERM, is waited for,
  started again, and waited for until HAProxy has it back up, as a Deployment's rolling
  update does.

HAProxy terminating TLS (``mode="http"``) sends a review whose replica died to the other
one, and turns an answer cut mid-body into a 503 with ``Retry-After: 0`` that the apiserver
retries (shown deterministically with a stand-in replica that cuts every answer): every
object is annotated. In TLS passthrough (``mode="tcp"``, what a Kubernetes
Service does) the reviews in flight on the killed replica fail open, and so, now and then,
does one the apiserver writes on a keep-alive connection just as a stopping replica closes
it; the tests count them. Each test prints one ``replicas:`` line with its numbers (run with ``-s``);
docs/operations.md reports them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import signal
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import kubernetes.client
import pytest

from harness.haproxy import HAProxy, Mode
from harness.webhook_process import WebhookProcess, create_certs
from tests.e2e.controlplane import Binaries, ControlPlane
from tests.e2e.kube_rest import KubeRest
from tests.e2e.webhook_fixtures import (
    BUDGET_WEBHOOK, MUTATE_WEBHOOK, MUTATING_FILE, POLICY_YAML, STOP_GRACE_SECONDS, VALIDATING_FILE,
    create_namespace, load_deploy_manifest, render_for_loopback, run_cli,
    wait_until_mutating_webhook_is_called, wait_until_validating_webhook_is_called,
)
from tests.e2e.workloads import ANNOTATION_PREFIX, WORKLOADS, workload

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("haproxy") is None,
                       reason="haproxy not on PATH: `make haproxy` (tests/tools/install-haproxy.sh) installs Debian's"),
]

CREATES = 1000
CLIENT_THREADS = 4
KILL_AT = CREATES // 3
# The rolling restart begins this far into its burst. Until it has ended the creates go at
# RESTART_RATE a second (a replica takes seconds to start, and the burst at full speed would
# be over before the second restart), then at full speed, so both restarts fall inside it.
RESTART_AT = CREATES // 20
RESTART_RATE = 40.0
CONFIGURATION_NAME = "energetiscope-e2e-replicas"
DEPLOYMENTS = WORKLOADS["Deployment"]
ANNOTATION = ANNOTATION_PREFIX + "pod-power-watts"
# A replica stopped with SIGTERM drains its reviews in flight within this (uvicorn's
# graceful timeout is 20 s; a drain takes milliseconds here).
DRAIN_SECONDS = 20.0


@dataclass
class Replicas:
    plane: ControlPlane
    kube: KubeRest
    processes: dict[str, WebhookProcess]
    cert_dir: Path
    work_dir: Path

    def backends(self) -> list[tuple[str, int]]:
        return [(name, process.port) for name, process in self.processes.items()]


@dataclass
class Burst:
    """What one burst of creates did, from the clients' side."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    done: int = 0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def burst(clients: list[KubeRest], namespace: str, prefix: str, at: int, action: Callable[[], None],
          paced: float | None = None) -> Burst:
    """CREATES Deployments named ``prefix-NNNN`` from one thread per client; ``action`` runs
    on its own thread once ``at`` creates have completed. Returns when both are done.

    ``paced``: until ``action`` has returned, the creates start at most this many a second."""
    result = Burst()
    indices = itertools.count()
    lock = threading.Lock()
    reached = threading.Event()
    action_done = threading.Event()
    next_slot = [time.monotonic()]
    errors: list[BaseException] = []

    def wait_for_slot() -> None:
        if paced is None or action_done.is_set():
            return
        with lock:
            now = time.monotonic()
            slot = next_slot[0] = max(next_slot[0], now)
            next_slot[0] += 1.0 / paced
        action_done.wait(slot - now)

    def create(kube: KubeRest) -> None:
        while (index := next(indices)) < CREATES:
            wait_for_slot()
            name = f"{prefix}-{index:04d}"
            # A few different specs, so the webhook predicts as well as answers from its cache.
            manifest = workload("Deployment", name, cpu=f"{100 + index % 20 * 50}m", labels={"burst": prefix})
            began = time.monotonic()
            try:
                reply = kube.create(DEPLOYMENTS.collection(namespace), manifest)
                failure = None if reply.ok else f"{name}: HTTP {reply.status}: {reply.message}"
            except Exception as error:  # any client error is a failed create
                failure = f"{name}: {type(error).__name__}: {error}"
            elapsed = time.monotonic() - began
            with lock:
                result.latencies.append(elapsed)
                if failure is not None:
                    result.failures.append(failure)
                result.done += 1
                if result.done == at:
                    reached.set()

    def run_action() -> None:
        try:
            reached.wait()
            action()
        except BaseException as error:  # reported on the main thread
            errors.append(error)
        finally:
            action_done.set()

    workers = [threading.Thread(target=create, args=(kube,), name=f"create-{i}") for i, kube in enumerate(clients)]
    actor = threading.Thread(target=run_action, name="fault")
    result.started = time.monotonic()
    actor.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    result.ended = time.monotonic()
    reached.set()  # a burst that failed before ``at`` still lets the action end
    actor.join()
    if errors:
        raise errors[0]
    return result


def count_annotated(kube: KubeRest, namespace: str, prefix: str) -> tuple[int, int]:
    """(objects of the burst the apiserver holds, those carrying the annotation), read back in pages."""
    total = annotated = 0
    token = ""
    while True:
        query = {"labelSelector": f"burst={prefix}", "limit": "500", **({"continue": token} if token else {})}
        page = kube.request("GET", DEPLOYMENTS.collection(namespace), query=query).expect_ok()
        for item in page["items"]:
            total += 1
            annotated += ANNOTATION in (item["metadata"].get("annotations") or {})
        token = page["metadata"].get("continue") or ""
        if not token:
            return total, annotated


def fail_open_counts(api: kubernetes.client.ApiClient) -> dict[str, float]:
    """``apiserver_admission_webhook_fail_open_count`` by webhook name, from the apiserver's /metrics."""
    response = api.call_api(*api.param_serialize("GET", "/metrics", header_params={"Accept": "text/plain"}),
                            _request_timeout=30)
    counts: dict[str, float] = {}
    for line in response.read().decode().splitlines():
        if line.startswith("apiserver_admission_webhook_fail_open_count{"):
            labels, value = line.rsplit(" ", 1)
            name = labels.split('name="', 1)[1].split('"', 1)[0]
            counts[name] = counts.get(name, 0.0) + float(value)
    return counts


def delta(before: dict[str, float], after: dict[str, float], name: str) -> int:
    return int(after.get(name, 0.0) - before.get(name, 0.0))


@pytest.fixture(scope="module")
def replicas(control_plane_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    work_dir = tmp_path_factory.mktemp("replicas")
    # The apiserver's log (kept beside the webhooks') says why a webhook call failed open.
    with ControlPlane(binaries=control_plane_binaries, keep_logs_in=work_dir / "controlplane") as plane, \
            plane.api_client() as api:
        cert_dir = create_certs(work_dir / "certs", "localhost", ips=("127.0.0.1",))
        policy_path = work_dir / "policy.yaml"
        policy_path.write_text(POLICY_YAML)
        processes = {
            name: WebhookProcess(
                cert_dir, work_dir / f"webhook-{name}.log",
                "--kube-access", str(plane.kubeconfig_path), "--policy-file", str(policy_path),
                env={"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
            )
            for name in ("r0", "r1")
        }
        try:
            for process in processes.values():
                process.start()
            yield Replicas(plane, KubeRest(api), processes, cert_dir, work_dir)
        finally:
            for process in processes.values():
                process.stop(timeout=STOP_GRACE_SECONDS)


@contextlib.contextmanager
def wired_through(replicas: Replicas, proxy: HAProxy) -> Iterator[None]:
    """deploy/'s two configurations pointed at ``proxy``, the CA injected; deleted afterwards."""
    kube = replicas.kube
    plurals = {MUTATING_FILE: "mutatingwebhookconfigurations", VALIDATING_FILE: "validatingwebhookconfigurations"}
    try:
        for file_name, plural in plurals.items():
            rendered = render_for_loopback(load_deploy_manifest(file_name), proxy.url, CONFIGURATION_NAME)
            assert all(hook["failurePolicy"] == "Ignore" for hook in rendered["webhooks"])  # deploy/'s
            kube.create(f"/apis/admissionregistration.k8s.io/v1/{plural}", rendered).expect_ok()
        run_cli("certs", "inject", "--ca-file", str(replicas.cert_dir / "ca.crt"),
                "--kubeconfig", str(replicas.plane.kubeconfig_path),
                "--mutating", CONFIGURATION_NAME, "--validating", CONFIGURATION_NAME)
        wait_until_mutating_webhook_is_called(kube, create_namespace(kube, "e2e-replicas-probe"))
        wait_until_validating_webhook_is_called(kube)
        yield
    finally:
        for plural in plurals.values():
            kube.delete(f"/apis/admissionregistration.k8s.io/v1/{plural}/{CONFIGURATION_NAME}")


@contextlib.contextmanager
def load_balancer(replicas: Replicas, mode: Mode) -> Iterator[HAProxy]:
    """HAProxy in ``mode`` before both replicas (both running and up in it), wired into the apiserver."""
    for process in replicas.processes.values():
        if process.process is None or process.process.poll() is not None:
            process.start()
    with HAProxy(replicas.backends(), replicas.cert_dir, mode=mode,
                 work_dir=replicas.work_dir / f"haproxy-{mode}") as proxy:
        for name in replicas.processes:
            proxy.wait_until(name, "UP")
        with wired_through(replicas, proxy):
            yield proxy


@contextlib.contextmanager
def clients(plane: ControlPlane) -> Iterator[list[KubeRest]]:
    with contextlib.ExitStack() as stack:
        yield [KubeRest(stack.enter_context(plane.api_client())) for _ in range(CLIENT_THREADS)]


def measure(replicas: Replicas, proxy: HAProxy, mode: str, what: str, prefix: str,
            at: int, action: Callable[[], None], fault: dict[str, Any],
            paced: float | None = None) -> tuple[dict[str, Any], Burst]:
    """One burst with ``action`` at ``at`` creates; the numbers, read back and printed, with
    what ``action`` recorded in ``fault``."""
    kube = replicas.kube
    namespace = create_namespace(kube, f"e2e-{prefix}")
    before_open = fail_open_counts(kube.api_client)
    with clients(replicas.plane) as kubes:
        result = burst(kubes, namespace, prefix, at, action, paced)
    stored, annotated = count_annotated(kube, namespace, prefix)
    after_open = fail_open_counts(kube.api_client)
    servers = proxy.servers()
    measured = {
        "fault": what,
        "mode": mode,
        "creates": len(result.latencies),
        "failed": len(result.failures),
        "stored": stored,
        "annotated": annotated,
        "fail_open_mutate": delta(before_open, after_open, MUTATE_WEBHOOK),
        "fail_open_validate": delta(before_open, after_open, BUDGET_WEBHOOK),
        "p50_ms": round(result.percentile(0.50) * 1000, 1),
        "p99_ms": round(result.percentile(0.99) * 1000, 1),
        "max_ms": round(max(result.latencies) * 1000, 1),
        "burst_s": round(result.ended - result.started, 2),
        "haproxy_retries": sum(int(row["wretr"] or 0) for row in servers.values()),
        "haproxy_redispatches": sum(int(row["wredis"] or 0) for row in servers.values()),
        **{key: value for key, value in fault.items() if key != "rolled"},
    }
    print("replicas:", json.dumps(measured))
    assert result.failures == [], result.failures[:5]
    assert stored == CREATES
    # Every object the apiserver admitted without the annotation is one the apiserver itself
    # counted as a mutating webhook call that failed open: nothing else lost them.
    assert CREATES - annotated == measured["fail_open_mutate"], measured
    return measured, result


class CuttingReplica(socketserver.ThreadingTCPServer):
    """A stand-in replica on the webhook's certificate: healthy to HAProxy's checks, but every
    review it gets it answers with the headers and the first bytes of the body, then closes,
    as a replica SIGKILLed between uvicorn's two writes (headers, then body) does."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cert_dir: Path) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
        self.context = context
        self.reviews = 0
        super().__init__(("127.0.0.1", 0), _CuttingHandler)
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, name="cutting-replica", daemon=True).start()

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = super().get_request()
        return self.context.wrap_socket(raw, server_side=True), address


class _CuttingHandler(socketserver.StreamRequestHandler):
    server: CuttingReplica

    def handle(self) -> None:
        while request_line := self.rfile.readline():
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                length = int(value) if name.strip().lower() == "content-length" else length
            self.rfile.read(length)
            if request_line.startswith(b"GET /readyz"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                continue
            self.server.reviews += 1
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 900\r\n\r\n"
                             b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",')
            return


def test_an_answer_cut_mid_body_is_sent_again_by_the_apiserver(replicas: Replicas) -> None:
    """The mechanism the SIGKILL test relies on, made deterministic: a replica whose every
    answer is cut after its headers. HAProxy (http mode) must not forward the cut answer (the
    apiserver would fail open on it) but answer 503 with Retry-After: 0, which the apiserver's
    client retries; the retry reaches the real replica."""
    cutter = CuttingReplica(replicas.cert_dir)
    real = replicas.processes["r1"]
    if real.process is None or real.process.poll() is not None:
        real.start()
    try:
        with HAProxy([("r0", cutter.port), ("r1", real.port)], replicas.cert_dir, mode="http",
                     work_dir=replicas.work_dir / "haproxy-cut") as proxy:
            for name in ("r0", "r1"):
                proxy.wait_until(name, "UP")
            with wired_through(replicas, proxy):
                kube = replicas.kube
                namespace = create_namespace(kube, "e2e-cut")
                before_open = fail_open_counts(kube.api_client)
                reviews_before = cutter.reviews
                for index in range(20):
                    manifest = workload("Deployment", f"cut-{index:02d}", labels={"burst": "cut"})
                    kube.create(DEPLOYMENTS.collection(namespace), manifest).expect_ok()
                stored, annotated = count_annotated(kube, namespace, "cut")
                after_open = fail_open_counts(kube.api_client)
            cut_answers = proxy.log_tail(100_000).count(" 503 ")
    finally:
        cutter.shutdown()
        cutter.server_close()
    print("replicas:", json.dumps({"fault": "answers cut mid-body", "creates": 20, "annotated": annotated,
                                   "cut_reviews": cutter.reviews - reviews_before, "haproxy_503": cut_answers,
                                   "fail_open_mutate": delta(before_open, after_open, MUTATE_WEBHOOK)}))
    assert cutter.reviews - reviews_before >= 10  # roundrobin: about one review in two went there
    assert cut_answers >= 10
    assert (stored, annotated) == (20, 20)
    assert delta(before_open, after_open, MUTATE_WEBHOOK) == delta(before_open, after_open, BUDGET_WEBHOOK) == 0


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_sigkill_of_one_replica_mid_burst(replicas: Replicas, mode: Mode) -> None:
    victim = replicas.processes["r0"]
    fault: dict[str, Any] = {}
    with load_balancer(replicas, mode) as proxy:
        def kill() -> None:
            assert victim.process is not None
            fault["r0_sessions_before_kill"] = int(proxy.servers()["r0"]["stot"])
            killed = time.monotonic()
            victim.signal(signal.SIGKILL)
            down = proxy.wait_until("r0", "DOWN", timeout=10.0, interval=0.01)
            fault["killed_to_haproxy_down_s"] = round(down - killed, 3)

        measured, _ = measure(replicas, proxy, mode, "SIGKILL of 1 of 2 replicas", f"kill-{mode}", KILL_AT, kill, fault)
        victim.stop()
        victim.start()  # for the next test: both replicas serving again
    assert measured["killed_to_haproxy_down_s"] < 2.0
    if mode == "http":
        # HAProxy sent the reviews the killed replica never answered to the other one.
        assert measured["annotated"] == CREATES, measured


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_rolling_restart_of_both_replicas_mid_burst(replicas: Replicas, mode: Mode) -> None:
    steps: list[dict[str, Any]] = []
    fault: dict[str, Any] = {"restarts": steps}
    with load_balancer(replicas, mode) as proxy:
        def roll() -> None:
            for name, process in replicas.processes.items():
                began = time.monotonic()
                process.stop(timeout=DRAIN_SECONDS)  # SIGTERM, then wait for the exit
                exited = time.monotonic()
                process.start()  # and wait for /readyz 200
                ready = time.monotonic()
                up = proxy.wait_until(name, "UP")
                steps.append({"replica": name, "sigterm_to_exit_s": round(exited - began, 2),
                              "start_to_ready_s": round(ready - exited, 2),
                              "ready_to_haproxy_up_s": round(up - ready, 2)})
            fault["rolled"] = time.monotonic()

        measured, result = measure(replicas, proxy, mode, "rolling restart of 2 replicas", f"roll-{mode}",
                                   RESTART_AT, roll, fault, paced=RESTART_RATE)
    assert len(steps) == 2
    # Both restarts happened inside the burst: the second replica was back before its last create.
    assert fault["rolled"] <= result.ended, (fault["rolled"] - result.ended, measured)
    if mode == "http":
        assert measured["annotated"] == CREATES, measured
