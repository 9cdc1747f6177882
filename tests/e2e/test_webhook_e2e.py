"""The mutating webhook through a real kube-apiserver: what `kubectl apply` stores.

The webhook runs as `energetiscope serve` and the apiserver calls it through deploy/'s
MutatingWebhookConfiguration (see webhook_fixtures.py), so these tests see exactly what a
cluster user sees: the stored object, its resourceVersion, and the time a create takes.
"""

from __future__ import annotations

import base64
import math
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kube_rest import KubeRest
from tests.e2e.webhook_fixtures import (
    MUTATING_FILE,
    VALIDATING_FILE,
    WiredWebhook,
    create_namespace,
    eventually,
    load_deploy_manifest,
    run_cli,
    wait_until_mutating_webhook_is_called,
)
from tests.e2e.workloads import SKIP_LABEL, WORKLOADS, energetiscope_annotations, with_cpu, workload
from harness.webhook_process import WebhookProcess

pytestmark = pytest.mark.e2e

P = "energetiscope.io/"
NUMERIC_KEYS = ("pod-power-watts", "pod-power-watts-p10", "pod-power-watts-p90", "workload-power-watts",
                "energy-joules-per-hour")
CONTRACT_KEYS = {P + key for key in (*NUMERIC_KEYS, "workload-power-scope", "model", "basis", "spec-hash")}
# The embedded prior's point estimate (README, Predictors), computed here independently:
# vCPU x (0.74 + 0.1 x (3.5 - 0.74)) W + memory GB x 0.392 W, PUE 1.
PRIOR_WATTS_PER_VCPU = 0.74 + 0.1 * (3.5 - 0.74)
PRIOR_WATTS_PER_GB = 0.392
# What decides which requests reach the webhook and what happens when it fails.
SHIPPED_ADMISSION_KEYS = ("failurePolicy", "sideEffects", "timeoutSeconds", "namespaceSelector", "objectSelector",
                          "rules", "admissionReviewVersions", "reinvocationPolicy")

# kind -> (pods the workload runs, workload-power-scope); the manifests come from
# manifest_for() below. A Job's parallelism 4 is capped by its completions 2.
EXPECTED_PODS: dict[str, tuple[int, str]] = {
    "Pod": (1, "total"),
    "Deployment": (3, "total"),
    "StatefulSet": (2, "total"),
    "DaemonSet": (1, "per-node"),
    "ReplicaSet": (2, "total"),
    "Job": (2, "total"),
    "CronJob": (3, "total"),
    "ReplicationController": (2, "total"),
}


def manifest_for(kind: str, name: str) -> dict[str, Any]:
    pods, _ = EXPECTED_PODS[kind]
    if kind == "Job":
        manifest = workload(kind, name, replicas=4)
        manifest["spec"]["completions"] = 2
        return manifest
    return workload(kind, name, replicas=pods)


def prior_pod_watts(millicores: int, memory_bytes: int) -> float:
    return millicores / 1000 * PRIOR_WATTS_PER_VCPU + memory_bytes / 1e9 * PRIOR_WATTS_PER_GB


def assert_contract(notes: dict[str, str], pods: int, scope: str) -> None:
    """Every key of the README's contract, well-formed and consistent with ``pods``."""
    assert set(notes) == CONTRACT_KEYS, f"keys differ from the contract: {sorted(set(notes) ^ CONTRACT_KEYS)}"
    for key in NUMERIC_KEYS:
        assert re.fullmatch(r"\d+\.\d{3}", notes[P + key]), f"{key}={notes[P + key]!r} is not a 3-decimal number"
    number = {key: float(notes[P + key]) for key in NUMERIC_KEYS}
    assert 0 < number["pod-power-watts-p10"] <= number["pod-power-watts"] <= number["pod-power-watts-p90"]
    # The totals are rounded from the unrounded pod power: allow the rounding of each.
    assert math.isclose(number["workload-power-watts"], pods * number["pod-power-watts"], abs_tol=0.0005 * pods + 0.0005)
    assert math.isclose(number["energy-joules-per-hour"], number["workload-power-watts"] * 3600, abs_tol=1.81)
    assert notes[P + "workload-power-scope"] == scope
    assert (notes[P + "model"], notes[P + "basis"]) == ("ccf-prior-v3", "prior")
    assert re.fullmatch(r"[0-9a-f]{16}", notes[P + "spec-hash"])


