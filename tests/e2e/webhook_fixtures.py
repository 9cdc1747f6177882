"""The EnergetiScope webhook wired into the real apiserver, the way deploy/ wires it into a cluster.

``start_wired_webhook`` does what an operator does, with real processes:

1. ``energetiscope certs create --dns localhost --ip 127.0.0.1`` makes the CA and serving pair;
2. ``energetiscope serve`` runs over TLS on loopback, with the budget inventory reading
   the apiserver through the admin kubeconfig (``--kube-access``) and a policy file;
3. the Mutating- and ValidatingWebhookConfiguration are read from ``deploy/base``, their
   ``clientConfig.service`` replaced by ``clientConfig.url`` (the apiserver cannot route to
   a Service here: nothing runs pods) and created without a ``caBundle``;
4. ``energetiscope certs inject`` writes the caBundle;
5. it waits until the apiserver really calls both webhooks.

Everything else in the configurations (rules, selectors, failurePolicy, timeoutSeconds,
webhook names) is deploy/'s own, so the tests exercise the shipped admission path.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import httpx
import kubernetes.client
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube_rest import KubeRest, Reply
from tests.e2e.workloads import WORKLOADS, energetiscope_annotations, workload
from harness.webhook_process import WebhookProcess, create_certs

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_BASE = REPO_ROOT / "deploy" / "base"
CLI = [sys.executable, "-m", "webhook.cli"]
# The configurations keep deploy/'s webhooks but not its object names: the manifest tests
# dry-run-create deploy/'s own "energetiscope" configurations against the same apiserver.
CONFIGURATION_NAME = "energetiscope-e2e"
MUTATING_FILE = "mutatingwebhookconfiguration.yaml"
VALIDATING_FILE = "validatingwebhookconfiguration.yaml"
MUTATE_WEBHOOK = "predict.energetiscope.io"
BUDGET_WEBHOOK = "budget.energetiscope.io"
# How long the apiserver may take to pick up a new or changed configuration (it watches
# them), and the inventory to list every kind.
SETTLE_SECONDS = 20.0
# How long a stopping webhook gets after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 3.0

# The cluster policy the tests run under: no defaults, so only namespaces that set a
# budget by annotation have one.
POLICY_YAML = """\
apiVersion: energetiscope.io/v1
kind: BudgetPolicy
defaultMode: warn
checkedValue: point
defaults: {}
exemptNamespaces: [kube-system, energetiscope]
whenInventoryNotSynced: allow-with-warning
"""

_T = TypeVar("_T")


def load_deploy_manifest(file_name: str) -> dict[str, Any]:
    """One single-document YAML file of deploy/base, parsed."""
    return yaml.safe_load((DEPLOY_BASE / file_name).read_text())


def render_for_loopback(configuration: dict[str, Any], base_url: str, name: str) -> dict[str, Any]:
    """deploy/'s webhook configuration, pointed at ``base_url`` + each webhook's path, with no caBundle."""
    rendered = copy.deepcopy(configuration)
    rendered["metadata"]["name"] = name
    for webhook in rendered["webhooks"]:
        client_config = webhook["clientConfig"]
        path = client_config.pop("service")["path"]
        client_config.pop("caBundle", None)
        client_config["url"] = base_url + path
    return rendered


def eventually(attempt: Callable[[], _T | None], what: str, timeout: float = SETTLE_SECONDS,
               interval: float = 0.1) -> _T:
    """``attempt()`` until it returns something other than None, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(interval)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``energetiscope ARGS`` as a real subprocess; a non-zero exit fails with its output."""
    completed = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, (
        f"energetiscope {' '.join(args)} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
    )
    return completed


@dataclass
class WiredWebhook:
    """The running webhook process and what the tests need to talk about it."""

    process: WebhookProcess
    cert_dir: Path
    policy_path: Path
    kubeconfig_path: Path
    kube: KubeRest
    mutating_name: str
    validating_name: str
    # What `certs inject` printed, and the configurations as created (before injection).
    inject_output: str
    created_configurations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ca_pem(self) -> bytes:
        return (self.cert_dir / "ca.crt").read_bytes()

    @property
    def base_url(self) -> str:
        # The apiserver dials the IP SAN; the tests' own client uses the DNS SAN (localhost).
        return f"https://127.0.0.1:{self.process.port}"

    # -- observing the webhook ----------------------------------------------------------

    def readyz(self) -> dict[str, Any]:
        with self.process.client() as client:
            return client.get("/readyz").json()

    def request_counts(self) -> dict[tuple[str, str], float]:
        """``energetiscope_requests_total`` by (endpoint, result), from /metrics."""
        with self.process.client() as client:
            text = client.get("/metrics").text
        counts: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "energetiscope_requests_total":
                    counts[(sample.labels["endpoint"], sample.labels["result"])] = sample.value
        return counts

    def wait_until_inventory_synced(self) -> None:
        def synced() -> bool | None:
            try:
                return True if self.readyz()["budgets"]["inventory"] == "synced" else None
            except httpx.TransportError:
                return None

        eventually(synced, "the budget inventory synced")

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        # SIGTERM, then SIGKILL after a short wait: a graceful exit takes well under a second
        # (test_sigterm_exits_promptly_with_the_inventory_on), and a hung teardown must not
        # hold up the run.
        self.process.stop(timeout=STOP_GRACE_SECONDS)

    def restart(self) -> None:
        """Start the process again on the same port and certificates, and wait until it serves."""
        self.stop()
        self.process.start()
        self.wait_until_inventory_synced()


def create_namespace(kube: KubeRest, prefix: str, annotations: dict[str, str] | None = None,
                     labels: dict[str, str] | None = None) -> str:
    """A fresh namespace the webhooks' namespaceSelector matches (unless ``labels`` say skip)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}).expect_ok()
    return name


