"""The budget inventory across restarts of the real kube-apiserver, and of etcd with it.

A control plane of its own (the session's is shared: restarting it would break other tests)
and ``energetiscope serve`` wired into it with the inventory on, as in test_budgets_e2e.
Each test:

1. fills a namespace with Deployments under an enforce quota, and waits for the inventory;
2. stops the apiserver (or the apiserver and etcd), and asks the webhook's /validate
   directly, as another apiserver replica would, what it answers meanwhile: the
   ``whenInventoryNotSynced`` rule, not the stale total;
3. starts them again on the same ports (etcd on the same data), then at once deletes one
   Deployment and creates another, before the inventory has re-listed, recording what
   admissions answered until it had, and how long that took;
4. after the re-list, deletes and creates again, and checks the namespace total against the
   truth twice: the webhook's /metrics ``energetiscope_namespace_predicted_watts`` against
   the Deployments the apiserver holds, and a quota decision at the exact boundary.

Each test prints one ``inventory-restart:`` line with its measurements (run with ``-s``);
docs/operations.md reports them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

import pytest
import urllib3

from tests.e2e.controlplane import Binaries, ControlPlane
from tests.e2e.test_budgets_e2e import POD_CPU, POD_MEMORY, POD_WATTS
from tests.e2e.kube_rest import KubeRest, Reply
from tests.e2e.webhook_fixtures import (
    BUDGET_WEBHOOK, WiredWebhook, create_namespace, eventually, start_wired_webhook, teardown_wired_webhook,
)
from tests.e2e.workloads import WORKLOADS, workload
from tests.webhook.reviews import review

pytestmark = pytest.mark.e2e

MODE = "energetiscope.io/budget-mode"
QUOTA = "energetiscope.io/quota-watts"
DEPLOYMENTS = WORKLOADS["Deployment"]
# The webhook re-reads its policy file this often (so a test can switch the rule quickly).
WATCH_INTERVAL_SECONDS = 0.5
# Generous: the inventory's backoff is capped at 5 s, and a list takes milliseconds here.
RESYNC_BOUND_SECONDS = 30.0
NOT_SYNCED = "workload inventory not synced"
# SIGTERM to SIGKILL when stopping the apiserver or etcd.
APISERVER_STOP_SECONDS = 5.0
DENIAL_PREFIX = f'admission webhook "{BUDGET_WEBHOOK}" denied the request: '


def policy_yaml(rule: str) -> str:
    return ("apiVersion: energetiscope.io/v1\nkind: BudgetPolicy\ndefaultMode: warn\ncheckedValue: point\n"
            f"defaults: {{}}\nexemptNamespaces: [kube-system, energetiscope]\nwhenInventoryNotSynced: {rule}\n")


def deployment(name: str, replicas: int, namespace: str | None = None) -> dict[str, Any]:
    manifest = workload("Deployment", name, replicas=replicas, cpu=POD_CPU, memory=POD_MEMORY)
    if namespace is not None:
        manifest["metadata"]["namespace"] = namespace
    return manifest


@pytest.fixture(scope="module")
def restartable(control_plane_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[ControlPlane, WiredWebhook, KubeRest]]:
    """The control plane, the wired webhook, and a second client for probes from a thread."""
    # After SIGTERM the apiserver holds open watches (the inventory's) until it is killed:
    # 5 s of that shows the behaviour as well as the harness's default 15 s, and is quicker.
    with ControlPlane(binaries=control_plane_binaries, stop_timeout=APISERVER_STOP_SECONDS) as plane, \
            plane.api_client() as api, \
            plane.api_client() as probe_api:
        webhook = start_wired_webhook(plane, api, tmp_path_factory.mktemp("restart-webhook"),
                                      extra_args=("--watch-interval", str(WATCH_INTERVAL_SECONDS)))
        try:
            yield plane, webhook, KubeRest(probe_api)
        finally:
            # The apiserver may be down if a test failed mid-restart: the configurations'
            # deletion needs it.
            if not plane.running("etcd"):
                plane.start_etcd()
            if not plane.running("kube-apiserver"):
                plane.start_apiserver()
            teardown_wired_webhook(webhook)


def _call(kube: KubeRest, action: Callable[[], Reply]) -> Reply:
    """``action`` again while the client's pooled connections, opened to the stopped
    apiserver, fail once each."""
    def attempt() -> Reply | None:
        try:
            return action()
        except (urllib3.exceptions.HTTPError, OSError):
            return None
    return eventually(attempt, "an apiserver request after the restart", timeout=10.0, interval=0.05)


def set_rule(webhook: WiredWebhook, rule: str) -> None:
    """Write the policy with ``rule`` and wait until the webhook has reloaded it."""
    before = webhook.process.log().count("budget policy loaded")
    webhook.policy_path.write_text(policy_yaml(rule))
    eventually(lambda: True if webhook.process.log().count("budget policy loaded") > before else None,
               f"the webhook reloading its policy (whenInventoryNotSynced: {rule})")


def inventory_state(webhook: WiredWebhook) -> str:
    return str(webhook.readyz()["budgets"]["inventory"])


def namespace_watts(webhook: WiredWebhook, namespace: str) -> float | None:
    with webhook.process.client() as client:
        text = client.get("/metrics").text
    prefix = f'energetiscope_namespace_predicted_watts{{namespace="{namespace}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def truth_watts(kube: KubeRest, namespace: str) -> float:
    """What the namespace's Deployments draw, from the apiserver: replicas x the pod power."""
    items = kube.get(DEPLOYMENTS.collection(namespace)).expect_ok()["items"]
    return sum(item["spec"]["replicas"] * POD_WATTS for item in items)


