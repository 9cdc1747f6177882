"""Serving certificates that can be rotated on disk without a restart.

cert-manager and Secret updates replace ``tls.crt``/``tls.key`` in place. A complete new
SSLContext is built off to the side and swapped in for new handshakes through the SNI
callback, which OpenSSL calls on every ClientHello (with or without SNI). So no connection
ever sees a certificate from one rotation with the key of another, and connections already
open keep the context they started with.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509

from webhook.files import WatchedFile

log = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all modern already.
MODERN_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


class ServingCertificates:
    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._cert_watch = WatchedFile(cert_file)
        self._key_watch = WatchedFile(key_file)
        self.error: str | None = None
        self.not_after_timestamp = 0.0
        self._current = self._build()

    def _build(self) -> ssl.SSLContext:
        self._cert_watch.mark_seen()
        self._key_watch.mark_seen()
        context = server_context(self.cert_file, self.key_file)
        certificate = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        self.not_after_timestamp = certificate.not_valid_after_utc.timestamp()
        return context

    def listening_context(self) -> ssl.SSLContext:
        """The context the server listens with; each handshake is handed the current one."""
        outer = server_context(self.cert_file, self.key_file)
        outer.sni_callback = self._select
        return outer

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        ssl_object.context = self._current

    def artifact_changed(self) -> bool:
        return self._cert_watch.changed() or self._key_watch.changed()

    def load(self) -> bool:
        try:
            self._current = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Mid-rotation (new certificate, old key) or a bad file: keep serving the last good
            # pair; the next change of either file triggers another attempt.
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("serving certificate not reloaded, keeping the current one: %s", self.error)
            return False
        self.error = None
        log.info("serving certificate loaded from %s", self.cert_file)
        return True
