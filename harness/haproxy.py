"""Debian's HAProxy as a real load balancer on loopback, in front of webhook replicas.

    with HAProxy(backends=[("r0", port0), ("r1", port1)], cert_dir=cert_dir) as proxy:
        ... https://127.0.0.1:{proxy.port} ...
        proxy.server_status("r0")        # "UP", "DOWN", "UP 1/2", ... from the stats socket

The config is generated into a work directory (a temporary one unless given) with the log
beside it; ``stop()`` kills the process. ``tests/tools/install-haproxy.sh`` installs the binary.

Two modes
---------
``mode="http"`` (the default): HAProxy terminates TLS with the webhook's own serving pair
(``tls.crt`` + ``tls.key`` from ``cert_dir``), so the apiserver verifies exactly the
certificate, SANs and CA it verifies when it calls a replica (the caBundle ``certs inject``
wrote is unchanged), and re-encrypts to each replica, verifying its certificate against the
same ``ca.crt`` and name. It is the default because a replica killed with SIGKILL loses the
reviews in flight on its connections, and nothing on an L4 path can send them again: the
apiserver does not retry a webhook call (k8s.io/apiserver's mutating dispatcher calls
``Do`` once and applies ``failurePolicy`` to the error), and deploy/'s ``failurePolicy:
Ignore`` then admits the object *unannotated*. An admission review is idempotent (the
webhook answers from the object alone, and the budget check only reads), so an L7 proxy may
send it again: ``retry-on conn-failure empty-response junk-response`` with the request
buffered (``option http-buffer-request``) resends a review whose replica died or closed the
connection without answering, and ``option redispatch 1`` sends every retry to another
replica. A replica killed between writing an answer's headers and its body (uvicorn writes
them apart) is the one case HAProxy cannot resend itself, the headers being on their way:
it holds each answer until its body is complete and turns a short one into a 503 with
``Retry-After: 0``, which the apiserver's own client does retry (``_CUT_ANSWER_RULES``).
The cost: HAProxy holds the serving key, and a rotated certificate reaches the
apiserver only when HAProxy is restarted (the replicas' own rotation still applies between
HAProxy and them).

``mode="tcp"``: TLS passthrough, as a Kubernetes Service (kube-proxy) does. HAProxy never
sees inside the TLS stream; the apiserver talks TLS to a replica itself. New connections to
a dead replica (refused) are still retried on the other (``retries``, ``option redispatch``),
but a review in flight when its replica dies is lost, and fails open. The tests run it to
measure what a plain Service gives.

Both modes health-check every replica with ``GET /readyz`` over TLS (200 when ready; a
stopped or killed replica refuses the connection) every ``inter``, marking it down after
``fall`` failures and up after ``rise`` successes, so a dead replica leaves the rotation
within about ``fall`` x ``inter``.
"""

from __future__ import annotations

import csv
import ctypes
import io
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Sequence

from harness.ports import free_loopback_port

Mode = Literal["http", "tcp"]
LOOPBACK = "127.0.0.1"
# Health checks: every 200 ms (100 ms once one has failed); down after 2 failures, up after 2
# successes. A killed replica leaves the rotation within ~0.3 s.
INTER_MS, FASTINTER_MS, DOWNINTER_MS, FALL, RISE = 200, 100, 200, 2, 2
# Longer than the apiserver's idle connections (Go's http.Transport default, 90 s).
IDLE_SECONDS = 120
# Attempts per request beyond the first; each redispatched to another replica.
RETRIES = 3
_START_ATTEMPTS = 3
_LOG_TAIL_CHARS = 3000
_PR_SET_PDEATHSIG = 1


class HAProxyMissing(RuntimeError):
    """`haproxy` is not on PATH."""


def haproxy_binary() -> str:
    found = shutil.which("haproxy")
    if found is None:
        raise HAProxyMissing("haproxy not on PATH: run `make haproxy` (tests/tools/install-haproxy.sh installs Debian's)")
    return found


def haproxy_version() -> str:
    completed = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True, check=False)
    return completed.stdout.splitlines()[0] if completed.stdout else ""


