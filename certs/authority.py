"""A small certificate authority: a self-signed CA and the leaf certificates it issues.

ECDSA P-256 keys: quick to generate (tests make many) and accepted by kube-apiserver,
Go's TLS stack and OpenSSL alike.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.files import write_bytes_atomically

# Backdating tolerates clock skew between the machine that issues and the one that verifies.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def create_ca(common_name: str = "energetiscope-ca", valid_days: int = 3650) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate, key)


def issue_certificate(
    ca: KeyPair,
    common_name: str,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    organizations: Iterable[str] = (),
    server: bool = True,
    client: bool = False,
    valid_days: int = 365,
) -> KeyPair:
    """Issue a leaf certificate signed by ``ca``.

    Raises ValueError naming the bad address when an IP SAN does not parse.
    """
    dns_names = list(dns_names)
    ips = []
    for address in ip_addresses:
        try:
            ips.append(ipaddress.ip_address(address))
        except ValueError:
            raise ValueError(f"--ip {address!r} is not an IPv4 or IPv6 address") from None
    if server and not dns_names and not ips:
        raise ValueError("a serving certificate needs at least one --dns name or --ip address")
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if dns_names or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ip) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    certificate = builder.sign(ca.private_key, hashes.SHA256())
    return KeyPair(certificate, key)


def write_pair(pair: KeyPair, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.crt`` (0644) and ``stem.key`` (0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    write_bytes_atomically(key_path, pair.key_pem, mode=0o600)
    write_bytes_atomically(cert_path, pair.cert_pem, mode=0o644)
    return cert_path, key_path


def load_pair(directory: Path, stem: str) -> KeyPair:
    cert = x509.load_pem_x509_certificate((directory / f"{stem}.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / (stem + '.key')}: expected an ECDSA private key")
    return KeyPair(cert, key)


def create_serving_bundle(
    out_dir: Path,
    dns_names: Iterable[str],
    ip_addresses: Iterable[str] = (),
    *,
    common_name: str | None = None,
    valid_days: int = 365,
) -> dict[str, Path]:
    """Write ``ca.crt``/``ca.key`` (reusing an existing CA in ``out_dir``) and ``tls.crt``/``tls.key``.

    The ``tls.*`` names match what a kubernetes.io/tls Secret mounts, so the same
    directory layout works in development and in the cluster.
    """
    dns_names = list(dns_names)
    ip_addresses = list(ip_addresses)
    if (out_dir / "ca.crt").exists() and (out_dir / "ca.key").exists():
        ca = load_pair(out_dir, "ca")
    else:
        ca = create_ca()
        write_pair(ca, out_dir, "ca")
    cn = common_name or (dns_names[0] if dns_names else ip_addresses[0] if ip_addresses else "energetiscope")
    leaf = issue_certificate(ca, cn, dns_names=dns_names, ip_addresses=ip_addresses, valid_days=valid_days)
    cert_path, key_path = write_pair(leaf, out_dir, "tls")
    return {"ca": out_dir / "ca.crt", "cert": cert_path, "key": key_path}