def direct_validate(webhook: WiredWebhook, manifest: dict[str, Any]) -> dict[str, Any]:
    """The webhook's answer to a CREATE review sent straight to /validate (the apiserver is away)."""
    with webhook.process.client() as client:
        answer = client.post("/validate", json=review(manifest)).json()
    return dict(answer["response"])


def outcome(reply: Reply) -> str:
    """One admission's outcome through the apiserver, as a user would name it."""
    if reply.status == 403 and reply.message.startswith(DENIAL_PREFIX):
        return "denied: not synced" if NOT_SYNCED in reply.message else "denied: over quota"
    if reply.ok:
        return "allowed, warned: not synced" if any(NOT_SYNCED in w for w in reply.warnings) else "allowed"
    return f"HTTP {reply.status}"


class Timeline(threading.Thread):
    """Polls the webhook's inventory state (and, when asked, a dry-run admission through the
    apiserver) every 20 ms, with the time of each observation."""

    def __init__(self, webhook: WiredWebhook, probe: Callable[[], Reply]) -> None:
        super().__init__(name="inventory-timeline", daemon=True)
        self.webhook = webhook
        self.probe = probe
        self.states: list[tuple[float, str]] = []
        self.admissions: list[tuple[float, str]] = []
        self.probing = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.states.append((time.monotonic(), inventory_state(self.webhook)))
            if self.probing.is_set():
                try:
                    answer = outcome(self.probe())
                except (urllib3.exceptions.HTTPError, OSError):
                    answer = "apiserver not answering"
                self.admissions.append((time.monotonic(), answer))
            self._done.wait(0.02)

    def first(self, state: str, after: float) -> float | None:
        return next((t for t, seen in self.states if t >= after and seen == state), None)

    def wait_for(self, state: str, after: float) -> float:
        return eventually(lambda: self.first(state, after), f"the inventory {state}", timeout=RESYNC_BOUND_SECONDS)

    def stop(self) -> None:
        self._done.set()
        self.join(5.0)


