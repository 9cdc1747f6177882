"""``energetiscope certs``: the webhook's TLS certificates, made locally or kept in the cluster.

``create`` writes a CA and a serving certificate to a directory; ``inject`` writes the CA bundle
into the webhook configurations; ``bootstrap`` keeps the serving certificate in a Secret and
injects its CA (self-managed certificates). The Kubernetes client and ``cryptography`` load in
the command that needs them.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def certs() -> None:
    """Certificates for the webhook's TLS."""


@certs.command("create")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--dns", "dns_names", multiple=True, help="DNS name SAN (repeatable), e.g. svc.ns.svc.")
@click.option("--ip", "ip_addresses", multiple=True, help="IP address SAN (repeatable).")
@click.option("--days", type=click.IntRange(min=1), default=365, help="Validity of the serving certificate.")
def certs_create(out_dir: Path, dns_names: tuple[str, ...], ip_addresses: tuple[str, ...], days: int) -> None:
    """Create a CA (or reuse the one in OUT) and a serving certificate with the given SANs.

    Writes ca.crt, ca.key, tls.crt, tls.key: the layout of a kubernetes.io/tls Secret plus its CA.
    """
    from certs.authority import create_serving_bundle

    try:
        paths = create_serving_bundle(out_dir, dns_names, ip_addresses, valid_days=days)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    for role, path in paths.items():
        click.echo(f"{role}: {path}")


@certs.command("inject")
@click.option("--ca-file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="PEM CA that signed the webhook's serving certificate (ca.crt from 'certs create').")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              envvar="KUBECONFIG", help="Without it: in-cluster credentials.")
@click.option("--mutating", "mutating_names", multiple=True, default=["energetiscope"],
              help="MutatingWebhookConfiguration name (repeatable).")
@click.option("--validating", "validating_names", multiple=True, default=["energetiscope"],
              help="ValidatingWebhookConfiguration name (repeatable).")
def certs_inject(ca_file: Path, kubeconfig: Path | None, mutating_names: tuple[str, ...],
                 validating_names: tuple[str, ...]) -> None:
    """Write the CA bundle into the webhook configurations through the Kubernetes API."""
    from certs.inject import InjectError, inject

    api_client = _kube_client(kubeconfig)
    ca_pem = ca_file.read_bytes()
    targets = [("MutatingWebhookConfiguration", n) for n in mutating_names]
    targets += [("ValidatingWebhookConfiguration", n) for n in validating_names]
    try:
        for kind, name in targets:
            result = inject(api_client, ca_pem, kind, name)
            state = "updated" if result.changed else "already current"
            click.echo(f"{kind}/{name}: caBundle {state} ({result.webhooks} webhooks)")
    except InjectError as exc:
        raise click.ClickException(str(exc)) from None


def _kube_client(kubeconfig: Path | None):  # type: ignore[no-untyped-def]
    """The kubeconfig's client when one is given, else the pod's service account."""
    from webhook.kube import api_client

    return api_client(kubeconfig) if kubeconfig is not None else api_client(in_cluster=True)


@certs.command("bootstrap")
@click.option("--namespace", required=True, envvar="ENERGETISCOPE_NAMESPACE", help="Namespace of the Service and Secret.")
@click.option("--service", default="energetiscope-webhook", help="The webhook's Service name (its DNS names go in the SANs).")
@click.option("--secret", "secret_name", default="energetiscope-webhook-tls", help="kubernetes.io/tls Secret to keep.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Without it: in-cluster credentials.")
@click.option("--mutating", "mutating_names", multiple=True, default=["energetiscope"])
@click.option("--validating", "validating_names", multiple=True, default=["energetiscope"])
@click.option("--days", type=click.IntRange(min=2), default=365, help="Validity of a new serving certificate.")
@click.option("--renew-before-days", type=click.IntRange(min=1), default=30)
def certs_bootstrap(namespace: str, service: str, secret_name: str, kubeconfig: Path | None,
                    mutating_names: tuple[str, ...], validating_names: tuple[str, ...], days: int,
                    renew_before_days: int) -> None:
    """Create or renew the serving certificate in a Secret and inject its CA (self-managed certificates)."""
    from kubernetes.client.exceptions import ApiException

    from certs.bootstrap import bootstrap, service_dns_names
    from certs.inject import InjectError

    if renew_before_days >= days:
        raise click.BadParameter("--renew-before-days must be shorter than --days")
    try:
        result = bootstrap(
            _kube_client(kubeconfig), namespace, secret_name, service_dns_names(service, namespace),
            list(mutating_names), list(validating_names), valid_days=days, renew_before_days=renew_before_days,
        )
    except (InjectError, ApiException) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Secret {namespace}/{secret_name}: {result.secret_action} ({result.reason}); "
               f"valid until {result.not_after:%Y-%m-%d}")
    for item in result.injected:
        click.echo(f"{item.kind}/{item.name}: caBundle {'updated' if item.changed else 'already current'}")
