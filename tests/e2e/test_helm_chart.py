"""deploy/helm/energetiscope, with the real helm, against the real apiserver.

* ``helm lint --strict`` passes for the value combinations that matter, and values.schema.json
  refuses values that would break an install.
* One source of truth: with the release and namespace both named ``energetiscope``, the chart
  renders exactly the objects of deploy/overlays/* (and deploy/trainer), less the labels and
  annotations only helm adds. A change to one without the other fails here.
* Every object of every combination is accepted by a strict server-side dry run.
* ``helm install``, ``upgrade`` and ``uninstall`` on the test apiserver, with the chart's webhook
  configurations pointed (``webhook.url``, ``certificates.mode=existingSecret``) at a webhook
  process of this module's own: the apiserver calls it through them, it annotates and denies,
  its /metrics count what it decided, and after uninstall no configuration is left behind.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.controlplane import BinariesMissing, ControlPlane
from tests.e2e.helm import CHART_DIR, Helm, locate_helm, set_flags
from tests.e2e.kube_rest import KubeRest, ServedResource, served_resources
from tests.e2e.kustomize import build, locate_kustomize
from tests.e2e.webhook_fixtures import POLICY_YAML, create_namespace, eventually
from tests.e2e.workloads import WORKLOADS, energetiscope_annotations, workload
from harness.prometheus import PrometheusHarness
from harness.webhook_process import WebhookProcess, create_certs
from webhook.model.artifact import build_pipeline, save_model
from webhook.model.schema import ContainerSpec, InferenceRequest

pytestmark = pytest.mark.e2e

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
SKIP_VARIABLE = "ENERGETISCOPE_SKIP_E2E"
# What only helm adds; everything else must be the kustomize base's.
HELM_ONLY_LABELS = frozenset({"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
                              "app.kubernetes.io/version"})
HELM_ONLY_ANNOTATION_PREFIX = "helm.sh/"
CRD_GROUPS = {
    "cert-manager.io": "needs cert-manager's CRDs, which the test control plane does not install",
    "monitoring.coreos.com": "needs the Prometheus Operator's CRDs, which the test control plane does not install; "
                             "the rules themselves are checked by promtool (tests/monitoring)",
}
FAKE_CA_BUNDLE = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").decode()

# The value combinations that matter: each certificate mode, the model and trainer, monitoring,
# a webhook outside the cluster, and the knobs an operator turns.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager": {"certificates.mode": "certManager"},
    "existing-secret": {"certificates.mode": "existingSecret", "certificates.caBundle": FAKE_CA_BUNDLE,
                        "certificates.secretName": "my-tls"},
    "trainer-and-model": {"trainer.enabled": True, "model.pvc.enabled": True, "model.sha256": "a" * 64,
                          "trainer.storage.storageClassName": "nfs"},
    "monitoring": {"serviceMonitor.enabled": True, "prometheusRule.enabled": True, "dashboards.enabled": True,
                   "metrics.workloadMaxSeries": 200, "serviceMonitor.labels": {"release": "prom"}},
    "url-fail-closed": {"webhook.url": "https://webhook.example:8443", "webhook.failurePolicy": "Fail",
                        "webhook.timeoutSeconds": 10, "certificates.mode": "existingSecret",
                        "certificates.caBundle": FAKE_CA_BUNDLE},
    "selectors-and-scheduling": {
        "webhook.namespaceSelector": {"matchLabels": {"energy": "on"},
                                      "matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}]},
        "webhook.objectSelector": {"matchLabels": {"energy": "on"}},
        "webhook.excludedNamespaces": ["kube-system", "monitoring"],
        "replicaCount": 3, "podDisruptionBudget.minAvailable": 2, "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry"}], "image.pullPolicy": "Always", "logLevel": "debug",
        "extraArgs": ["--review-timeout", "1.5"],
        "budgets.policy": {"defaultMode": "enforce", "checkedValue": "p90", "defaults": {"quotaWatts": 500},
                           "exemptNamespaces": ["kube-system"], "whenInventoryNotSynced": "deny"},
    },
}
# Values the schema must refuse, and a word its message must contain.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-mode": ({"certificates.mode": "vault"}, "certificates/mode"),
    "failure-policy": ({"webhook.failurePolicy": "Never"}, "failurePolicy"),
    "no-replicas": ({"replicaCount": 0}, "replicaCount"),
    "timeout": ({"webhook.timeoutSeconds": 31}, "timeoutSeconds"),
    "typo": ({"serviceMonitr": {"enabled": True}}, "serviceMonitr"),
    "budget-mode": ({"budgets.policy.defaultMode": "block"}, "defaultMode"),
    "plain-http-url": ({"webhook.url": "http://x:80"}, "url"),
}


def _locate() -> tuple[Path | None, str | None]:
    try:
        return locate_helm(), None
    except BinariesMissing as error:
        return None, str(error)


HELM_BINARY, HELM_PROBLEM = _locate()


def _require_helm(tmp_path: Path) -> Helm:
    if HELM_BINARY is None:
        if os.environ.get(SKIP_VARIABLE) == "1":
            pytest.skip(f"{SKIP_VARIABLE}=1 and {HELM_PROBLEM}")
        pytest.fail(f"{HELM_PROBLEM} (or set {SKIP_VARIABLE}=1 to skip the end-to-end tests)", pytrace=False)
    return Helm(HELM_BINARY, tmp_path / "helm")


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return _require_helm(tmp_path_factory.mktemp("helm"))


# -- lint and schema ----------------------------------------------------------------------

@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_helm_lint_strict_passes(helm: Helm, combination: str) -> None:
    completed = helm.run("lint", "--strict", str(CHART_DIR), "--namespace", "energetiscope",
                         *set_flags(COMBINATIONS[combination]))
    assert "1 chart(s) linted, 0 chart(s) failed" in completed.stdout


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_schema_refuses_values_that_would_break_an_install(helm: Helm, case: str) -> None:
    values, word = REFUSED[case]
    completed = helm.run("lint", "--strict", str(CHART_DIR), *set_flags(values), check=False)
    assert completed.returncode != 0, f"helm lint accepted {values}"
    assert word in completed.stdout + completed.stderr


def test_an_existing_secret_needs_its_ca_bundle(helm: Helm) -> None:
    completed = helm.run("template", "x", str(CHART_DIR), *set_flags({"certificates.mode": "existingSecret"}),
                         check=False)
    assert completed.returncode != 0
    assert "certificates.caBundle is required" in completed.stderr


def test_notes_say_how_to_check_it_works(helm: Helm, control_plane: ControlPlane) -> None:
    # helm template leaves NOTES.txt out; a client-side dry-run install renders it (and asks
    # the apiserver its version).
    bound = Helm(helm.binary, helm.home, control_plane.kubeconfig_path)
    rendered = bound.run("install", "energetiscope", str(CHART_DIR), "--namespace", "energetiscope",
                        "--dry-run=client")
    assert "rollout status deployment/energetiscope-webhook" in rendered.stdout
    assert "get job/energetiscope-certs-bootstrap secret/energetiscope-webhook-tls" in rendered.stdout
    assert "--dry-run=server" in rendered.stdout


# -- one source of truth with deploy/ (kustomize) ---------------------------------------------

def _strip_helm_metadata(node: Any) -> Any:
    """``node`` less what only helm adds, wherever a ``metadata`` mapping sits (pod templates too)."""
    if isinstance(node, list):
        return [_strip_helm_metadata(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: _strip_helm_metadata(value) for key, value in node.items()}
    metadata = result.get("metadata")
    if isinstance(metadata, dict):
        labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k not in HELM_ONLY_LABELS}
        notes = {k: v for k, v in (metadata.get("annotations") or {}).items()
                 if not k.startswith(HELM_ONLY_ANNOTATION_PREFIX)}
        metadata = {k: v for k, v in metadata.items() if k not in ("labels", "annotations")}
        if labels:
            metadata["labels"] = labels
        if notes:
            metadata["annotations"] = notes
        result["metadata"] = metadata
    return result


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    normal = _strip_helm_metadata(copy.deepcopy(obj))
    if normal["kind"] == "ConfigMap":  # YAML files in a ConfigMap compare by content, not layout
        normal["data"] = {key: yaml.safe_load(value) if key.endswith(".yaml") else value
                          for key, value in (normal.get("data") or {}).items()}
    return normal


def _by_identity(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": _comparable(o)
            for o in objects if o["kind"] != "Namespace"}


EQUIVALENT: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "self-managed": ({}, ("overlays/self-managed",)),
    "cert-manager": ({"certificates.mode": "certManager"}, ("overlays/cert-manager",)),
    "self-managed+trainer": ({"trainer.enabled": True}, ("overlays/self-managed", "trainer")),
}


@pytest.mark.parametrize("case", sorted(EQUIVALENT))
def test_the_chart_renders_what_kustomize_renders(helm: Helm, case: str) -> None:
    values, directories = EQUIVALENT[case]
    try:
        kustomize = locate_kustomize()
    except BinariesMissing as error:
        pytest.fail(str(error), pytrace=False)
    expected: dict[str, dict[str, Any]] = {}
    for directory in directories:
        expected |= _by_identity(build(kustomize, DEPLOY_DIR / directory))
    rendered = _by_identity(helm.template("energetiscope", "energetiscope", values))
    assert sorted(rendered) == sorted(expected), "the chart and deploy/ render different objects"
    for identity, obj in expected.items():
        if rendered[identity] != obj:
            diff = difflib.unified_diff(yaml.safe_dump(obj, sort_keys=True).splitlines(),
                                        yaml.safe_dump(rendered[identity], sort_keys=True).splitlines(),
                                        "kustomize", "helm", lineterm="")
            pytest.fail(f"{identity} differs:\n" + "\n".join(diff), pytrace=False)


# -- every rendering passes a strict server-side dry run ----------------------------------

@pytest.fixture(scope="module")
def served(kube_rest: KubeRest) -> dict[tuple[str, str], ServedResource]:
    return served_resources(kube_rest)


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_rendered_object_passes_a_strict_server_side_dry_run(
    helm: Helm, kube_rest: KubeRest, served: dict[tuple[str, str], ServedResource], combination: str
) -> None:
    namespace = create_namespace(kube_rest, "helm-dry")
    objects = helm.template("energetiscope", namespace, COMBINATIONS[combination])
    assert objects, "nothing rendered"
    skipped: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        resource = served.get((obj["apiVersion"], kind))
        if resource is None:
            assert group in CRD_GROUPS, f"{obj['apiVersion']} {kind} is neither served nor a known CRD group"
            skipped.append(f"{kind}/{name}")
            continue
        object_namespace = obj["metadata"].get("namespace")
        if resource.namespaced:
            assert object_namespace == namespace, f"{kind}/{name} is not in the release namespace"
        else:
            assert object_namespace is None, f"cluster-scoped {kind}/{name} has a namespace"
        reply = kube_rest.request("POST", resource.collection(object_namespace), obj,
                                  {"dryRun": "All", "fieldValidation": "Strict"})
        assert reply.status == 201, f"{combination}: {kind}/{name}: HTTP {reply.status}: {reply.message or reply.body}"
        assert reply.warnings == [], f"{combination}: {kind}/{name}: the apiserver warned: {reply.warnings}"
    if combination == "monitoring":
        assert len(skipped) == 2 and all(s.split("/")[0] in ("ServiceMonitor", "PrometheusRule") for s in skipped)


def test_the_dashboard_configmap_carries_the_sidecar_label_and_valid_json(helm: Helm) -> None:
    objects = helm.template("energetiscope", "energetiscope", {"dashboards.enabled": True, "dashboards.namespace": "grafana"})
    (dashboard,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert json.loads(dashboard["data"]["energetiscope-dashboard.json"])["uid"] == "energetiscope"


# -- install, upgrade, uninstall against the test apiserver ---------------------------------

RELEASE = "es-e2e"
RELEASE_NAMESPACE = "es-e2e"
CONFIGURATION = "es-e2e-energetiscope"
CHART_SELECTOR_LABEL = "energetiscope-e2e/chart"


@dataclass
class Installed:
    helm: Helm
    webhook: WebhookProcess
    kube: KubeRest
    cert_dir: Path

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with self.webhook.client() as client:
            text = client.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def count(self, endpoint: str, result: str | None = None) -> float:
        return sum(value for (name, labels), value in self.samples().items()
                   if name == "energetiscope_requests_total" and dict(labels)["endpoint"] == endpoint
                   and (result is None or dict(labels)["result"] == result))

    def configurations(self) -> list[str]:
        names = []
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            reply = self.kube.get(f"/apis/admissionregistration.k8s.io/v1/{plural}")
            names += [f"{plural}/{item['metadata']['name']}" for item in reply.expect_ok()["items"]
                      if item["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE
                      or item["metadata"]["name"] == CONFIGURATION]
        return names


MODEL_CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _small_model(path: Path) -> None:
    """A trained model artifact (a few pods at 5 W) whose card says when it was trained."""
    requests = [InferenceRequest(workload_kind="Deployment", containers=[ContainerSpec(name="c", image="nginx", req_cpu_mcpu=m)])
                for m in (100, 200, 400, 800)]
    save_model(path, build_pipeline(n_neighbors=2).fit(requests, [5.0] * 4), "e2e-helm-model",
               metadata={"created_at": MODEL_CREATED.isoformat()})


def _chart_values(webhook: WebhookProcess, cert_dir: Path) -> dict[str, Any]:
    return {
        "certificates.mode": "existingSecret",
        "certificates.caBundle": base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode(),
        "webhook.url": f"https://127.0.0.1:{webhook.port}",
        "metrics.workloadMaxSeries": 5,
    }


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, kube_rest: KubeRest, helm: Helm,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """A webhook process of this module's own, and the chart installed to call it."""
    work = tmp_path_factory.mktemp("helm-install")
    cert_dir = create_certs(work / "certs", "localhost", ips=("127.0.0.1",))
    policy = work / "policy.yaml"
    policy.write_text(POLICY_YAML)
    model = work / "model.esmodel"
    _small_model(model)
    webhook = WebhookProcess(
        cert_dir, work / "webhook.log", "--kube-access", str(control_plane.kubeconfig_path),
        "--policy-file", str(policy), "--workload-metrics-max-series", "5", "--model", str(model),
        env={"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
    ).start()
    bound = Helm(helm.binary, work / "helm", control_plane.kubeconfig_path)
    state = Installed(bound, webhook, kube_rest, cert_dir)
    try:
        bound.run("install", RELEASE, str(CHART_DIR), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                  *set_flags(_chart_values(webhook, cert_dir)))
        yield state
    finally:
        bound.run("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, check=False)
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            kube_rest.delete(f"/apis/admissionregistration.k8s.io/v1/{plural}/{CONFIGURATION}")
        webhook.stop(timeout=3.0)


def _mutated_by_us(installed: Installed, namespace: str, name: str) -> bool:
    """Whether a dry-run Pod in ``namespace`` came back annotated and our webhook counted the call."""
    before = installed.count("mutate")
    reply = installed.kube.create(WORKLOADS["Pod"].collection(namespace), workload("Pod", name), dry_run=True)
    annotated = bool(energetiscope_annotations(reply.expect_ok()))
    return annotated and installed.count("mutate") > before


def test_install_creates_both_configurations_pointing_at_the_webhook(installed: Installed) -> None:
    status = installed.helm.run("status", RELEASE, "--namespace", RELEASE_NAMESPACE)
    assert "STATUS: deployed" in status.stdout
    assert "rollout status deployment/es-e2e-energetiscope-webhook" in status.stdout  # NOTES.txt
    assert sorted(installed.configurations()) == [f"mutatingwebhookconfigurations/{CONFIGURATION}",
                                                  f"validatingwebhookconfigurations/{CONFIGURATION}"]
    mutating = installed.kube.get(
        f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}").expect_ok()
    (hook,) = mutating["webhooks"]
    assert hook["clientConfig"]["url"] == f"https://127.0.0.1:{installed.webhook.port}/mutate"
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == (installed.cert_dir / "ca.crt").read_bytes()
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", RELEASE_NAMESPACE]


def test_the_apiserver_calls_the_chart_installed_webhooks(installed: Installed) -> None:
    namespace = create_namespace(installed.kube, "helm-mutate")
    eventually(lambda: True if _mutated_by_us(installed, namespace, "probe") else None,
               "the apiserver calling the webhook through the chart's mutating configuration")

    # Budgets: a namespace nothing fits, once the webhook's inventory has seen it.
    strict = create_namespace(installed.kube, "helm-budget", annotations={
        "energetiscope.io/budget-mode": "enforce", "energetiscope.io/max-workload-watts": "0"})

    def denied_by_us() -> bool | None:
        before = installed.count("validate", "denied")
        reply = installed.kube.create(WORKLOADS["Pod"].collection(strict), workload("Pod", "greedy"), dry_run=True)
        return True if reply.status == 403 and "budget.energetiscope.io" in reply.message \
            and installed.count("validate", "denied") > before else None

    eventually(denied_by_us, "the chart's validating configuration denying over budget through our webhook")
    decisions = installed.samples()
    key = ("energetiscope_budget_decisions_total", (("mode", "enforce"), ("namespace", strict), ("result", "denied")))
    assert decisions.get(key, 0.0) >= 1.0


def test_metrics_show_the_namespace_power_the_webhook_admitted(installed: Installed) -> None:
    namespace = create_namespace(installed.kube, "helm-metrics")
    eventually(lambda: True if _mutated_by_us(installed, namespace, "probe") else None, "mutation through the chart")
    created = []
    for name, replicas in (("web", 3), ("api", 2)):
        manifest = workload("Deployment", name, replicas=replicas)
        created.append(installed.kube.create(WORKLOADS["Deployment"].collection(namespace), manifest).expect_ok())
    expected_watts = sum(obj["spec"]["replicas"] * float(obj["metadata"]["annotations"]["energetiscope.io/pod-power-watts"])
                         for obj in created)
    assert expected_watts > 0

    def namespace_watts() -> float | None:
        value = installed.samples().get(("energetiscope_namespace_predicted_watts", (("namespace", namespace),)))
        return value if value is not None and abs(value - expected_watts) < 1e-6 else None

    eventually(namespace_watts, f"energetiscope_namespace_predicted_watts{{namespace={namespace!r}}} == {expected_watts}")
    samples = installed.samples()
    assert samples[("energetiscope_namespace_budget_mode", (("mode", "warn"), ("namespace", namespace)))] == 1.0
    workloads = {dict(labels)["workload"]: value for (name, labels), value in samples.items()
                 if name == "energetiscope_workload_predicted_watts" and dict(labels)["namespace"] == namespace}
    series = [labels for (name, labels) in samples if name == "energetiscope_workload_predicted_watts"]
    assert len(series) <= 5, "the series bound is not applied"
    for obj in created:
        if obj["metadata"]["name"] in workloads:
            pod_watts = float(obj["metadata"]["annotations"]["energetiscope.io/pod-power-watts"])
            assert workloads[obj["metadata"]["name"]] == pytest.approx(obj["spec"]["replicas"] * pod_watts)
    not_after = x509.load_pem_x509_certificate((installed.cert_dir / "tls.crt").read_bytes()).not_valid_after_utc
    assert samples[("energetiscope_certificate_expiry_timestamp_seconds", ())] == not_after.timestamp()


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_every_kind_is_annotated_through_the_chart(installed: Installed, kind: str) -> None:
    namespace = create_namespace(installed.kube, "helm-kinds")
    eventually(lambda: True if _mutated_by_us(installed, namespace, "probe") else None, "mutation through the chart")
    before = installed.count("mutate")
    reply = installed.kube.create(WORKLOADS[kind].collection(namespace), workload(kind, "w"), dry_run=True)
    assert energetiscope_annotations(reply.expect_ok()), f"{kind} not annotated"
    assert installed.count("mutate") > before, f"the chart's configuration did not send the {kind} to our webhook"


def test_scaling_past_a_budget_is_checked_through_the_chart(installed: Installed) -> None:
    """The scale subresource rules of the chart's validating configuration: our webhook sees
    ``kubectl scale`` and denies past the namespace's per-workload limit, 2.5 pods' worth."""
    namespace = create_namespace(installed.kube, "helm-scale", annotations={"energetiscope.io/budget-mode": "enforce"})
    eventually(lambda: True if _mutated_by_us(installed, namespace, "probe") else None, "mutation through the chart")
    created = installed.kube.create(WORKLOADS["Deployment"].collection(namespace),
                                    workload("Deployment", "web", replicas=1)).expect_ok()
    pod_watts = float(created["metadata"]["annotations"]["energetiscope.io/pod-power-watts"])
    installed.kube.merge_patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"annotations": {
        "energetiscope.io/max-workload-watts": f"{2.5 * pod_watts:.3f}"}}}).expect_ok()
    scale = WORKLOADS["Deployment"].item(namespace, "web") + "/scale"

    def denied_by_us() -> bool | None:
        before = installed.count("validate", "denied")
        reply = installed.kube.merge_patch(scale + "?dryRun=All", {"spec": {"replicas": 3}})
        return True if reply.status == 403 and installed.count("validate", "denied") > before else None

    eventually(denied_by_us, f"our webhook denying a scale to 3 x {pod_watts} W past 2.5 pods' worth")
    before = installed.count("validate", "allowed")
    installed.kube.merge_patch(scale + "?dryRun=All", {"spec": {"replicas": 2}})
    assert installed.count("validate", "allowed") > before, "a scale to 2 pods within the limit was not allowed by our webhook"


