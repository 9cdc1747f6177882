"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for end-to-end tests.

The binaries are built by ``make controlplane`` (tests/e2e/controlplane/build.sh) into
the cache directory; this module only runs them. Everything it starts listens on
127.0.0.1 alone, on free ports, with its state, certificates and logs in one
temporary directory that ``stop()`` removes.

By default there is no controller manager and no scheduler: objects are stored and
validated, admission (including webhooks) runs, but nothing reconciles them (a Deployment
gets no ReplicaSet, a deleted Namespace stays Terminating). ``ControlPlane(controllers=
ControllerBinaries.locate())`` also runs kube-controller-manager (the workload controllers,
the garbage collector and the namespace controller), kube-scheduler and kwok, which keeps
``fake_nodes`` fake Nodes Ready and moves the Pods bound to them to Running and, for a
Job's, to Succeeded: a Deployment then gets its ReplicaSet and running Pods, a CronJob its
Jobs, and they complete, with no kubelet and no container runtime.

``stop_apiserver()``/``start_apiserver()`` and ``stop_etcd()``/``start_etcd()`` stop and
start one component again on the same ports (etcd on the same data directory), as a
restart in a cluster does, so clients keep their URLs and everything stored survives.

Typical use::

    with ControlPlane() as plane:
        core = kubernetes.client.CoreV1Api(plane.api_client())
        core.list_namespace()
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import kubernetes.client
import yaml
from cryptography.hazmat.primitives import serialization

from certs.authority import KeyPair, create_ca, issue_certificate, write_pair

LOOPBACK = "127.0.0.1"
# The wrapper Go modules that build.sh compiles: their go.mod files are the one place
# the versions are written down.
BUILD_DIR = Path(__file__).resolve().parent / "controlplane"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
ADMIN_USER = "energetiscope-e2e-admin"
# Bound to the cluster-admin ClusterRole by the apiserver's bootstrap RBAC policy.
MASTERS_GROUP = "system:masters"
# The controllers a control plane with controllers runs (kube-controller-manager
# --controllers): what turns Deployments, ReplicaSets, Jobs and CronJobs into Pods, deletes
# what an owner no longer holds, and empties deleted namespaces; and the node lifecycle
# controller, which lifts the not-ready taint the apiserver puts on every new Node once
# kwok reports it Ready (nothing schedules onto it before). Nothing else: no taint-based
# eviction, no service accounts (the ServiceAccount admission plugin is off), no endpoints.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "node-lifecycle-controller",
)
# The taints that keep the scheduler off a Node that is not (yet, or no longer) Ready.
_NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# Bound to the system:kube-scheduler ClusterRole by the bootstrap RBAC policy: the scheduler
# runs with the permissions it has in a cluster.
SCHEDULER_USER = "system:kube-scheduler"
KWOK_USER = "energetiscope-e2e-kwok"
# kwok manages only the Nodes with this annotation (--manage-nodes-with-annotation-selector),
# the ones this module creates.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
KWOK_STAGES = BUILD_DIR / "kwok" / "stages.yaml"
# The Pod IPs kwok hands out: apart from the Service range.
KWOK_POD_CIDR = "10.244.0.0/16"
# What each fake Node offers the scheduler: room for every test's Pods.
FAKE_NODE_CAPACITY = {"cpu": "1000", "memory": "4Ti", "pods": "10000"}
# Proxies from the environment must never see loopback traffic.
_NO_PROXY = f"{LOOPBACK}/8,localhost"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