def wait_until_mutating_webhook_is_called(kube: KubeRest, namespace: str) -> None:
    """Dry-run creates of a Pod until the apiserver returns it annotated."""
    probe = workload("Pod", "probe-mutate")

    def annotated() -> bool | None:
        reply = kube.create(WORKLOADS["Pod"].collection(namespace), probe, dry_run=True)
        return True if energetiscope_annotations(reply.expect_ok()) else None

    eventually(annotated, "the apiserver calling the mutating webhook (annotations on a dry-run Pod)")


def wait_until_validating_webhook_is_called(kube: KubeRest) -> None:
    """Dry-run creates in a namespace whose budget nothing fits, until the budget webhook denies one.

    The webhook reads budgets from its inventory, so this also waits for the inventory to
    have seen the namespace.
    """
    namespace = create_namespace(
        kube, "e2e-probe-budget",
        annotations={"energetiscope.io/budget-mode": "enforce", "energetiscope.io/max-workload-watts": "0"},
    )
    probe = workload("Pod", "probe-validate")

    def denied() -> Reply | None:
        reply = kube.create(WORKLOADS["Pod"].collection(namespace), probe, dry_run=True)
        return reply if reply.status == 403 and BUDGET_WEBHOOK in reply.message else None

    eventually(denied, "the apiserver calling the validating webhook (a denial over budget)")


def start_wired_webhook(control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient,
                        work_dir: Path, extra_args: Sequence[str] = ()) -> WiredWebhook:
    """Steps 1-5 of the module docstring; the caller stops it with ``teardown_wired_webhook``.

    ``extra_args`` go to ``energetiscope serve`` after the ones above."""
    kube = KubeRest(kube_api)
    cert_dir = create_certs(work_dir / "certs", "localhost", ips=("127.0.0.1",))
    policy_path = work_dir / "policy.yaml"
    policy_path.write_text(POLICY_YAML)
    process = WebhookProcess(
        cert_dir, work_dir / "webhook.log",
        "--kube-access", str(control_plane.kubeconfig_path),
        "--policy-file", str(policy_path),
        *extra_args,
        env={"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
    ).start()
    try:
        webhook = _wire(process, cert_dir, policy_path, kube, control_plane)
    except BaseException:
        _delete_configurations(kube, CONFIGURATION_NAME, CONFIGURATION_NAME)
        process.stop(timeout=STOP_GRACE_SECONDS)
        raise
    return webhook


def _wire(process: WebhookProcess, cert_dir: Path, policy_path: Path, kube: KubeRest,
          control_plane: ControlPlane) -> WiredWebhook:
    base_url = f"https://127.0.0.1:{process.port}"
    created: dict[str, dict[str, Any]] = {}
    for file_name, plural in ((MUTATING_FILE, "mutatingwebhookconfigurations"),
                              (VALIDATING_FILE, "validatingwebhookconfigurations")):
        rendered = render_for_loopback(load_deploy_manifest(file_name), base_url, CONFIGURATION_NAME)
        created[rendered["kind"]] = kube.create(
            f"/apis/admissionregistration.k8s.io/v1/{plural}", rendered
        ).expect_ok()
    injected = run_cli(
        "certs", "inject", "--ca-file", str(cert_dir / "ca.crt"),
        "--kubeconfig", str(control_plane.kubeconfig_path),
        "--mutating", CONFIGURATION_NAME, "--validating", CONFIGURATION_NAME,
    )
    webhook = WiredWebhook(
        process=process, cert_dir=cert_dir, policy_path=policy_path,
        kubeconfig_path=control_plane.kubeconfig_path, kube=kube,
        mutating_name=CONFIGURATION_NAME, validating_name=CONFIGURATION_NAME,
        inject_output=injected.stdout, created_configurations=created,
    )
    webhook.wait_until_inventory_synced()
    probe_namespace = create_namespace(kube, "e2e-probe")
    wait_until_mutating_webhook_is_called(kube, probe_namespace)
    wait_until_validating_webhook_is_called(kube)
    return webhook


def _delete_configurations(kube: KubeRest, mutating_name: str, validating_name: str) -> None:
    """Delete both configurations, whichever exist."""
    for plural, name in (("mutatingwebhookconfigurations", mutating_name),
                         ("validatingwebhookconfigurations", validating_name)):
        kube.delete(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")


def teardown_wired_webhook(webhook: WiredWebhook) -> None:
    """Remove the configurations first, so no later request waits on a stopped webhook."""
    _delete_configurations(webhook.kube, webhook.mutating_name, webhook.validating_name)
    webhook.stop()


def iterate_webhook(control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient,
                    work_dir: Path) -> Iterator[WiredWebhook]:
    """The body of a yield fixture: start, hand over, tear down."""
    webhook = start_wired_webhook(control_plane, kube_api, work_dir)
    try:
        yield webhook
    finally:
        teardown_wired_webhook(webhook)
