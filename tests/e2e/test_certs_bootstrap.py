"""`energetiscope certs bootstrap` against the real apiserver: create, keep, renew, inject."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client, utils

from certs.bootstrap import bootstrap, service_dns_names

pytestmark = pytest.mark.e2e

NAMESPACE = "es-bootstrap"
CONFIGURATION = "es-bootstrap-test"
# A rule no test object matches, so these configurations never sit in another test's way.
RULES = [{"apiGroups": ["example.com"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["widgets"]}]


def _configurations(api_client: client.ApiClient, name: str = CONFIGURATION) -> None:
    api = client.AdmissionregistrationV1Api(api_client)
    hook = {
        "name": "bootstrap.energetiscope.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "clientConfig": {"url": "https://127.0.0.1:9/mutate"},
        "rules": RULES,
    }
    api.create_mutating_webhook_configuration(
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": name}, "webhooks": [hook]})
    api.create_validating_webhook_configuration(
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": name}, "webhooks": [{**hook, "clientConfig": {"url": "https://127.0.0.1:9/validate"}}]})


def _secret(api_client: client.ApiClient) -> dict[str, bytes]:
    secret = client.CoreV1Api(api_client).read_namespaced_secret("energetiscope-webhook-tls", NAMESPACE)
    assert secret.type == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in secret.data.items()}


def _ca_bundles(api_client: client.ApiClient, name: str = CONFIGURATION) -> set[bytes]:
    api = client.AdmissionregistrationV1Api(api_client)
    hooks = api.read_mutating_webhook_configuration(name).webhooks
    hooks += api.read_validating_webhook_configuration(name).webhooks
    return {base64.b64decode(h.client_config.ca_bundle) for h in hooks}


def test_bootstrap_creates_keeps_and_renews(control_plane, kube_api: client.ApiClient) -> None:  # type: ignore[no-untyped-def]
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": NAMESPACE}})
    _configurations(kube_api)
    command = [sys.executable, "-m", "webhook.cli", "certs", "bootstrap", "--namespace", NAMESPACE,
               "--kubeconfig", str(control_plane.kubeconfig_path), "--mutating", CONFIGURATION,
               "--validating", CONFIGURATION]

    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"Secret {NAMESPACE}/energetiscope-webhook-tls: created (no Secret yet)" in first.stdout
    created = _secret(kube_api)
    leaf = x509.load_pem_x509_certificate(created["tls.crt"])
    sans = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    assert sans == set(service_dns_names("energetiscope-webhook", NAMESPACE))
    ca = x509.load_pem_x509_certificate(created["ca.crt"])
    leaf.verify_directly_issued_by(ca)
    assert _ca_bundles(kube_api) == {created["ca.crt"]}

    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert ": kept (" in second.stdout and "caBundle already current" in second.stdout
    assert _secret(kube_api) == created

    near_expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=340)
    result = bootstrap(kube_api, NAMESPACE, "energetiscope-webhook-tls",
                       service_dns_names("energetiscope-webhook", NAMESPACE), [CONFIGURATION], [CONFIGURATION],
                       now=near_expiry)
    assert result.secret_action == "renewed" and "expires within 30 days" in result.reason
    renewed = _secret(kube_api)
    assert renewed["ca.crt"] == created["ca.crt"] and renewed["tls.crt"] != created["tls.crt"]
    x509.load_pem_x509_certificate(renewed["tls.crt"]).verify_directly_issued_by(ca)
    assert not any(item.changed for item in result.injected)  # same CA: the bundle stays


SELF_MANAGED_RBAC = Path(__file__).resolve().parents[2] / "deploy" / "overlays" / "self-managed" / "rbac.yaml"
OWN_NAMESPACE = "es-self-managed"
OWN_CONFIGURATION = "es-self-managed-test"
OWN_CLUSTER_ROLE = "es-self-managed-certs"


def _overlay_rbac_for_this_test() -> list[dict[str, Any]]:
    """The overlay's RBAC objects, rules untouched; only the namespace, the cluster-scoped names
    and the configurations' name are this test's own (deploy/'s names belong to the server-side
    dry runs of test_deploy_manifests.py)."""
    objects = [doc for doc in yaml.safe_load_all(SELF_MANAGED_RBAC.read_text()) if doc]
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            obj["metadata"]["namespace"] = OWN_NAMESPACE
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            obj["metadata"]["name"] = OWN_CLUSTER_ROLE
        if obj["kind"] == "ClusterRoleBinding":
            obj["roleRef"]["name"] = OWN_CLUSTER_ROLE
        for subject in obj.get("subjects", []):
            subject["namespace"] = OWN_NAMESPACE
        for rule in obj.get("rules", []):
            if rule.get("resourceNames") == ["energetiscope"]:
                rule["resourceNames"] = [OWN_CONFIGURATION]
    return objects


def _kubeconfig_with_token(control_plane, token: str, path: Path) -> Path:  # type: ignore[no-untyped-def]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "e2e", "cluster": {"server": control_plane.url, "certificate-authority": str(control_plane.ca_path)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "sa"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_bootstrap_needs_no_more_than_the_self_managed_overlays_rbac(  # type: ignore[no-untyped-def]
    control_plane, kube_api: client.ApiClient, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": OWN_NAMESPACE}})
    _configurations(kube_api, OWN_CONFIGURATION)
    utils.create_from_yaml(kube_api, yaml_objects=_overlay_rbac_for_this_test(), namespace=OWN_NAMESPACE)
    core.create_namespaced_secret(OWN_NAMESPACE, {"metadata": {"name": "someone-elses"}, "stringData": {"k": "v"}})
    token = core.create_namespaced_service_account_token(
        "energetiscope-certs", OWN_NAMESPACE,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    kubeconfig = _kubeconfig_with_token(control_plane, token, tmp_path / "sa.kubeconfig")

    run = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "certs", "bootstrap", "--namespace", OWN_NAMESPACE,
         "--kubeconfig", str(kubeconfig), "--mutating", OWN_CONFIGURATION, "--validating", OWN_CONFIGURATION],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "created (no Secret yet)" in run.stdout
    secret = core.read_namespaced_secret("energetiscope-webhook-tls", OWN_NAMESPACE)
    assert _ca_bundles(kube_api, OWN_CONFIGURATION) == {base64.b64decode(secret.data["ca.crt"])}
    # ...and nothing more: other Secrets and other configurations stay out of its reach.
    with control_plane.bearer_token_client(token) as robot:
        for attempt in (
            lambda: client.CoreV1Api(robot).read_namespaced_secret("someone-elses", OWN_NAMESPACE),
            lambda: client.CoreV1Api(robot).list_namespaced_secret(OWN_NAMESPACE),
            lambda: client.AdmissionregistrationV1Api(robot).read_mutating_webhook_configuration(CONFIGURATION),
        ):
            with pytest.raises(client.ApiException) as refused:
                attempt()
            assert refused.value.status == 403