def restart_under_inventory(plane: ControlPlane, webhook: WiredWebhook, prober: KubeRest, rule: str,
                            with_etcd: bool) -> dict[str, Any]:
    kube = webhook.kube
    set_rule(webhook, rule)
    # Quota: the 6 pods created below and 1 W more. Before the restart nothing more fits.
    quota = 6 * POD_WATTS + 1.0
    namespace = create_namespace(kube, f"e2e-restart-{rule}", annotations={MODE: "enforce", QUOTA: f"{quota:.3f}"})
    for name, replicas in (("a", 3), ("b", 1), ("c", 2)):
        kube.create(DEPLOYMENTS.collection(namespace), deployment(name, replicas)).expect_ok()
    eventually(lambda: True if namespace_watts(webhook, namespace) == pytest.approx(6 * POD_WATTS, abs=0.01) else None,
               "the inventory counting the first Deployments")
    probe = deployment("probe", 2)  # over the quota beside the 6 pods
    assert outcome(kube.create(DEPLOYMENTS.collection(namespace), probe, dry_run=True)) == "denied: over quota"
    timeline = Timeline(webhook, lambda: prober.create(DEPLOYMENTS.collection(namespace), probe, dry_run=True))
    timeline.start()
    try:
        # -- down ----------------------------------------------------------------------
        # SIGTERM: the apiserver stops accepting at once but holds open watches until it
        # exits (here SIGKILL after the harness's stop timeout); the inventory is right
        # meanwhile, since nothing can change through a stopped apiserver.
        sigterm_at = time.monotonic()
        plane.stop_apiserver()
        exited_at = time.monotonic()
        if with_etcd:
            plane.stop_etcd()
        unsynced_at = timeline.wait_for("syncing", sigterm_at)
        # What a request from elsewhere (another apiserver replica) gets meanwhile: the rule.
        during_outage = direct_validate(webhook, deployment("probe", 2, namespace))
        outage_messages = [*(during_outage.get("warnings") or []),
                           (during_outage.get("status") or {}).get("message", "")]
        if rule == "deny":
            assert during_outage["allowed"] is False and NOT_SYNCED in outage_messages[-1], during_outage
        else:
            # Allowed although the stale total (6 pods) would deny it: the quota was not checked.
            assert during_outage["allowed"] is True, during_outage
            assert any(NOT_SYNCED in m for m in outage_messages) == (rule == "allow-with-warning"), during_outage

        # -- up ------------------------------------------------------------------------
        timeline.probing.set()
        started_at = time.monotonic()
        if with_etcd:
            plane.start_etcd()
        plane.start_apiserver()
        ready_at = time.monotonic()
        synced_at = timeline.wait_for("synced", started_at)
        timeline.probing.clear()
    finally:
        timeline.stop()
    before_sync = Counter(answer for t, answer in timeline.admissions if started_at <= t <= synced_at)
    # Whatever the restarted apiserver admitted before the re-list followed the rule or the
    # re-listed total (the probe is over the quota): never a stale total's silent "allowed".
    rule_answer = {"allow": "allowed", "allow-with-warning": "allowed, warned: not synced",
                   "deny": "denied: not synced"}[rule]
    assert set(before_sync) <= {"apiserver not answering", "denied: over quota", rule_answer}, before_sync

    # -- changes after the restart, then the total against the truth ----------------------
    _call(kube, lambda: kube.delete(DEPLOYMENTS.item(namespace, "a"))).expect_ok()  # 3 pods gone
    eventually(lambda: reply if (reply := kube.create(DEPLOYMENTS.collection(namespace),
                                                      deployment("d", 1))).ok else None,
               "creating d (once the inventory has seen a deleted)")
    kube.delete(DEPLOYMENTS.item(namespace, "b")).expect_ok()
    kube.create(DEPLOYMENTS.collection(namespace), deployment("e", 1)).expect_ok()
    truth = truth_watts(kube, namespace)  # c 2 + d 1 + e 1 pods
    assert truth == pytest.approx(4 * POD_WATTS)
    eventually(lambda: True if namespace_watts(webhook, namespace) == pytest.approx(truth, abs=0.01) else None,
               f"the inventory's total of {namespace} equal to the apiserver's {truth:.3f} W")
    # The exact boundary: 2 more pods fit (6 pods, 1 W under the quota), 3 do not. A total
    # still holding a (3 pods) would deny the first; one missing d or e would admit the second.
    fits = kube.create(DEPLOYMENTS.collection(namespace), deployment("fits", 2), dry_run=True)
    assert outcome(fits) == "allowed", fits.message
    over = kube.create(DEPLOYMENTS.collection(namespace), deployment("over", 3), dry_run=True)
    assert outcome(over) == "denied: over quota", over.message
    assert f"would be {7 * POD_WATTS:.1f} W" in over.message

    measured = {
        "fault": "etcd+apiserver restart" if with_etcd else "apiserver restart",
        "rule": rule,
        "sigterm_to_exit_s": round(exited_at - sigterm_at, 2),
        "unsynced_after_exit_s": round(unsynced_at - exited_at, 2),
        "start_to_apiserver_ready_s": round(ready_at - started_at, 2),
        # Negative: the inventory had re-listed before the apiserver's /readyz said ok.
        "resync_after_apiserver_ready_s": round(synced_at - ready_at, 2),
        "resync_after_start_s": round(synced_at - started_at, 2),
        "during_outage_direct_validate": "allowed" if during_outage["allowed"] else "denied",
        "admissions_until_resync": dict(before_sync),
    }
    print("inventory-restart:", json.dumps(measured))
    return measured


@pytest.mark.parametrize("rule", ["allow-with-warning", "allow", "deny"])
def test_apiserver_restart_relists_and_totals_are_right(
    restartable: tuple[ControlPlane, WiredWebhook, KubeRest], rule: str,
) -> None:
    measured = restart_under_inventory(*restartable, rule, with_etcd=False)
    assert measured["resync_after_apiserver_ready_s"] < RESYNC_BOUND_SECONDS


def test_etcd_and_apiserver_restart_keep_the_data_and_relist(
    restartable: tuple[ControlPlane, WiredWebhook, KubeRest],
) -> None:
    measured = restart_under_inventory(*restartable, "allow-with-warning", with_etcd=True)
    assert measured["resync_after_apiserver_ready_s"] < RESYNC_BOUND_SECONDS


def test_the_webhook_keeps_serving_readyz_while_the_apiserver_is_away(
    restartable: tuple[ControlPlane, WiredWebhook, KubeRest],
) -> None:
    """The inventory being unsynced is no reason to be taken out of the Service: the
    webhook answers by its rule, so /readyz stays 200 and says ``syncing``."""
    plane, webhook, _ = restartable
    plane.stop_apiserver()
    try:
        eventually(lambda: True if inventory_state(webhook) == "syncing" else None, "the inventory unsynced")
        with webhook.process.client() as client:
            assert client.get("/readyz").status_code == 200
    finally:
        plane.start_apiserver()
    eventually(lambda: True if inventory_state(webhook) == "synced" else None, "the inventory re-listed",
               timeout=RESYNC_BOUND_SECONDS)