def test_the_prometheus_rule_is_the_rules_file(helm: Helm) -> None:
    objects = helm.template("energetiscope", "energetiscope", {"prometheusRule.enabled": True,
                                                                "prometheusRule.labels": {"release": "prom"}})
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())


RULES_FILE = CHART_DIR / "files" / "prometheus-rules.yaml"
DASHBOARD_FILE = CHART_DIR / "files" / "energetiscope-dashboard.json"
KEPLER_STEP_SECONDS = 15
KEPLER_HISTORY_SECONDS = 600


def _kepler_openmetrics(namespace: str, deployment_pod: str, replica_set: str, stateful_pod: str, end: float) -> str:
    """Both lines of Kepler and kube-state-metrics' pod owners for two pods, sampled every 15 s
    for the 10 minutes before ``end``: 3 J/s + 1 J/s for the Deployment's pod (Kepler <= 0.9,
    dynamic and idle) and 4 J/s package + 1 J/s dram for the StatefulSet's (Kepler >= 0.10)."""
    times = [end - KEPLER_HISTORY_SECONDS + i * KEPLER_STEP_SECONDS
             for i in range(KEPLER_HISTORY_SECONDS // KEPLER_STEP_SECONDS + 1)]
    start = times[0]
    lines = ["# TYPE kepler_container_joules counter"]
    for mode, watts in (("dynamic", 3.0), ("idle", 1.0)):
        labels = (f'container_namespace="{namespace}",pod_name="{deployment_pod}",container_name="app",'
                  f'mode="{mode}",namespace="kepler",pod="kepler-a"')
        lines += [f"kepler_container_joules_total{{{labels}}} {watts * (t - start):.1f} {t:.3f}" for t in times]
    lines.append("# TYPE kepler_pod_cpu_joules counter")
    for zone, watts in (("package", 4.0), ("dram", 1.0)):
        labels = (f'pod_namespace="{namespace}",pod_name="{stateful_pod}",zone="{zone}",state="running",'
                  f'namespace="kepler",pod="kepler-b"')
        lines += [f"kepler_pod_cpu_joules_total{{{labels}}} {watts * (t - start):.1f} {t:.3f}" for t in times]
    lines.append("# TYPE kube_pod_owner gauge")
    for pod, kind, owner in ((deployment_pod, "ReplicaSet", replica_set), (stateful_pod, "StatefulSet", "db")):
        labels = f'namespace="{namespace}",pod="{pod}",owner_kind="{kind}",owner_name="{owner}",owner_is_controller="true"'
        lines += [f"kube_pod_owner{{{labels}}} 1 {t:.3f}" for t in times]
    return "\n".join(lines) + "\n# EOF\n"


def _dashboard_queries(namespace: str) -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    queries = [(f"{panel['title']} [{target['refId']}]", target["expr"])
               for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [(f"variable {v['name']}", v["query"].removeprefix("label_values(").rsplit(",", 1)[0])
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [(title, expression.replace("$__rate_interval", "30s").replace("$namespace", namespace))
            for title, expression in queries]


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    installed: Installed, tmp_path: Path
) -> None:
    """A real Prometheus scrapes the chart-installed webhook over TLS every second, evaluates the
    chart's rules, and holds backfilled Kepler series for the namespace's pods: every panel's
    query, for that namespace, returns data."""
    namespace = create_namespace(installed.kube, "helm-dash", annotations={
        "energetiscope.io/quota-watts": "1000000", "energetiscope.io/max-workload-watts": "1000000"})
    eventually(lambda: True if _mutated_by_us(installed, namespace, "probe") else None, "mutation through the chart")
    # The largest workload anywhere, so the 5-series bound keeps it.
    installed.kube.create(WORKLOADS["Deployment"].collection(namespace),
                          workload("Deployment", "web", replicas=50)).expect_ok()

    prometheus_config = yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [{
            "job_name": "energetiscope", "scheme": "https", "metrics_path": "/metrics",
            "tls_config": {"ca_file": str(installed.cert_dir / "ca.crt"), "server_name": "localhost"},
            "static_configs": [{"targets": [f"127.0.0.1:{installed.webhook.port}"]}],
        }],
    })
    with PrometheusHarness(tmp_path / "prometheus", config_yaml=prometheus_config) as prometheus:
        prometheus.backfill(_kepler_openmetrics(namespace, "web-6f7c9d8b5-x2x9k", "web-6f7c9d8b5", "db-0",
                                                time.time() - 5), name="kepler")
        url = prometheus.start()
        # Reviews while Prometheus scrapes, so the rates have something to show.
        for index in range(3):
            installed.kube.create(WORKLOADS["Pod"].collection(namespace), workload("Pod", f"p{index}"), dry_run=True)
            time.sleep(1.0)

        def empty_queries() -> list[str]:
            empty = []
            for title, expression in _dashboard_queries(namespace):
                reply = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10).json()
                assert reply["status"] == "success", f"{title}: {reply}"
                if not reply["data"]["result"]:
                    empty.append(title)
            return empty

        last: list[list[str]] = []

        def all_have_data() -> bool | None:
            last.append(empty_queries())
            return True if not last[-1] else None

        try:
            eventually(all_have_data, "every dashboard query returning data", timeout=60.0, interval=2.0)
        except AssertionError:
            pytest.fail(f"dashboard queries without data: {last[-1]}", pytrace=False)

        def value(expression: str) -> float:
            result = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10).json()["data"]["result"]
            assert len(result) == 1, f"{expression}: {result}"
            return float(result[0]["value"][1])

        # The numbers behind the panels: measured from the backfill, predicted from the webhook.
        assert value(f'namespace:kepler_measured_watts:sum{{namespace="{namespace}"}}') == pytest.approx(9.0, rel=0.05)
        assert value(f'namespace_workload:kepler_measured_watts:sum{{namespace="{namespace}",workload="web"}}') \
            == pytest.approx(4.0, rel=0.05)
        predicted = value(f'namespace:energetiscope_predicted_watts:max{{namespace="{namespace}"}}')
        assert value(f'namespace_workload:energetiscope_predicted_watts:max{{namespace="{namespace}",workload="web"}}') \
            == pytest.approx(predicted)
        assert value("time() - max(energetiscope_model_created_timestamp_seconds)") \
            == pytest.approx(time.time() - MODEL_CREATED.timestamp(), abs=120)


