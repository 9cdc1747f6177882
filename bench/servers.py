"""Servers under test as processes: the webhook, the echo reference, the what-if webhook.

All are started the way `tests.webhook_process.WebhookProcess` starts the webhook (a free
loopback port, the certificate directory, ready when /readyz answers 200) and stopped with
SIGTERM; only the module that serves differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.webhook_process import WebhookProcess

WEBHOOK = ("webhook.cli", "serve")
ECHO = ("bench.echo_server",)


def what_if(*patches: str) -> tuple[str, ...]:
    return ("bench.what_if_server", *[arg for patch in patches for arg in ("--patch", patch)], "serve")


class ServerProcess(WebhookProcess):
    """`python -m MODULE... --host H --port P --cert-dir D EXTRA...`, as WebhookProcess runs the webhook."""

    def __init__(self, module: tuple[str, ...], cert_dir: Path, log_path: Path, *extra_args: str,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(cert_dir, log_path, *extra_args, env=env)
        self.module = module

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        args = [sys.executable, "-m", *self.module, "--host", self.host, "--port", str(self.port),
                "--cert-dir", str(self.cert_dir), *self.extra_args]
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{' '.join(self.module)} exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{' '.join(self.module)} not ready within {timeout} s:\n{self.log()}")