@pytest.fixture(scope="module")
def namespace(wired_webhook: WiredWebhook) -> str:
    return create_namespace(wired_webhook.kube, "e2e-mutate")


def counts_delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """The admission requests (mutate, validate) answered between two scrapes, by (endpoint, result)."""
    return {key: after.get(key, 0) - before.get(key, 0) for key in set(before) | set(after)
            if key[0] in ("mutate", "validate") and after.get(key, 0) != before.get(key, 0)}


# -- certs inject ------------------------------------------------------------------------


def test_certs_inject_wrote_the_ca_into_deploys_configurations(wired_webhook: WiredWebhook) -> None:
    kube = wired_webhook.kube
    ca_pem = wired_webhook.ca_pem
    for file_name, plural, name in ((MUTATING_FILE, "mutatingwebhookconfigurations", wired_webhook.mutating_name),
                                    (VALIDATING_FILE, "validatingwebhookconfigurations", wired_webhook.validating_name)):
        shipped = load_deploy_manifest(file_name)
        created = wired_webhook.created_configurations[shipped["kind"]]
        stored = kube.get(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}").expect_ok()
        assert all("caBundle" not in hook["clientConfig"] for hook in created["webhooks"]), "created with a caBundle"
        assert [hook["name"] for hook in stored["webhooks"]] == [hook["name"] for hook in shipped["webhooks"]]
        for hook, shipped_hook in zip(stored["webhooks"], shipped["webhooks"]):
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca_pem
            assert hook["clientConfig"]["url"] == wired_webhook.base_url + shipped_hook["clientConfig"]["service"]["path"]
            # The admission behaviour is deploy/'s, unchanged by rendering or injection.
            # (Keys deploy/ leaves out get the apiserver's defaults, e.g. objectSelector {}.)
            for key in SHIPPED_ADMISSION_KEYS:
                if key in shipped_hook:
                    assert hook[key] == shipped_hook[key], f"{hook['name']}: {key} differs from deploy/"
        assert f"{shipped['kind']}/{name}: caBundle updated ({len(shipped['webhooks'])} webhooks)" in wired_webhook.inject_output

    # A second run finds the bundle current and writes nothing.
    paths = [f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{wired_webhook.mutating_name}",
             f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{wired_webhook.validating_name}"]
    versions = {path: kube.get(path).expect_ok()["metadata"]["resourceVersion"] for path in paths}
    again = run_cli("certs", "inject", "--ca-file", str(wired_webhook.cert_dir / "ca.crt"),
                    "--kubeconfig", str(wired_webhook.kubeconfig_path),
                    "--mutating", wired_webhook.mutating_name, "--validating", wired_webhook.validating_name)
    assert again.stdout.count("caBundle already current") == 2, again.stdout
    for path, version in versions.items():
        assert kube.get(path).expect_ok()["metadata"]["resourceVersion"] == version


# -- every kind, on CREATE and on an unchanged UPDATE ----------------------------------------


@pytest.mark.parametrize("kind", list(EXPECTED_PODS))
def test_create_stores_the_contract_and_reapplying_changes_nothing(
    wired_webhook: WiredWebhook, namespace: str, kind: str
) -> None:
    kube, resource = wired_webhook.kube, WORKLOADS[kind]
    name = f"{kind.lower()}-contract"
    pods, scope = EXPECTED_PODS[kind]

    created = kube.create(resource.collection(namespace), manifest_for(kind, name)).expect_ok()
    stored = kube.get(resource.item(namespace, name)).expect_ok()
    notes = energetiscope_annotations(stored)
    assert notes == energetiscope_annotations(created)
    contract = dict(notes)
    if kind == "CronJob":  # */30 * * * *; no activeDeadlineSeconds, so no per-run keys (tests/e2e/test_runs_e2e.py)
        assert contract.pop(P + "runs-per-day") == "48.000"
    assert_contract(contract, pods, scope)
    # 500m CPU and 256Mi per pod (one container), by the prior's formula.
    assert notes[P + "pod-power-watts"] == f"{prior_pod_watts(500, 256 * 2**20):.3f}"

    # Applying the same object again: the webhook answers with no patch, so the apiserver
    # finds nothing changed and writes nothing.
    before = wired_webhook.request_counts()
    replaced = kube.replace(resource.item(namespace, name), stored).expect_ok()
    delta = counts_delta(before, wired_webhook.request_counts())
    assert replaced["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert energetiscope_annotations(replaced) == notes
    assert delta.get(("mutate", "unchanged")) == 1, delta
    assert ("mutate", "patched") not in delta, delta


def test_server_side_apply_of_the_same_manifest_changes_nothing(wired_webhook: WiredWebhook, namespace: str) -> None:
    # `kubectl apply --server-side`: the manifest never names our annotations, so a second
    # apply must neither drop them nor rewrite the object.
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    manifest = workload("Deployment", "applied", replicas=2)

    def apply() -> dict[str, Any]:
        return kube.request("PATCH", resource.item(namespace, "applied"), manifest, {"fieldManager": "kubectl"},
                            content_type="application/apply-patch+yaml").expect_ok()

    first = apply()
    assert_contract(energetiscope_annotations(first), 2, "total")
    before = wired_webhook.request_counts()
    second = apply()
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert energetiscope_annotations(second) == energetiscope_annotations(first)
    assert counts_delta(before, wired_webhook.request_counts()).get(("mutate", "unchanged")) == 1


def test_forged_annotations_are_corrected_on_create_and_on_patch(wired_webhook: WiredWebhook, namespace: str) -> None:
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    honest = f"{prior_pod_watts(500, 256 * 2**20):.3f}"
    forged = workload("Deployment", "forged")
    forged["metadata"]["annotations"] = {P + "pod-power-watts": "0.001", P + "basis": "model"}
    created = kube.create(resource.collection(namespace), forged).expect_ok()
    assert energetiscope_annotations(created)[P + "pod-power-watts"] == honest
    assert energetiscope_annotations(created)[P + "basis"] == "prior"

    # `kubectl annotate --overwrite` is a merge patch: the UPDATE it makes is corrected too.
    patched = kube.merge_patch(resource.item(namespace, "forged"),
                               {"metadata": {"annotations": {P + "pod-power-watts": "0.002"}}}).expect_ok()
    assert energetiscope_annotations(patched) == energetiscope_annotations(created)
    assert patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_dry_run_returns_the_annotated_object_and_stores_nothing(wired_webhook: WiredWebhook, namespace: str) -> None:
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    answered = kube.create(resource.collection(namespace), workload("Deployment", "dry", replicas=2), dry_run=True)
    assert_contract(energetiscope_annotations(answered.expect_ok()), 2, "total")
    assert kube.get(resource.item(namespace, "dry")).status == 404


def test_cpu_change_changes_spec_hash_and_pod_power(wired_webhook: WiredWebhook, namespace: str) -> None:
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    created = kube.create(resource.collection(namespace), workload("Deployment", "resize", replicas=2)).expect_ok()
    before = energetiscope_annotations(created)

    updated = kube.replace(resource.item(namespace, "resize"), with_cpu(created, "2")).expect_ok()
    after = energetiscope_annotations(updated)
    assert_contract(after, 2, "total")
    assert after[P + "spec-hash"] != before[P + "spec-hash"]
    assert after[P + "pod-power-watts"] == f"{prior_pod_watts(2000, 256 * 2**20):.3f}"
    assert float(after[P + "pod-power-watts"]) > float(before[P + "pod-power-watts"])
    assert energetiscope_annotations(kube.get(resource.item(namespace, "resize")).expect_ok()) == after


def test_scale_only_update_moves_the_totals_not_the_pod_power(wired_webhook: WiredWebhook, namespace: str) -> None:
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    created = kube.create(resource.collection(namespace), workload("Deployment", "grow", replicas=2)).expect_ok()
    before = energetiscope_annotations(created)

    created["spec"]["replicas"] = 5
    after = energetiscope_annotations(kube.replace(resource.item(namespace, "grow"), created).expect_ok())
    assert_contract(after, 5, "total")
    for unchanged in ("spec-hash", "pod-power-watts", "pod-power-watts-p10", "pod-power-watts-p90"):
        assert after[P + unchanged] == before[P + unchanged], unchanged
    for total in ("workload-power-watts", "energy-joules-per-hour"):
        assert float(after[P + total]) > float(before[P + total]) * 2, total


def test_delete_is_not_in_the_webhooks_way(wired_webhook: WiredWebhook, namespace: str) -> None:
    kube = wired_webhook.kube
    for kind in ("Deployment", "Pod", "CronJob"):
        resource = WORKLOADS[kind]
        kube.create(resource.collection(namespace), workload(kind, f"{kind.lower()}-gone")).expect_ok()
        before = wired_webhook.request_counts()
        deleted = kube.delete(resource.item(namespace, f"{kind.lower()}-gone"))
        assert deleted.ok, deleted.message
        assert kube.get(resource.item(namespace, f"{kind.lower()}-gone")).status == 404
        # deploy/'s rules list CREATE and UPDATE only: a DELETE never reaches the webhook.
        assert counts_delta(before, wired_webhook.request_counts()) == {}


# -- opting out ---------------------------------------------------------------------------


def test_object_labelled_skip_is_never_annotated(wired_webhook: WiredWebhook, namespace: str) -> None:
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    before = wired_webhook.request_counts()
    skipped = workload("Deployment", "opted-out", labels={SKIP_LABEL: "true"})
    stored = kube.create(resource.collection(namespace), skipped).expect_ok()
    assert energetiscope_annotations(stored) == {}
    # deploy/'s objectSelector kept the apiserver from calling the mutating webhook at all.
    assert not any(endpoint == "mutate" for endpoint, _ in counts_delta(before, wired_webhook.request_counts()))


def test_webhook_itself_skips_an_object_that_gains_the_skip_label(wired_webhook: WiredWebhook, namespace: str) -> None:
    # On UPDATE the objectSelector matches when the old or the new object matches, so the
    # webhook is called for an object being labelled skip; it must leave it alone too.
    kube, resource = wired_webhook.kube, WORKLOADS["Deployment"]
    created = kube.create(resource.collection(namespace), workload("Deployment", "opting-out")).expect_ok()
    before_notes = energetiscope_annotations(created)
    changed = with_cpu(created, "3")
    changed["metadata"]["labels"][SKIP_LABEL] = "true"

    before = wired_webhook.request_counts()
    updated = kube.replace(resource.item(namespace, "opting-out"), changed).expect_ok()
    delta = counts_delta(before, wired_webhook.request_counts())
    assert delta.get(("mutate", "skipped")) == 1, delta
    # Not re-predicted: the CPU tripled, the annotations are as they were.
    assert energetiscope_annotations(updated) == before_notes


def test_namespace_labelled_skip_is_never_annotated(wired_webhook: WiredWebhook) -> None:
    kube = wired_webhook.kube
    skipped_namespace = create_namespace(kube, "e2e-skipped", labels={SKIP_LABEL: "true"})
    before = wired_webhook.request_counts()
    stored = kube.create(WORKLOADS["Pod"].collection(skipped_namespace), workload("Pod", "plain")).expect_ok()
    assert energetiscope_annotations(stored) == {}
    assert not any(endpoint == "mutate" for endpoint, _ in counts_delta(before, wired_webhook.request_counts()))


# -- failing open ---------------------------------------------------------------------------

# What a create may take beyond the webhooks' timeouts on a loaded 2-core machine.
TIMING_MARGIN_SECONDS = 2.5


def _timed_create(kube: KubeRest, namespace: str, name: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    reply = kube.create(WORKLOADS["Deployment"].collection(namespace), workload("Deployment", name))
    return time.monotonic() - started, reply.expect_ok()


def _timeouts(wired_webhook: WiredWebhook) -> list[int]:
    """timeoutSeconds of every webhook in the configurations the apiserver holds."""
    timeouts = []
    for plural, name in (("mutatingwebhookconfigurations", wired_webhook.mutating_name),
                         ("validatingwebhookconfigurations", wired_webhook.validating_name)):
        stored = wired_webhook.kube.get(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")
        timeouts += [hook["timeoutSeconds"] for hook in stored.expect_ok()["webhooks"]]
    return timeouts


def test_creates_fail_open_within_the_timeouts_when_the_webhook_is_down(
    wired_webhook: WiredWebhook, namespace: str
) -> None:
    kube = wired_webhook.kube
    timeouts = _timeouts(wired_webhook)
    assert timeouts == [3, 3]  # deploy/'s; the bounds below are built from them
    try:
        # Hung: the kernel still accepts connections, nothing answers. The apiserver waits
        # out each webhook's timeout (mutating ones in turn, then the validating one), then
        # ignores it, as failurePolicy Ignore says.
        wired_webhook.process.signal(signal.SIGSTOP)
        try:
            elapsed, stored = _timed_create(kube, namespace, "while-hung")
        finally:
            wired_webhook.process.signal(signal.SIGCONT)
        assert energetiscope_annotations(stored) == {}
        print(f"create with the webhook hung: {elapsed:.2f} s")
        # Both waited out (about 6 s here), and not a moment longer than the margin.
        assert sum(timeouts) - 0.5 <= elapsed <= sum(timeouts) + TIMING_MARGIN_SECONDS, elapsed

        # Gone: connections are refused at once, so the create is not slowed at all.
        wired_webhook.process.process.kill()
        wired_webhook.process.process.wait()
        elapsed, stored = _timed_create(kube, namespace, "while-gone")
        assert energetiscope_annotations(stored) == {}
        print(f"create with the webhook gone: {elapsed:.2f} s")
        assert elapsed <= min(timeouts), elapsed
    finally:
        wired_webhook.restart()
    # And back: the next creates are annotated again.
    wait_until_mutating_webhook_is_called(kube, namespace)


def test_sigterm_exits_promptly_with_the_inventory_on(wired_webhook: WiredWebhook, tmp_path: Path) -> None:
    process = WebhookProcess(wired_webhook.cert_dir, tmp_path / "webhook.log",
                             "--kube-access", str(wired_webhook.kubeconfig_path)).start()
    try:
        eventually(lambda: True if _readyz(process)["budgets"]["inventory"] == "synced" else None,
                   "the second webhook's inventory synced")
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        try:
            process.process.wait(GRACEFUL_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        assert process.process.poll() is not None, (
            f"still running {time.monotonic() - started:.1f} s after SIGTERM")
    finally:
        process.stop(timeout=0.1)


# An idle webhook with no inventory exits within a second of SIGTERM; a few seconds leave
# room for in-flight reviews (each is bounded by --review-timeout, 2 s by default).
GRACEFUL_EXIT_SECONDS = 5.0


def _readyz(process: WebhookProcess) -> dict[str, Any]:
    with process.client() as client:
        return client.get("/readyz").json()