def test_upgrade_changes_what_the_webhooks_select(installed: Installed) -> None:
    values = {**_chart_values(installed.webhook, installed.cert_dir),
              "webhook.namespaceSelector": {"matchLabels": {CHART_SELECTOR_LABEL: "on"}},
              "webhook.timeoutSeconds": 5}
    installed.helm.run("upgrade", RELEASE, str(CHART_DIR), "--namespace", RELEASE_NAMESPACE, *set_flags(values))
    history = installed.helm.run("history", RELEASE, "--namespace", RELEASE_NAMESPACE, "-o", "yaml")
    assert [entry["revision"] for entry in yaml.safe_load(history.stdout)] == [1, 2]
    mutating = installed.kube.get(
        f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}").expect_ok()
    assert mutating["webhooks"][0]["timeoutSeconds"] == 5

    selected = create_namespace(installed.kube, "helm-selected", labels={CHART_SELECTOR_LABEL: "on"})
    eventually(lambda: True if _mutated_by_us(installed, selected, "probe") else None,
               "mutation in a namespace the upgraded selector matches")
    other = create_namespace(installed.kube, "helm-unselected")
    time.sleep(2.0)  # the apiserver has the new selector by now (it mutated above); be generous
    before = installed.count("mutate")
    installed.kube.create(WORKLOADS["Pod"].collection(other), workload("Pod", "probe"), dry_run=True).expect_ok()
    assert installed.count("mutate") == before, "the upgraded namespaceSelector still sends other namespaces"


def test_uninstall_leaves_no_webhook_configuration_behind(installed: Installed) -> None:
    selected = create_namespace(installed.kube, "helm-after", labels={CHART_SELECTOR_LABEL: "on"})
    installed.helm.run("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE)
    assert installed.configurations() == []
    for kind in ("clusterroles", "clusterrolebindings"):
        reply = installed.kube.get(f"/apis/rbac.authorization.k8s.io/v1/{kind}/{CONFIGURATION}-webhook")
        assert reply.status == 404, f"{kind}/{CONFIGURATION}-webhook left behind"
    assert installed.kube.get(f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments").expect_ok()["items"] == []

    def not_called() -> bool | None:
        before = installed.count("mutate") + installed.count("validate")
        installed.kube.create(WORKLOADS["Pod"].collection(selected), workload("Pod", "probe"), dry_run=True).expect_ok()
        return True if installed.count("mutate") + installed.count("validate") == before else None

    eventually(not_called, "the apiserver no longer calling the uninstalled webhooks")