_T = TypeVar("_T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the logs' tails)."""


class BinariesMissing(ControlPlaneError):
    """A control plane binary has not been built yet."""


class PortTaken(ControlPlaneError):
    """A port chosen as free was taken by someone else before our process bound it."""


# Metadata level carries the admission webhooks' audit annotations; everything else is not logged.
_AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources:
      - group: ""
        resources: ["pods", "replicationcontrollers"]
      - group: apps
        resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
      - group: batch
        resources: ["jobs", "cronjobs"]
  - level: None
"""


def cache_dir() -> Path:
    """Where build.sh puts its binaries; the same default as the Makefile's."""
    configured = os.environ.get("ENERGETISCOPE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "energetiscope"


def required_version(go_mod: Path, module: str) -> str:
    """The version of ``module`` that the wrapper module ``go_mod`` requires."""
    pattern = re.compile(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\d\S*)", re.MULTILINE)
    match = pattern.search(go_mod.read_text())
    if match is None:
        raise ControlPlaneError(f"{go_mod} does not require {module}")
    return match.group(1)


def locate_built_binary(name: str, version: str) -> Path:
    """``NAME-VERSION`` in the cache's bin directory, as build.sh names what it builds; raises
    BinariesMissing, naming ``make controlplane``, when it is not built."""
    path = cache_dir() / "bin" / f"{name}-{version}"
    if not os.access(path, os.X_OK):
        raise BinariesMissing(f"{name} not built: {path}; run `make controlplane` (tests/e2e/controlplane/build.sh) first")
    return path


def kubernetes_version() -> str:
    """The Kubernetes release build.sh builds, e.g. ``v1.37.2``."""
    return required_version(BUILD_DIR / "go.mod", "k8s.io/kubernetes")


def etcd_version() -> str:
    """The etcd release build.sh builds, e.g. ``v3.6.16``."""
    return required_version(BUILD_DIR / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")


def kwok_version() -> str:
    """The kwok release build.sh builds, e.g. ``v0.8.0``."""
    return required_version(BUILD_DIR / "kwok" / "go.mod", "sigs.k8s.io/kwok")


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kubernetes_version: str
    etcd_version: str

    @classmethod
    def locate(cls, directory: Path | None = None) -> Binaries:
        """Find the binaries for the versions in the wrapper go.mod files.

        Raises BinariesMissing, naming ``make controlplane``, when either is not built.
        """
        bin_dir = (directory or cache_dir()) / "bin"
        k8s, etcd = kubernetes_version(), etcd_version()
        binaries = cls(bin_dir / f"kube-apiserver-{k8s}", bin_dir / f"etcd-{etcd}", k8s, etcd)
        missing = [str(path) for path in (binaries.kube_apiserver, binaries.etcd) if not os.access(path, os.X_OK)]
        if missing:
            raise BinariesMissing(
                f"control plane binaries not built: {', '.join(missing)}; "
                "run `make controlplane` (tests/e2e/controlplane/build.sh) first"
            )
        return binaries


@dataclass(frozen=True)
class ControllerBinaries:
    """What a control plane with controllers runs beside etcd and kube-apiserver."""

    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_version: str

    @classmethod
    def locate(cls, directory: Path | None = None) -> ControllerBinaries:
        """Find them for the versions in the wrapper go.mod files (the controller manager and
        scheduler are the apiserver's release); raises BinariesMissing, naming
        ``make controlplane``, when one is not built."""
        bin_dir = (directory or cache_dir()) / "bin"
        k8s, kwok = kubernetes_version(), kwok_version()
        binaries = cls(bin_dir / f"kube-controller-manager-{k8s}", bin_dir / f"kube-scheduler-{k8s}",
                       bin_dir / f"kwok-{kwok}", kwok)
        missing = [str(path) for path in (binaries.kube_controller_manager, binaries.kube_scheduler, binaries.kwok)
                   if not os.access(path, os.X_OK)]
        if missing:
            raise BinariesMissing(
                f"control plane binaries not built: {', '.join(missing)}; "
                "run `make controlplane` (tests/e2e/controlplane/build.sh) first"
            )
        return binaries


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports that nothing listens on right now, picked by the kernel.

    They are free only until someone else binds them: ControlPlane.start() retries
    when a process of its own then finds one taken.
    """
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:  # all bound at once, so they differ
            probe.bind((LOOPBACK, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the test process dies without running its cleanup (SIGKILL, SIGTERM, a crash),
    # the kernel kills the child instead of leaving it running. It fires when the
    # *thread* that started the child exits, so start the control plane from a thread
    # that outlives it (the main thread, in pytest).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_environment(overrides: dict[str, str] | None = None) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in _PROXY_VARIABLES}
    environment["NO_PROXY"] = environment["no_proxy"] = _NO_PROXY
    environment.update(overrides or {})
    return environment


class _Process:
    """One child process whose stdout and stderr go to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 environment: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_environment(environment),
                # Own session: a Ctrl-C at the terminal reaches pytest only, whose
                # teardown then stops the apiserver before etcd.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.exited():
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Also reached on an interrupt during the wait: never leave it running.
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()

    def startup_failure(self) -> ControlPlaneError:
        """The error for this process having exited while it was starting."""
        tail = self.log_tail()
        error = PortTaken if "address already in use" in tail else ControlPlaneError
        return error(
            f"{self.name} exited with status {self.popen.returncode} while starting; "
            f"last lines of {self.log_path}:\n{tail}"
        )


# Every started, not yet stopped control plane: stopped at interpreter exit in case a
# test run ends without the fixture's teardown (an error in a session fixture, exit()).
_running: set[ControlPlane] = set()
# Start attempts when a port picked as free was taken in the meantime.
_START_ATTEMPTS = 3


@atexit.register
def _stop_all_at_exit() -> None:
    for plane in list(_running):
        plane.stop()


class ControlPlane:
    """etcd and kube-apiserver on loopback, with an admin kubeconfig.

    ``start()`` either returns with /readyz answering ok or raises ControlPlaneError
    after tearing down whatever it had started. ``stop()`` is idempotent.
    """

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 15.0,
        extra_apiserver_args: Sequence[str] = (),
        keep_logs_in: Path | None = None,
        audit_workloads: bool = False,
        controllers: ControllerBinaries | None = None,
        fake_nodes: int = 1,
    ) -> None:
        """``extra_apiserver_args`` come last, so they override the defaults below.

        ``controllers``: also run kube-controller-manager (``CONTROLLERS``), kube-scheduler and
        kwok with ``fake_nodes`` Nodes (``fake_node_names``), each started after the apiserver
        and stopped before it. ``start()`` returns once the controller manager and scheduler
        answer their health checks and every fake Node is Ready, with no not-ready taint left.

        ``audit_workloads``: the apiserver writes an audit log (``audit_log_path``) with a
        Metadata-level event, webhooks' audit annotations included, for every request on a
        workload kind.

        ``keep_logs_in``: a directory that ``stop()`` copies the components' logs into
        before it removes everything else (the logs are otherwise lost).
        """
        if controllers is not None and fake_nodes < 1:
            raise ValueError("a control plane with controllers needs at least one fake node")
        self.binaries = binaries or Binaries.locate()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.keep_logs_in = keep_logs_in
        self.audit_workloads = audit_workloads
        self.controllers = controllers
        self.fake_nodes = fake_nodes if controllers is not None else 0
        self._directory: Path | None = None
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._controller_manager: _Process | None = None
        self._scheduler: _Process | None = None
        self._kwok: _Process | None = None
        self._secure_port: int | None = None
        self._etcd_client_port: int | None = None
        self._etcd_peer_port: int | None = None
        self._serving_ca: KeyPair | None = None
        self._client_ca: KeyPair | None = None
        self._issued_users: dict[tuple[str, tuple[str, ...]], tuple[Path, Path]] = {}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> ControlPlane:
        if self._directory is not None:
            raise ControlPlaneError("this control plane is already started")
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once()
                return self
            except PortTaken:
                self.stop()
                if attempt == _START_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        _running.add(self)
        self._directory = Path(tempfile.mkdtemp(prefix="energetiscope-controlplane-"))
        self._write_pki()
        # Fresh ports on every attempt: a retry after PortTaken must not reuse the taken one.
        self._start_etcd(free_loopback_ports(2))
        self._start_apiserver(free_loopback_ports(1)[0])
        self._write_kubeconfig()
        if self.controllers is not None:
            self._start_controllers(self.controllers)

    # -- restarts: one component, same ports, same data ------------------------------

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (SIGTERM, as a rolling restart does); etcd and every file stay."""
        if self._apiserver is not None:
            self._apiserver.stop(self.stop_timeout)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on its port; returns once /readyz answers ok."""
        if self.running("kube-apiserver"):
            raise ControlPlaneError("kube-apiserver is running")
        self._start_apiserver(self._require(self._secure_port))

    def stop_etcd(self) -> None:
        """Stop etcd, keeping its data directory (stop the apiserver first for a clean restart)."""
        if self._etcd is not None:
            self._etcd.stop(self.stop_timeout)

    def start_etcd(self) -> None:
        """Start etcd again on its ports and data directory; returns once /health is ok."""
        if self.running("etcd"):
            raise ControlPlaneError("etcd is running")
        self._start_etcd([self._require(self._etcd_client_port), self._require(self._etcd_peer_port)])

    def stop(self) -> None:
        """Stop kwok, the scheduler and the controller manager, then the apiserver, then etcd
        (each must outlive its clients), and remove the directory."""
        try:
            _stop_in_order(self._processes(), self.stop_timeout)
        finally:
            self._kwok = self._scheduler = self._controller_manager = None
            self._apiserver = self._etcd = None
            if self._directory is not None:
                self._keep_logs()
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
            self._issued_users.clear()
            _running.discard(self)

    def _keep_logs(self) -> None:
        if self.keep_logs_in is None:
            return
        self.keep_logs_in.mkdir(parents=True, exist_ok=True)
        for log in (self.etcd_log_path, self.apiserver_log_path, *self.controller_log_paths.values()):
            if log.exists():
                # The temporary directory's unique name keeps several runs' logs apart.
                shutil.copyfile(log, self.keep_logs_in / f"{self.directory.name}-{log.name}")

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests use --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The apiserver's base URL, e.g. ``https://127.0.0.1:41234``."""
        return f"https://{LOOPBACK}:{self._require(self._secure_port)}"

    @property
    def directory(self) -> Path:
        """The temporary directory holding certificates, etcd's data, logs and the kubeconfig."""
        return self._require(self._directory)

    @property
    def ca_pem(self) -> bytes:
        """The CA that signed the apiserver's serving certificate (what clients trust)."""
        return self._require(self._serving_ca).cert_pem

    @property
    def ca_path(self) -> Path:
        return self.directory / "pki" / "serving-ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig for the admin user (system:masters), certificates embedded."""
        return self.directory / "kubeconfig"

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self._require(self._etcd_client_port)}"

    @property
    def apiserver_log_path(self) -> Path:
        return self.directory / "kube-apiserver.log"

    @property
    def audit_log_path(self) -> Path:
        return self.directory / "audit.log"

    @property
    def etcd_log_path(self) -> Path:
        return self.directory / "etcd.log"

    @property
    def controller_log_paths(self) -> dict[str, Path]:
        """The logs of kube-controller-manager, kube-scheduler and kwok, by name (whether or
        not this plane runs them)."""
        return {name: self.directory / f"{name}.log" for name in ("kube-controller-manager", "kube-scheduler", "kwok")}

    @property
    def fake_node_names(self) -> list[str]:
        """The Nodes kwok keeps Ready (none without controllers)."""
        return [f"kwok-node-{index}" for index in range(self.fake_nodes)]

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running components, by name."""
        return {p.name: p.pid for p in self._processes() if p is not None}

    def running(self, name: str) -> bool:
        """Whether component ``name`` ("etcd", "kube-apiserver", "kube-controller-manager",
        "kube-scheduler" or "kwok") is running now."""
        process = {"etcd": self._etcd, "kube-apiserver": self._apiserver,
                   "kube-controller-manager": self._controller_manager, "kube-scheduler": self._scheduler,
                   "kwok": self._kwok}[name]
        return process is not None and not process.exited()

    def _processes(self) -> list[_Process | None]:
        """Every component, in the order they are stopped: clients before their servers."""
        return [self._kwok, self._scheduler, self._controller_manager, self._apiserver, self._etcd]

    def issue_client_certificate(self, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        """A client certificate the apiserver authenticates as ``user`` in ``groups``.

        Returns (certificate path, key path). Groups come from the subject's O fields.
        """
        key = (user, tuple(groups))
        if key not in self._issued_users:
            pair = issue_certificate(
                self._require(self._client_ca),
                user,
                organizations=groups,
                server=False,
                client=True,
            )
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join((user, *groups)))
            self._issued_users[key] = write_pair(pair, self.directory / "pki" / "users", stem)
        return self._issued_users[key]

    def api_client(self, user: str | None = None, groups: Sequence[str] = ()) -> kubernetes.client.ApiClient:
        """A kubernetes ApiClient authenticated by client certificate.

        Without ``user`` it is the admin (group system:masters, allowed everything);
        with one, a user that RBAC grants only what the tests bind to it.
        """
        if user is None:
            user, groups = ADMIN_USER, (MASTERS_GROUP,)
        cert_path, key_path = self.issue_client_certificate(user, groups)
        configuration = kubernetes.client.Configuration(
            host=self.url,
            ssl_ca_cert=str(self.ca_path),
            no_proxy=_NO_PROXY,
        )
        configuration.cert_file = str(cert_path)
        configuration.key_file = str(key_path)
        configuration.verify_ssl = True
        return kubernetes.client.ApiClient(configuration)

    def bearer_token_client(self, token: str) -> kubernetes.client.ApiClient:
        """A kubernetes ApiClient that authenticates with ``token`` (e.g. a service account's)."""
        configuration = kubernetes.client.Configuration(
            host=self.url,
            ssl_ca_cert=str(self.ca_path),
            no_proxy=_NO_PROXY,
            api_key={"authorization": token},
            api_key_prefix={"authorization": "Bearer"},
        )
        return kubernetes.client.ApiClient(configuration)

    # -- setup steps ---------------------------------------------------------------

    def _write_pki(self) -> None:
        pki = self.directory / "pki"
        self._serving_ca = create_ca("energetiscope-e2e-serving-ca")
        self._client_ca = create_ca("energetiscope-e2e-client-ca")
        write_pair(self._serving_ca, pki, "serving-ca")
        write_pair(self._client_ca, pki, "client-ca")
        serving = issue_certificate(
            self._serving_ca,
            "kube-apiserver",
            dns_names=["localhost"],
            ip_addresses=[LOOPBACK],
            server=True,
        )
        write_pair(serving, pki, "apiserver")

        # Service-account tokens: the apiserver signs with the private key and verifies
        # with --service-account-key-file. That flag's parser reads public keys (PKIX),
        # certificates, RSA keys and SEC1 "EC PRIVATE KEY" blocks, but not an ECDSA key
        # in PKCS#8 (what KeyPair.key_pem holds), so it gets the public key.
        signer = create_ca("energetiscope-e2e-service-account-signer")
        write_pair(signer, pki, "service-account")
        public_pem = signer.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (pki / "service-account.pub").write_bytes(public_pem)

    def _start_etcd(self, ports: Sequence[int]) -> None:
        client_port, peer_port = ports
        client_url = f"http://{LOOPBACK}:{client_port}"
        peer_url = f"http://{LOOPBACK}:{peer_port}"
        data_dir = self.directory / "etcd-data"
        self._etcd_client_port, self._etcd_peer_port = client_port, peer_port
        self._etcd = _Process(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=energetiscope-e2e",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                # The defaults advertise localhost:2380; a one-member cluster never dials
                # its peers, but say the truth so nothing is ever tried off our ports.
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=energetiscope-e2e={peer_url}",
                # Test data is thrown away: skipping fsync makes every write much faster.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.etcd_log_path,
        )
        deadline = time.monotonic() + self.start_timeout
        last_problem = "no answer yet"
        while True:
            if self._etcd.exited():
                raise self._etcd.startup_failure()
            try:
                connection = http.client.HTTPConnection(LOOPBACK, client_port, timeout=1)
                try:
                    connection.request("GET", "/health")
                    response = connection.getresponse()
                    body = response.read()
                finally:
                    connection.close()
                if response.status == 200 and json.loads(body).get("health") == "true":
                    return
                last_problem = f"/health answered {response.status}: {body[:200]!r}"
            except (OSError, ValueError) as error:
                last_problem = repr(error)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"etcd not healthy after {self.start_timeout:.0f}s ({last_problem}); "
                    f"last lines of {self.etcd_log_path}:\n{self._etcd.log_tail()}"
                )
            time.sleep(0.1)

    def _apiserver_argv(self) -> list[str]:
        pki = self.directory / "pki"
        port = self._require(self._secure_port)
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            # Unused (every certificate is given), but it would otherwise default to a
            # system path for self-signed certificates.
            f"--cert-dir={self.directory / 'apiserver-certs'}",
            f"--secure-port={port}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            # The endpoint reconciler publishes the advertise address as the endpoint of
            # the "kubernetes" Service, and since 1.37 refuses a loopback one ("may not be
            # in the loopback range"). Nothing here runs in pods, so nobody needs it.
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'client-ca.crt'}",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            # The default is AlwaysAllow; the tests want the authorization a cluster has.
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # The ServiceAccount plugin rejects pods until the token controller (part of
            # kube-controller-manager, not run here) has created the namespace's
            # "default" ServiceAccount.
            "--disable-admission-plugins=ServiceAccount",
            *self._audit_args(),
            *self.extra_apiserver_args,
        ]

    def _audit_args(self) -> list[str]:
        if not self.audit_workloads:
            return []
        policy = self.directory / "audit-policy.yaml"
        policy.write_text(_AUDIT_POLICY)
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log_path}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    def _start_apiserver(self, port: int) -> None:
        self._secure_port = port
        self._apiserver = _Process("kube-apiserver", self._apiserver_argv(), self.apiserver_log_path)
        self._wait_until_healthy(self._apiserver, None, "/readyz")

    def _admin_tls_context(self) -> ssl.SSLContext:
        cert_path, key_path = self.issue_client_certificate(ADMIN_USER, (MASTERS_GROUP,))
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(cert_path), str(key_path))
        return context

    def _get(self, path: str, context: ssl.SSLContext, port: int | None = None) -> tuple[int, str]:
        """GET ``path`` from the apiserver, or from another component serving on ``port``."""
        return self._request("GET", path, context, port=port)

    def _request(self, method: str, path: str, context: ssl.SSLContext, body: dict[str, object] | None = None,
                 port: int | None = None) -> tuple[int, str]:
        port = port or self._require(self._secure_port)
        # Loopback address, "localhost" for verification: both are in the serving SANs.
        connection = http.client.HTTPSConnection(LOOPBACK, port, context=context, timeout=5)
        try:
            if body is None:
                connection.request(method, path)
            else:
                connection.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()

    # -- controllers, scheduler, fake nodes ----------------------------------------------

    def _start_controllers(self, binaries: ControllerBinaries) -> None:
        pki = self.directory / "pki"
        serving = issue_certificate(self._require(self._serving_ca), "kube-controllers",
                                    dns_names=["localhost"], ip_addresses=[LOOPBACK], server=True)
        write_pair(serving, pki, "controllers")
        controller_manager_port, scheduler_port = free_loopback_ports(2)
        serving_args = [f"--bind-address={LOOPBACK}", f"--tls-cert-file={pki / 'controllers.crt'}",
                        f"--tls-private-key-file={pki / 'controllers.key'}"]

        kubeconfig = self._write_kubeconfig(CONTROLLER_MANAGER_USER, (MASTERS_GROUP,), "kube-controller-manager")
        self._controller_manager = _Process("kube-controller-manager", [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            # Its own /healthz authenticates and authorizes through the apiserver.
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--secure-port={controller_manager_port}",
            *serving_args,
            f"--controllers={','.join(CONTROLLERS)}",
            # Every controller acts as the controller manager's own user (in system:masters),
            # not as a service account of its own: nothing here issues their tokens.
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'service-account.key'}",
            f"--root-ca-file={self.ca_path}",
            # One instance: no lease to take first, so it starts reconciling at once.
            "--leader-elect=false",
            # A rollout or a burst creates Pods faster than the default 20 requests a second.
            "--kube-api-qps=100",
            "--kube-api-burst=200",
        ], self.controller_log_paths["kube-controller-manager"])
        self._wait_until_healthy(self._controller_manager, controller_manager_port, "/healthz")

        kubeconfig = self._write_kubeconfig(SCHEDULER_USER, (), "kube-scheduler")
        self._scheduler = _Process("kube-scheduler", [
            str(binaries.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--secure-port={scheduler_port}",
            *serving_args,
            "--leader-elect=false",
        ], self.controller_log_paths["kube-scheduler"])
        # /readyz includes the scheduler's informers having synced.
        self._wait_until_healthy(self._scheduler, scheduler_port, "/readyz")

        self._create_fake_nodes()
        kubeconfig = self._write_kubeconfig(KWOK_USER, (MASTERS_GROUP,), "kwok")
        self._kwok = _Process("kwok", [
            str(binaries.kwok),
            f"--kubeconfig={kubeconfig}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
            # kwok renews each Node's Lease as a kubelet does (node-heartbeat-with-lease).
            "--node-lease-duration-seconds=40",
            f"--cidr={KWOK_POD_CIDR}",
        ], self.controller_log_paths["kwok"],
            # kwok also reads ~/.kwok/kwok.yaml when it exists: not a developer's.
            environment={"HOME": str(self.directory / "kwok-home")})
        self._wait_until_nodes_ready(self._kwok)

    def _wait_until_healthy(self, process: _Process, port: int | None, path: str) -> None:
        """Poll ``path`` (on ``port``, or the apiserver's) until it answers 200, the process exits
        (its startup failure) or the start timeout passes (the last problem and the log's tail)."""
        context = self._admin_tls_context()
        deadline = time.monotonic() + self.start_timeout
        last_problem = "no answer yet"
        while True:
            if process.exited():
                raise process.startup_failure()
            try:
                status, body = self._get(f"{path}?verbose", context, port=port)
                if status == 200:
                    return
                failing = [line for line in body.splitlines() if "failed" in line]
                last_problem = f"{path} answered {status}: {'; '.join(failing) or body[:300]}"
            except (OSError, http.client.HTTPException) as error:
                last_problem = repr(error)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{process.name} not ready after {self.start_timeout:.0f}s ({last_problem}); "
                    f"last lines of {process.log_path}:\n{process.log_tail()}"
                )
            time.sleep(0.1)

    def _create_fake_nodes(self) -> None:
        context = self._admin_tls_context()
        for name in self.fake_node_names:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE},
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                               "kubernetes.io/arch": "amd64", "type": "kwok"},
                },
                "status": {"capacity": FAKE_NODE_CAPACITY, "allocatable": FAKE_NODE_CAPACITY},
            }
            status, body = self._request("POST", "/api/v1/nodes", context, node)
            if status != 201:
                raise ControlPlaneError(f"creating fake node {name} answered {status}: {body[:300]}")

    def _wait_until_nodes_ready(self, kwok: _Process) -> None:
        context = self._admin_tls_context()
        deadline = time.monotonic() + self.start_timeout
        waiting = list(self.fake_node_names)
        while True:
            if kwok.exited():
                raise kwok.startup_failure()
            for name in list(waiting):
                try:
                    status, body = self._get(f"/api/v1/nodes/{name}", context)
                except (OSError, http.client.HTTPException):
                    continue
                if status != 200:
                    continue
                node = json.loads(body)
                conditions = node.get("status", {}).get("conditions") or []
                taints = node.get("spec", {}).get("taints") or []
                if (any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
                        and not any(t.get("key") in _NOT_READY_TAINTS for t in taints)):
                    waiting.remove(name)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"fake nodes not Ready and untainted after {self.start_timeout:.0f}s: {', '.join(waiting)}; "
                    f"last lines of {kwok.log_path}:\n{kwok.log_tail()}"
                )
            time.sleep(0.1)

    def _write_kubeconfig(self, user: str = ADMIN_USER, groups: Sequence[str] = (MASTERS_GROUP,),
                          file_name: str = "kubeconfig") -> Path:
        """A kubeconfig for ``user`` in ``groups`` (by default the admin's, ``kubeconfig_path``),
        certificates embedded; returns its path."""
        cert_path, key_path = self.issue_client_certificate(user, groups)
        name = "energetiscope-e2e"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": _b64(self.ca_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(cert_path.read_bytes()),
                        "client-key-data": _b64(key_path.read_bytes()),
                    },
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
            "current-context": name,
        }
        path = self.directory / file_name
        path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
        path.chmod(0o600)
        return path

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise ControlPlaneError("the control plane is not started")
        return value


def _stop_in_order(processes: Sequence[_Process | None], timeout: float) -> None:
    """Stop each in turn; the later ones are stopped even when stopping an earlier one raises."""
    if not processes:
        return
    try:
        if processes[0] is not None:
            processes[0].stop(timeout)
    finally:
        _stop_in_order(processes[1:], timeout)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