def _die_with_parent() -> None:
    # If the test process dies without cleaning up, the kernel kills HAProxy too.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# http mode: a replica killed after it wrote an answer's headers but before its body leaves a
# truncated answer, which HAProxy would forward (the headers are already on their way) and the
# apiserver would fail open on ("unexpected EOF" reading the body). So HAProxy holds each answer
# until its body is complete (they are ~1 KB) and replaces a short one by a 503 with
# ``Retry-After: 0``: the apiserver's client (client-go's rest.Request, 10 retries) sends a
# request again, POST included, when a 5xx comes with Retry-After, and the retry reaches the
# replica that is left.
_CUT_ANSWER_RULES = """\
    http-response wait-for-body time 1s
    http-response set-var(txn.length) res.hdr(content-length)
    http-response return status 503 content-type application/json hdr Retry-After 0 string '{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"ServiceUnavailable","code":503,"message":"the webhook replica closed the connection in the middle of its answer"}' if { res.body_len,sub(txn.length) lt 0 }
"""


def render_config(*, mode: Mode, port: int, backends: Sequence[tuple[str, int]], cert_dir: Path,
                  server_name: str, health_path: str, stats_socket: Path, crt_bundle: Path | None) -> str:
    """The haproxy.cfg for ``backends`` (name, loopback port) behind ``LOOPBACK:port``."""
    ca_file = cert_dir / "ca.crt"
    # TLS to each replica (http mode: traffic and checks; tcp mode: checks only), verified
    # against the webhook's CA and the name in its certificate.
    verify = f"verify required ca-file {ca_file} verifyhost {server_name}"
    if mode == "http":
        assert crt_bundle is not None
        bind = f"bind {LOOPBACK}:{port} ssl crt {crt_bundle} alpn http/1.1"
        server_tls = f"ssl {verify} sni str({server_name}) check-sni {server_name}"
        mode_lines = f"""\
    mode http
    option httplog
    # Log only what was not normal (errors, retries), not each of thousands of reviews.
    option dontlog-normal
    # Reviews are idempotent: one whose replica died or closed without answering goes again.
    option http-buffer-request
    retry-on conn-failure empty-response junk-response
    # The apiserver's idle connections live 90 s (Go's default): HAProxy must not close one
    # first, or a review written as it closes is lost. The answer to a review (3 s at most)
    # comes within timeout server.
    timeout client {IDLE_SECONDS}s
    timeout http-keep-alive {IDLE_SECONDS}s
    timeout server 10s
"""
    else:
        bind = f"bind {LOOPBACK}:{port}"
        server_tls = f"check-ssl {verify} check-sni {server_name}"
        mode_lines = f"""\
    mode tcp
    option tcplog
    option dontlog-normal
    # A connection carries many reviews with idle gaps; the apiserver keeps an idle one 90 s
    # (Go's default), so neither side times out first.
    timeout client {IDLE_SECONDS}s
    timeout server {IDLE_SECONDS}s
"""
    answer_rules = _CUT_ANSWER_RULES if mode == "http" else ""
    servers = "\n".join(
        f"    server {name} {LOOPBACK}:{backend_port} {server_tls} check"
        f" inter {INTER_MS}ms fastinter {FASTINTER_MS}ms downinter {DOWNINTER_MS}ms fall {FALL} rise {RISE}"
        for name, backend_port in backends
    )
    return f"""\
# Written by harness/haproxy.py.
global
    log stdout format raw local0
    stats socket {stats_socket} mode 600 level admin
    # Loopback only, a test's few thousand connections.
    maxconn 4096

defaults
    log global
{mode_lines}\
    option log-health-checks
    # A connection refused by a dead replica: try again, each time on another replica.
    retries {RETRIES}
    option redispatch 1
    # Loopback: a replica that has not accepted within this is not going to. It also bounds
    # HAProxy's pause before a retry (min(timeout connect, 1 s)).
    timeout connect 250ms
    timeout check 1s

frontend webhook
    {bind}
    default_backend replicas

backend replicas
    balance roundrobin
{answer_rules}    option httpchk
    http-check send meth GET uri {health_path} ver HTTP/1.1 hdr Host {server_name}
    http-check expect status 200
{servers}
"""


