"""`energetiscope certs bootstrap` against the real apiserver: create, keep, renew, inject."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client

from certs.bootstrap import bootstrap, service_dns_names

pytestmark = pytest.mark.e2e

NAMESPACE = "es-bootstrap"
CONFIGURATION = "es-bootstrap-test"
# A rule no test object matches, so these configurations never sit in another test's way.
RULES = [{"apiGroups": ["example.com"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["widgets"]}]


def _configurations(api_client: client.ApiClient) -> None:
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
         "metadata": {"name": CONFIGURATION}, "webhooks": [hook]})
    api.create_validating_webhook_configuration(
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": CONFIGURATION}, "webhooks": [{**hook, "clientConfig": {"url": "https://127.0.0.1:9/validate"}}]})


def _secret(api_client: client.ApiClient) -> dict[str, bytes]:
    secret = client.CoreV1Api(api_client).read_namespaced_secret("energetiscope-webhook-tls", NAMESPACE)
    assert secret.type == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in secret.data.items()}


def _ca_bundles(api_client: client.ApiClient) -> set[bytes]:
    api = client.AdmissionregistrationV1Api(api_client)
    hooks = api.read_mutating_webhook_configuration(CONFIGURATION).webhooks
    hooks += api.read_validating_webhook_configuration(CONFIGURATION).webhooks
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
