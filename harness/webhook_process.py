"""The webhook as a real process: `energetiscope certs create`, then `energetiscope serve` over TLS."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from harness.ports import free_loopback_port

CLI = [sys.executable, "-m", "webhook.cli"]
SERVE = ("webhook.cli", "serve")


def create_certs(out_dir: Path, *dns: str, ips: tuple[str, ...] = ("127.0.0.1",)) -> Path:
    args = CLI + ["certs", "create", "--out", str(out_dir)]
    for name in dns or ("localhost",):
        args += ["--dns", name]
    for ip in ips:
        args += ["--ip", ip]
    subprocess.run(args, check=True, capture_output=True, text=True)
    return out_dir


class WebhookProcess:
    """Start with ``start()``; talk to it with ``client()``; always ``stop()`` (or use ``with``).

    ``module`` is what ``python -m`` runs: the webhook's ``serve`` by default; the benchmarks run
    their reference servers the same way (same flags, same readiness check).
    """

    def __init__(self, cert_dir: Path, log_path: Path, *extra_args: str, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, module: tuple[str, ...] = SERVE,
                 start_timeout: float = 30.0) -> None:
        self.module = module
        self.start_timeout = start_timeout
        self.cert_dir = cert_dir
        self.log_path = log_path
        self.port = free_loopback_port()
        self.host = host
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        # By name, so that hostname verification against the certificate's SAN is exercised.
        return f"https://localhost:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))

    def client(self, timeout: float = 10.0, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=timeout, **kwargs)

    def start(self, timeout: float | None = None) -> "WebhookProcess":
        timeout = self.start_timeout if timeout is None else timeout
        args = [sys.executable, "-m", *self.module, "--host", self.host, "--port", str(self.port),
                "--cert-dir", str(self.cert_dir)]
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            args + self.extra_args, stdout=self.log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not ready within {timeout} s:\n{self.log()}")

    @property
    def name(self) -> str:
        return " ".join(self.module)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode

    def __enter__(self) -> "WebhookProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
