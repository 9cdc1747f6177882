"""Write a CA bundle into webhook configurations through the Kubernetes API.

The self-managed alternative to cert-manager's cainjector: after ``energetiscope certs
create`` makes the CA, the apiserver must trust it when it calls the webhook.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography import x509

KINDS = {
    "MutatingWebhookConfiguration": ("read_mutating_webhook_configuration", "replace_mutating_webhook_configuration"),
    "ValidatingWebhookConfiguration": ("read_validating_webhook_configuration", "replace_validating_webhook_configuration"),
}


class InjectError(RuntimeError):
    """The bundle could not be written; the message names the object and why."""


@dataclass(frozen=True)
class Injected:
    kind: str
    name: str
    webhooks: int
    changed: bool


def ca_bundle(ca_pem: bytes) -> str:
    """Base64 of the PEM, after checking it holds at least one certificate."""
    try:
        certificates = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise InjectError(f"the CA file does not hold a PEM certificate: {exc}") from None
    if not certificates:
        raise InjectError("the CA file holds no certificate")
    return base64.b64encode(ca_pem).decode()


def inject(api_client: Any, ca_pem: bytes, kind: str, name: str, attempts: int = 5) -> Injected:
    """Set ``clientConfig.caBundle`` of every webhook in the named configuration.

    Read-modify-replace with the object's resourceVersion, retried on conflict, so a
    concurrent edit of the configuration is never overwritten.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    bundle = ca_bundle(ca_pem)
    read_name, replace_name = KINDS[kind]
    api = client.AdmissionregistrationV1Api(api_client)
    for _ in range(attempts):
        try:
            configuration = getattr(api, read_name)(name)
        except ApiException as exc:
            raise InjectError(f"{kind} {name}: cannot read it: {exc.status} {exc.reason}") from None
        webhooks = configuration.webhooks or []
        if not webhooks:
            raise InjectError(f"{kind} {name}: has no webhooks to inject into")
        changed = any(w.client_config.ca_bundle != bundle for w in webhooks)
        if not changed:
            return Injected(kind, name, len(webhooks), changed=False)
        for webhook in webhooks:
            webhook.client_config.ca_bundle = bundle
        try:
            getattr(api, replace_name)(name, configuration)
            return Injected(kind, name, len(webhooks), changed=True)
        except ApiException as exc:
            if exc.status != 409:
                raise InjectError(f"{kind} {name}: cannot update it: {exc.status} {exc.reason}") from None
    raise InjectError(f"{kind} {name}: still conflicting after {attempts} attempts")
