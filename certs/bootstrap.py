"""Self-managed certificates in the cluster: a Secret for the webhook, its CA in the configurations.

Run by a Job at install and a CronJob after: it keeps what is still good (the CA always,
the serving certificate until it nears expiry or its names change), so reruns are cheap
and the webhook, which reloads rotated files, never restarts.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .authority import KeyPair, create_ca, issue_certificate
from .inject import Injected, inject


@dataclass(frozen=True)
class BootstrapResult:
    secret_action: str  # "created", "renewed" or "kept"
    reason: str
    not_after: dt.datetime
    injected: list[Injected]


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names the apiserver may use for a Service: short, namespaced and cluster-qualified."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def _pair(cert_pem: bytes, key_pem: bytes) -> KeyPair:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an ECDSA key")
    return KeyPair(x509.load_pem_x509_certificate(cert_pem), key)


def _names(certificate: x509.Certificate) -> set[str]:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(sans.get_values_for_type(x509.DNSName))


def _decode(data: dict[str, str] | None, key: str) -> bytes | None:
    value = (data or {}).get(key)
    return base64.b64decode(value) if value else None


def bootstrap(
    api_client: Any,
    namespace: str,
    secret_name: str,
    dns_names: list[str],
    mutating: list[str],
    validating: list[str],
    valid_days: int = 365,
    renew_before_days: int = 30,
    now: dt.datetime | None = None,
) -> BootstrapResult:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        existing = core.read_namespaced_secret(secret_name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        existing = None

    data = existing.data if existing is not None else None
    ca: KeyPair | None = None
    leaf: KeyPair | None = None
    ca_cert, ca_key = _decode(data, "ca.crt"), _decode(data, "ca.key")
    if ca_cert and ca_key:
        candidate = _pair(ca_cert, ca_key)
        if candidate.certificate.not_valid_after_utc > now + dt.timedelta(days=renew_before_days):
            ca = candidate
    tls_cert, tls_key = _decode(data, "tls.crt"), _decode(data, "tls.key")
    if ca is not None and tls_cert and tls_key:
        leaf = _pair(tls_cert, tls_key)

    reason = ""
    if existing is None:
        reason = "no Secret yet"
    elif ca is None:
        reason = "no CA in the Secret, or it expires soon"
    elif leaf is None:
        reason = "no serving certificate in the Secret"
    elif leaf.certificate.not_valid_after_utc <= now + dt.timedelta(days=renew_before_days):
        reason = f"serving certificate expires within {renew_before_days} days"
    elif not set(dns_names) <= _names(leaf.certificate):
        reason = "serving certificate lacks some of the service's DNS names"
    elif leaf.certificate.issuer != ca.certificate.subject:
        reason = "serving certificate was not issued by the Secret's CA"

    if reason:
        ca = ca or create_ca()
        leaf = issue_certificate(ca, dns_names[0], dns_names=dns_names, valid_days=valid_days)
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name=secret_name, namespace=namespace,
                                         labels={"app.kubernetes.io/name": "energetiscope"}),
            type="kubernetes.io/tls",
            data={
                "tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                "tls.key": base64.b64encode(leaf.key_pem).decode(),
                "ca.crt": base64.b64encode(ca.cert_pem).decode(),
                "ca.key": base64.b64encode(ca.key_pem).decode(),
            },
        )
        if existing is None:
            core.create_namespaced_secret(namespace, secret)
            action = "created"
        else:
            secret.metadata.resource_version = existing.metadata.resource_version
            core.replace_namespaced_secret(secret_name, namespace, secret)
            action = "renewed"
    else:
        action, reason = "kept", "valid, issued by the CA, with every DNS name"

    assert ca is not None and leaf is not None
    injected = [inject(api_client, ca.cert_pem, "MutatingWebhookConfiguration", n) for n in mutating]
    injected += [inject(api_client, ca.cert_pem, "ValidatingWebhookConfiguration", n) for n in validating]
    return BootstrapResult(action, reason, leaf.certificate.not_valid_after_utc, injected)