class HAProxy:
    """One HAProxy process in front of ``backends``; ``start()`` (or ``with``), always ``stop()``."""

    def __init__(self, backends: Sequence[tuple[str, int]], cert_dir: Path, *, mode: Mode = "http",
                 server_name: str = "localhost", health_path: str = "/readyz",
                 work_dir: Path | None = None) -> None:
        self.binary = haproxy_binary()
        self.backends = list(backends)
        self.cert_dir = Path(cert_dir)
        self.mode: Mode = mode
        self.server_name = server_name
        self.health_path = health_path
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="energetiscope-haproxy-")) if work_dir is None else Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.work_dir / "haproxy.cfg"
        self.log_path = self.work_dir / "haproxy.log"
        self.stats_socket = self.work_dir / "admin.sock"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def _write_config(self, port: int) -> None:
        crt_bundle = None
        if self.mode == "http":
            # HAProxy reads the certificate and its key from one PEM file.
            crt_bundle = self.work_dir / "serving.pem"
            crt_bundle.write_bytes((self.cert_dir / "tls.crt").read_bytes() + (self.cert_dir / "tls.key").read_bytes())
            crt_bundle.chmod(0o600)
        self.config_path.write_text(render_config(
            mode=self.mode, port=port, backends=self.backends, cert_dir=self.cert_dir,
            server_name=self.server_name, health_path=self.health_path, stats_socket=self.stats_socket,
            crt_bundle=crt_bundle,
        ))

    def start(self, timeout: float = 15.0) -> HAProxy:
        """Start and wait until the frontend accepts connections and the stats socket answers
        (the replicas need not be up yet: ``wait_until``)."""
        problem = ""
        for _ in range(_START_ATTEMPTS):
            port = free_loopback_port()
            self._write_config(port)
            checked = subprocess.run([self.binary, "-c", "-q", "-f", str(self.config_path)],
                                     capture_output=True, text=True, check=False)
            if checked.returncode != 0:
                raise RuntimeError(f"haproxy -c refused {self.config_path}:\n{checked.stdout}{checked.stderr}")
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    [self.binary, "-db", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            problem = self._wait_listening(port, timeout)
            if not problem:
                self.port = port
                return self
            self._kill()
            if "cannot bind" not in problem and "Address already in use" not in problem:
                break  # only a port race is worth another try
        raise RuntimeError(f"haproxy did not start: {problem}")

    def _wait_listening(self, port: int, timeout: float) -> str:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"exited with {self._process.returncode}: {self.log_tail()}"
            try:
                # The listeners are bound before the stats socket answers.
                self.command("show info")
                return ""
            except OSError:
                time.sleep(0.05)
        return f"not listening after {timeout:g} s: {self.log_tail()}"

    # -- the stats socket ------------------------------------------------------------------

    def command(self, line: str, timeout: float = 2.0) -> str:
        """One command on the admin socket (``show stat``, ``set server replicas/r0 state drain``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers, by server name: status, wretr (retries),
        wredis (redispatches), chkdown, lastchg, ..."""
        text = self.command("show stat").lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def backend_stats(self) -> dict[str, str]:
        text = self.command("show stat").lstrip("# ")
        return next(row for row in csv.DictReader(io.StringIO(text))
                    if row["pxname"] == "replicas" and row["svname"] == "BACKEND")

    def server_status(self, name: str) -> str:
        return self.servers()[name]["status"]

    def wait_until(self, name: str, status: str, timeout: float = 30.0, interval: float = 0.02) -> float:
        """Poll until server ``name``'s status is exactly ``status`` ("UP", "DOWN"); returns
        the monotonic time it was first seen."""
        deadline = time.monotonic() + timeout
        while True:
            if self.server_status(name) == status:
                return time.monotonic()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"haproxy: server {name} not {status} within {timeout:g} s "
                                   f"(now {self.server_status(name)}):\n{self.log_tail()}")
            time.sleep(interval)

    # -- lifecycle -------------------------------------------------------------------------

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Kill HAProxy (SIGTERM is its immediate stop; SIGKILL if it lingers). A work
        directory it made itself is removed; one the caller gave is kept, logs included."""
        self._kill(timeout)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _kill(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
